"""Unit tests of app/dev/kafka.py pieces that need no Java and no broker."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from app.dev import kafka, processes


def test_cluster_ids_never_start_with_a_dash():
    # One in 64 URL-safe base64 strings starts with '-', which kafka-storage's
    # argument parser takes for an option ("--cluster-id: expected one argument").
    ids = [kafka._random_cluster_id() for _ in range(5000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)


def test_free_port_is_bindable_on_loopback_and_below_the_ephemeral_range():
    port = processes.pick_free_loopback_port()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        assert port < int(ranges.read().split()[0])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_complete_jar_cache_is_used_without_maven(tmp_path, monkeypatch):
    (tmp_path / "libs").mkdir()
    (tmp_path / "complete").write_text(hashlib.sha256(kafka.POM_PATH.read_bytes()).hexdigest() + "\n")
    monkeypatch.setenv(kafka.ENV_KAFKA_CACHE, str(tmp_path))
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)  # any fetch attempt would fail

    assert kafka.ensure_kafka_jars() == tmp_path / "libs"


def test_jar_cache_for_another_pom_is_refetched(tmp_path, monkeypatch):
    (tmp_path / "libs").mkdir()
    (tmp_path / "complete").write_text("digest-of-an-older-pom\n")
    monkeypatch.setenv(kafka.ENV_KAFKA_CACHE, str(tmp_path))
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)

    with pytest.raises(kafka.BrokerError, match="Maven"):
        kafka.ensure_kafka_jars()


def test_start_failure_message_shows_the_latest_starts_errors(tmp_path):
    log = tmp_path / "broker.log"
    log.write_text(
        "=== LocalKafka: starting Kafka (first) ===\n"
        "[t] ERROR an old problem (x)\n"
        "=== LocalKafka: starting Kafka (second) ===\n"
        "[t] INFO starting (x)\n"
        "[t] ERROR Unable to start acceptor for PLAINTEXT (kafka.network.DataPlaneAcceptor)\n"
        + "\tat some.Frame\n" * 50
    )
    tail = kafka._log_tail(log)
    assert "Unable to start acceptor" in tail
    assert "an old problem" not in tail


def test_a_relative_workdir_is_made_absolute(tmp_path, monkeypatch) -> None:
    # `accountant dev` passes data/kafka; the JVM must not resolve it from elsewhere.
    monkeypatch.chdir(tmp_path)
    local = kafka.LocalKafka(workdir=Path("data/kafka"), log_path=Path("broker.log"))
    assert local.workdir == tmp_path / "data" / "kafka"
    assert local.log_path == tmp_path / "broker.log"
