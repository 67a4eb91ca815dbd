"""Settings: the generated table in docs is current; Kafka security reaches every client."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import faust
import pytest
from pydantic import ValidationError

from streams.settings import (
    KAFKA_PROFILE,
    LOCAL_BROKER_PROFILE,
    Settings,
    broker_profile,
    cgroup_cpu_quota,
    compute_threads,
    settings_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_table_in_docs_is_generated_and_current() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == settings_markdown(), (
        "docs/settings.md is stale: run postpulse settings --markdown docs/settings.md"
    )
    for name, info in Settings.model_fields.items():
        assert info.description, f"setting {name} has no description"
        assert f"`POSTPULSE_{name.upper()}`" in committed


def test_every_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTPULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("POSTPULSE_MILVUS_SEARCH_EF", "77")
    monkeypatch.setenv("POSTPULSE_FETCH_ALLOWED_NETWORKS", '["10.0.0.0/8"]')
    settings = Settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.milvus_search_ef == 77
    assert settings.fetch_allowed_networks == ("10.0.0.0/8",)
    monkeypatch.setenv("POSTPULSE_KAFKA_SECURITY_PROTOCOL", "TELNET")
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        Settings()


def test_plaintext_keeps_the_profiles_unchanged() -> None:
    assert broker_profile(Settings()) is LOCAL_BROKER_PROFILE
    assert broker_profile(Settings(broker_profile="kafka")) is KAFKA_PROFILE


def test_sasl_ssl_reaches_faust_and_every_kafka_client() -> None:
    settings = Settings(
        broker_profile="kafka",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="postpulse",
        kafka_sasl_password="hunter2",  # type: ignore[arg-type]
        kafka_ssl_cafile=Path(certifi.where()),
    )
    profile = broker_profile(settings)
    for client in (profile.kafka_producer, profile.kafka_consumer, profile.kafka_admin):
        assert client["security_protocol"] == "SASL_SSL"
        assert client["sasl_mechanism"] == "SCRAM-SHA-512"
        assert client["sasl_plain_username"] == "postpulse"
        assert client["sasl_plain_password"] == "hunter2"
        assert client["ssl_cafile"] == certifi.where()
    assert profile.kafka_producer["acks"] == "all"  # the profile's own settings stay
    credentials = profile.faust["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_tls_alone_gives_faust_an_ssl_context() -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=Path(certifi.where()))
    profile = broker_profile(settings)
    assert isinstance(profile.faust["broker_credentials"], faust.SSLCredentials)
    assert profile.kafka_consumer["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in profile.kafka_consumer
    with pytest.raises(ValidationError, match="kafka_ssl_cafile"):  # said at start-up
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=Path("/nope/ca.pem"))


def test_the_thread_budget_follows_affinity_and_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import streams.settings as module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(module, "cgroup_cpu_quota", lambda: None)
    assert compute_threads(Settings()) == 8
    assert compute_threads(Settings(cpu_threads=3)) == 3  # the setting wins
    monkeypatch.setattr(module, "cgroup_cpu_quota", lambda: 2.5)  # a 2500m CPU limit
    assert compute_threads(Settings()) == 3
    cpu_max = tmp_path / "cpu.max"
    for text, quota in (("250000 100000\n", 2.5), ("max 100000\n", None), ("junk", None)):
        cpu_max.write_text(text)
        assert cgroup_cpu_quota(cpu_max) == quota
    assert cgroup_cpu_quota(tmp_path / "missing") is None
