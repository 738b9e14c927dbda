"""Unit tests of app/broker.py pieces that need no Java and no broker."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from app import broker


def test_cluster_ids_never_start_with_a_dash():
    # One in 64 URL-safe base64 strings starts with '-', which kafka-storage's
    # argument parser takes for an option ("--cluster-id: expected one argument").
    ids = [broker._random_cluster_id() for _ in range(5000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)


def test_free_port_is_bindable_on_loopback_and_below_the_ephemeral_range():
    port = broker.pick_free_loopback_port()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        assert port < int(ranges.read().split()[0])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_complete_jar_cache_is_used_without_maven(tmp_path, monkeypatch):
    (tmp_path / "libs").mkdir()
    (tmp_path / "complete").write_text(hashlib.sha256(broker.POM_PATH.read_bytes()).hexdigest() + "\n")
    monkeypatch.setenv(broker.ENV_KAFKA_CACHE, str(tmp_path))
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)  # any fetch attempt would fail

    assert broker.ensure_kafka_jars() == tmp_path / "libs"


def test_jar_cache_for_another_pom_is_refetched(tmp_path, monkeypatch):
    (tmp_path / "libs").mkdir()
    (tmp_path / "complete").write_text("digest-of-an-older-pom\n")
    monkeypatch.setenv(broker.ENV_KAFKA_CACHE, str(tmp_path))
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)

    with pytest.raises(broker.BrokerError, match="Maven"):
        broker.ensure_kafka_jars()


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
    tail = broker._log_tail(log)
    assert "Unable to start acceptor" in tail
    assert "an old problem" not in tail


def test_a_relative_workdir_is_made_absolute(tmp_path, monkeypatch) -> None:
    # `accountant dev` passes data/kafka; the JVM must not resolve it from elsewhere.
    monkeypatch.chdir(tmp_path)
    kafka = broker.LocalKafka(workdir=Path("data/kafka"), log_path=Path("broker.log"))
    assert kafka.workdir == tmp_path / "data" / "kafka"
    assert kafka.log_path == tmp_path / "broker.log"
