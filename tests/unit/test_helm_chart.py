"""The Helm chart, offline: linted and rendered (helm-python-sdk, Helm's own Go library)
with default, GPU and autoscaling values; every manifest passes kubernetes-validate
--strict for a current Kubernetes; a broken value or template fails."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from streams.settings import Settings  # noqa: E402

CHART = Path(__file__).resolve().parents[2] / "helm" / "postpulse"
KUBERNETES = kubernetes_validate.latest_version()  # a current Kubernetes
VALUES = {
    "default": {},
    "gpu": yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()),
    "autoscaling-keda": yaml.safe_load((CHART / "ci" / "autoscaling-values.yaml").read_text()),
    "autoscaling-hpa": yaml.safe_load((CHART / "ci" / "hpa-values.yaml").read_text()),
}
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


def render(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    loaded = helm.Chart.load(str(chart))
    try:
        loaded.validate_schema(values)
        files = loaded.render(values, name="pp", namespace="postpulse", is_install=True)
    finally:
        loaded.close()
    docs = []
    for path, text in files.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("name", list(VALUES))
def test_chart_lints_and_every_manifest_validates(name: str) -> None:
    report = helm.lint(str(CHART), VALUES[name], strict=True, kube_version=f"v{KUBERNETES}")
    assert not report["errors"], report
    assert all(m["severity"] < 2 for m in report["messages"]), report["messages"]
    docs = render(VALUES[name])
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRDS:  # custom resources: no upstream schema; their shape is checked below
            assert doc["spec"], doc
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    # every POSTPULSE_* variable the chart sets is a real setting
    for config in by_kind(docs, "ConfigMap").values():
        for key in config["data"]:
            assert key.removeprefix("POSTPULSE_").lower() in Settings.model_fields, key


def test_default_values_deploy_workers_api_and_no_toy_databases() -> None:
    docs = render({})
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"pp-postpulse-posts", "pp-postpulse-trends", "pp-postpulse-api"}
    posts = deployments["pp-postpulse-posts"]["spec"]
    container = posts["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker", "--role", "posts", "--no-create-topics"]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert posts["replicas"] == 2
    kinds = {d["kind"] for d in docs}
    assert {"PodDisruptionBudget", "Service", "ConfigMap", "Secret"} <= kinds
    assert "StatefulSet" not in kinds  # Kafka and Milvus are external, by URI
    config = by_kind(docs, "ConfigMap")["pp-postpulse"]["data"]
    assert config["POSTPULSE_BROKER_URL"].startswith("kafka://")
    assert config["POSTPULSE_MILVUS_URI"].startswith("http://")


def test_gpu_values_request_gpus_and_wire_secrets() -> None:
    docs = render(VALUES["gpu"])
    posts = by_kind(docs, "Deployment")["pp-postpulse-posts"]["spec"]["template"]["spec"]
    worker = posts["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"].endswith("-gpu")
    assert posts["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in posts["tolerations"])
    trends = by_kind(docs, "Deployment")["pp-postpulse-trends"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in trends["containers"][0]["resources"].get("limits", {})
    env = {e["name"]: e for e in worker["env"]}
    assert env["POSTPULSE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "postpulse-kafka"
    )
    assert env["POSTPULSE_MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    config = by_kind(docs, "ConfigMap")["pp-postpulse"]["data"]
    assert config["POSTPULSE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["POSTPULSE_KAFKA_SSL_CAFILE"] == "/etc/postpulse/kafka-tls/ca.crt"
    assert "Secret" not in {d["kind"] for d in docs}  # the API token comes from a Secret given


def test_autoscaling_never_exceeds_the_partitions() -> None:
    keda = render(VALUES["autoscaling-keda"] | {"kafka": {"partitions": 6}})
    scaled = by_kind(keda, "ScaledObject")["pp-postpulse-posts"]["spec"]
    assert scaled["maxReplicaCount"] == 6 and scaled["triggers"][0]["type"] == "kafka"
    assert "replicas" not in by_kind(keda, "Deployment")["pp-postpulse-posts"]["spec"]
    assert by_kind(keda, "ServiceMonitor")
    hpa = by_kind(render(VALUES["autoscaling-hpa"]), "HorizontalPodAutoscaler")
    assert hpa["pp-postpulse-posts"]["spec"]["maxReplicas"] == 12


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"worker": {"replicas": "two"}}, "replicas"),
        ({"kafka": {"bootstrap": "no port here"}}, "bootstrap"),
        ({"autoscaling": {"type": "magic"}}, "type"),
        ({"surprise": True}, "surprise"),
        ({"milvus": {"uri": "./local.db"}}, "uri"),
    ],
)
def test_values_that_break_the_schema_fail(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=needle):
        render(values)


def test_more_workers_than_partitions_fails_to_render() -> None:
    with pytest.raises(helm.HelmError, match=r"must not exceed kafka\.partitions"):
        render({"worker": {"replicas": 20}})


def test_a_broken_template_fails(tmp_path: Path) -> None:
    chart = tmp_path / "postpulse"
    shutil.copytree(CHART, chart)
    pdb = chart / "templates" / "pdb.yaml"
    pdb.write_text(
        pdb.read_text().replace("maxUnavailable:", "maxUnavailable: {{ .Values.nope.x }}")
    )
    with pytest.raises(helm.HelmError):
        render({}, chart)
