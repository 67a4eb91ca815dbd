"""``postpulse api`` as a real process on a Milvus Lite file: bearer tokens, size limits,
JSON errors, search results against brute force, the committed OpenAPI description, and
a schemathesis fuzz run that must find no server error."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders.serving import ServedBundle
from exporters.milvus import MilvusEmbeddingSink, connect
from streams.api import ROUTES
from streams.broker import LocalBroker, free_port
from streams.openapi import openapi_spec
from streams.outputs import embedding_row
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.samples import repost_image, source_image_jpeg, valid_posts
from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"
MAX_BODY = 1024 * 1024


@dataclass
class RunningApi:
    url: str
    embeddings: dict[str, np.ndarray]
    process: subprocess.Popen[bytes]
    log: Path


def call(
    api: RunningApi,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = TOKEN,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    request = urllib.request.Request(api.url + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, served_bundle: ServedBundle, broker: LocalBroker
) -> Iterator[RunningApi]:
    folder = tmp_path_factory.mktemp("api")
    settings = Settings(
        bundle_path=served_bundle.path, milvus_uri=str(folder / "milvus.db"), fetch_enabled=False
    )
    samples = valid_posts(40, seed=31)
    outcome = PostPipeline(settings, served_bundle).process(
        [Envelope(value=s.value, partition=0, offset=i) for i, s in enumerate(samples)]
    )
    sink = MilvusEmbeddingSink(
        connect(settings.milvus_uri), "posts", served_bundle.dim, uri=settings.milvus_uri
    )
    sink.setup()
    for analysed in outcome.analysed:
        sink.add(embedding_row(analysed))
    sink.flush()
    sink.close()
    embeddings = {a.analysis.post_id: a.embedding for a in outcome.analysed}

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTPULSE_")}
    env.update(
        POSTPULSE_MILVUS_URI=settings.milvus_uri,
        POSTPULSE_BUNDLE_PATH=str(served_bundle.path),
        POSTPULSE_API_TOKEN=TOKEN,
        POSTPULSE_API_PORT=str(port),
        POSTPULSE_API_MAX_BODY_BYTES=str(MAX_BODY),
        POSTPULSE_FETCH_ENABLED="false",
        POSTPULSE_BROKER_URL=broker.url,  # no trends worker has run: /v1/trends is 404
        POSTPULSE_APP_ID="postpulse-api-test",
    )
    log = folder / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "api"], env=env, stdout=out, stderr=out
        )
    running = RunningApi(f"http://127.0.0.1:{port}", embeddings, process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if call(running, "GET", "/healthz", token=None)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.3)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def brute_force(api: RunningApi, query: np.ndarray, top_k: int, exclude: str = "") -> list[str]:
    q = query / np.linalg.norm(query)
    scores = {
        pid: float(v @ q / np.linalg.norm(v)) for pid, v in api.embeddings.items() if pid != exclude
    }
    return sorted(scores, key=lambda p: -scores[p])[:top_k]


def test_health_and_readiness_need_no_token(api: RunningApi) -> None:
    assert call(api, "GET", "/healthz", token=None) == (200, {"status": "ok"})
    assert call(api, "GET", "/readyz", token=None) == (200, {"status": "ready", "posts": 40})


def test_a_missing_or_wrong_token_is_401(api: RunningApi) -> None:
    first = next(iter(api.embeddings))
    for token in (None, "", "wrong", TOKEN + "x", TOKEN[:-1]):
        status, body = call(api, "GET", f"/v1/posts/{first}", token=token)
        assert status == 401, token
        assert body["error"]["message"] == "missing or wrong bearer token"
    status, _ = call(
        api, "GET", f"/v1/posts/{first}", token=None, headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert status == 401
    status, post = call(api, "GET", f"/v1/posts/{first}")
    assert status == 200 and post["post_id"] == first and "embedding" not in post


def test_an_oversized_upload_is_413(api: RunningApi) -> None:
    big = b"\xff" * (MAX_BODY + 1)
    status, body = call(api, "POST", "/v1/search/upload?kind=image", big, content_type="image/jpeg")
    assert status == 413 and "limit" in body["error"]["message"]
    big_json = json.dumps({"queries": [{"text": "x" * (MAX_BODY + 10)}]}).encode()
    assert call(api, "POST", "/v1/search", big_json)[0] == 413


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "invalid"),
        (b'{"queries": []}', "queries"),
        (b'{"queries": [{"text": "x"}], "top_k": 0}', "top_k"),
        (b'{"queries": [{"text": "x"}], "surprise": 1}', "surprise"),
        (b'{"queries": [{"text": "x", "post_id": "p"}]}', "not both"),
        (b'{"queries": [{"media": [{"kind": "image", "data_b64": "@@@"}]}]}', "base64"),
        (b'{"queries": [{"text": "x"}], "filters": {"sentiment": ["angry"]}}', "sentiment"),
    ],
)
def test_a_malformed_request_is_422_with_the_reason(
    api: RunningApi, body: bytes, needle: str
) -> None:
    status, answer = call(api, "POST", "/v1/search", body)
    assert status == 422, answer
    assert needle in json.dumps(answer["error"]), answer


def test_bad_query_parameters_and_unknown_posts(api: RunningApi) -> None:
    first = next(iter(api.embeddings))
    assert call(api, "GET", f"/v1/posts/{first}/similar?top_k=abc")[0] == 422
    assert call(api, "GET", f"/v1/posts/{first}/similar?sentiment=meh")[0] == 422
    assert call(api, "GET", "/v1/events?since=10")[0] == 422  # until is required
    status, body = call(api, "GET", "/v1/posts/no-such-post")
    assert status == 404 and "not stored" in body["error"]["message"]
    status, body = call(api, "GET", "/v1/trends")
    assert status == 404 and "trend" in body["error"]["message"], body
    assert call(api, "GET", "/v1/nothing-here")[0] == 404


def test_search_matches_brute_force_and_batches_queries(api: RunningApi) -> None:
    ids = list(api.embeddings)
    query = {
        "queries": [{"post_id": ids[3]}, {"post_id": ids[7]}, {"text": "football final"}],
        "top_k": 5,
    }
    status, body = call(api, "POST", "/v1/search", json.dumps(query).encode())
    assert status == 200, body
    got = [[h["post_id"] for h in r["hits"]] for r in body["results"]]
    assert got[0] == brute_force(api, api.embeddings[ids[3]], 5, exclude=ids[3])
    assert got[1] == brute_force(api, api.embeddings[ids[7]], 5, exclude=ids[7])
    assert len(got[2]) == 5
    # GET similar with a page and a filter agrees with POST search
    status, page = call(api, "GET", f"/v1/posts/{ids[3]}/similar?top_k=3&offset=2")
    assert [h["post_id"] for h in page["hits"]] == brute_force(
        api, api.embeddings[ids[3]], 5, exclude=ids[3]
    )[2:5]
    status, page = call(api, "GET", f"/v1/posts/{ids[3]}/similar?platform=reddit&platform=x")
    assert status == 200 and {h["platform"] for h in page["hits"]} <= {"reddit", "x"}


def test_upload_search_and_duplicates(api: RunningApi) -> None:
    picture = repost_image(source_image_jpeg(5), seed=1)
    status, body = call(
        api, "POST", "/v1/search/upload?kind=image&top_k=3", picture, content_type="image/jpeg"
    )
    assert status == 200 and len(body["hits"]) == 3, body
    status, body = call(
        api, "POST", "/v1/search/upload?kind=image", b"not a picture", content_type="image/jpeg"
    )
    assert status == 422 and "query refused" in body["error"]["message"]
    media = {"kind": "image", "data_b64": base64.b64encode(picture).decode()}
    status, body = call(
        api,
        "POST",
        "/v1/search",
        json.dumps({"queries": [{"media": [media], "text": "a photo"}]}).encode(),
    )
    assert status == 200 and len(body["results"][0]["hits"]) == 10
    first = next(iter(api.embeddings))
    status, dups = call(api, "GET", f"/v1/posts/{first}/duplicates?threshold=0.5")
    assert status == 200 and all(h["score"] >= 0.5 for h in dups["hits"])


def test_openapi_is_committed_and_describes_every_route(api: RunningApi) -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == openapi_spec(), "docs/openapi.json is stale: postpulse api --openapi"
    status, served = call(api, "GET", "/openapi.json", token=None)
    assert status == 200 and served == committed
    routes = {(path, method.lower()) for method, path, _ in ROUTES}
    described = {(path, m) for path, ops in committed["paths"].items() for m in ops}
    assert routes == described


@pytest.mark.skipif(
    shutil.which("schemathesis") is None
    and not (Path(sys.executable).parent / "schemathesis").exists(),
    reason="schemathesis not installed",
)
def test_schemathesis_finds_no_server_error(api: RunningApi, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [
            str(exe),
            "run",
            f"{api.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
