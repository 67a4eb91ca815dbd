"""A real Prometheus (Debian's) scrapes a real worker: per-topic counts through PromQL,
postpulse's rules loaded, and every Grafana dashboard query parses and returns data.
The rules themselves pass ``promtool check rules`` and ``promtool test rules``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.broker import LocalBroker, free_port, terminate, wait_for_port
from streams.samples import broken_posts, trend_stream
from streams.settings import Settings
from tests.workers import produce_all, reader, start_worker

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# what Grafana would put in place of its variables
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__range": "1h",
    "$window": "1h",
    "$topic": ".*",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (apt-get install prometheus)")
    return path


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_the_compose_prometheus_config_passes_promtool() -> None:
    config = RULES.parent / "prometheus.yml"
    check = subprocess.run(
        [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr and "12 rules found" in check.stdout


def test_dashboards_use_the_provisioned_datasource() -> None:
    provisioned = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    uid = re.search(r"uid:\s*(\S+)", provisioned)
    assert uid is not None
    assert len(DASHBOARDS) == 3
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"].startswith("postpulse-")
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid.group(1), (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL with Grafana's variables filled in)."""
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"unknown variable in {path.name}: {expr}"
                out.append((path.name, panel["title"], expr))
    return out


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait(self, expr: str, check: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(1)
        raise AssertionError(f"{expr} never satisfied the check; last result {result}")


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*target_ports: int) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "postpulse",
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{p}" for p in target_ports]}
                            ],
                        }
                    ],
                }
            )
        )
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_for_port("127.0.0.1", port, 30)
        return Prometheus(port)

    yield start
    for proc in procs:
        terminate(proc, 10)


def test_prometheus_scrapes_topic_counts_and_every_dashboard_query_returns_data(
    broker: LocalBroker,
    settings_for,  # type: ignore[no-untyped-def]
    prometheus_for,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    settings: Settings = settings_for(broker, prefix="prom", trend_refresh_s=1)
    stream = trend_stream(days=1, every_min=12, burst_posts=30, emerging_posts=0, seed=5)
    broken = broken_posts(6, seed=3)
    worker = start_worker(settings, tmp_path / "worker.log", trend_refresh_s="1").start()
    trends = start_worker(
        settings, tmp_path / "trends.log", worker_role="trends", trend_refresh_s="1"
    ).start()
    outputs = reader(broker, settings)
    try:
        worker.wait_ready()
        trends.wait_ready()
        prometheus = prometheus_for(worker.web_port, trends.web_port)
        produce_all(broker, settings, stream.posts + broken)
        assert outputs.wait_for(
            lambda o: o.accounted >= len(stream.posts) + len(broken), timeout_s=240
        )
        analyses = outputs.outputs.analyses
        expected = Counter(f"category:{a.category}" for a in analyses.values() if a.category)
        assert len(expected) >= 3
        # every analysed post's category, counted once, as Prometheus sees it
        result = prometheus.wait(
            'sum by (topic) (postpulse_topic_posts_total{kind="category"})',
            lambda r: {s["metric"]["topic"]: int(float(s["value"][1])) for s in r} == expected,
        )
        print(
            "per-category counts in Prometheus:",
            {s["metric"]["topic"]: s["value"][1] for s in result},
        )
        prometheus.wait('postpulse_trend_rank{window="1h"}', lambda r: len(r) > 0)
        prometheus.wait("postpulse:topic_sentiment_share:rate1h", lambda r: len(r) > 0)
        prometheus.wait("postpulse:dead_letter_ratio:rate5m", lambda r: len(r) > 0)
        for dashboard, panel, expr in dashboard_queries():
            series = prometheus.wait(expr, lambda r: len(r) > 0, timeout_s=30)
            assert series, f"{dashboard} / {panel}: no data for {expr}"
        topics = prometheus.get(
            "/api/v1/label/topic/values", **{"match[]": "postpulse_topic_posts_total"}
        )
        assert set(expected) <= set(topics["data"])
        rules = prometheus.get("/api/v1/rules")
        assert {g["name"] for g in rules["data"]["groups"]} == {
            "postpulse.recording",
            "postpulse.alerts",
        }
        assert all(r["health"] == "ok" for g in rules["data"]["groups"] for r in g["rules"])
    finally:
        outputs.close()
        worker.stop()
        trends.stop()
