"""A real SASL_SSL handshake and login, through app/kafka_config.py, against a
local broker whose CA, certificates and SCRAM user are made for this run; and
each way of getting it wrong stops start-up at once, naming the setting.

The broker (app/dev/kafka_security.py) has a SASL_SSL listener (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512), an SSL listener that requires a client
certificate, and a PLAINTEXT listener for its own inter-broker traffic.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.dev.kafka import LocalKafka
from app.dev.kafka_security import SASL_MECHANISMS, BrokerSecurity, write_certificate_authority
from app.kafka_config import client_options
from app.preflight import KafkaCheckError, check_kafka
from app.settings import NOT_SETTINGS, Settings, load_settings
from tests.support import REPO
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.fixtures import deployment_for_test
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

#: Generous: a failure that is a setting must be reported at once, which the
#: tests check by the message not being the "tried for ..." one.
CHECK_TIMEOUT_SECS = 20


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    workdir = tmp_path_factory.mktemp("secure-kafka")
    with LocalKafka(workdir=workdir, security=BrokerSecurity(workdir / "tls")) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def security(secure_kafka: LocalKafka) -> BrokerSecurity:
    assert secure_kafka.security is not None
    return secure_kafka.security


@pytest.fixture
def secure_deployment(secure_kafka: LocalKafka, security: BrokerSecurity, unique_name: Callable[[str], str],
                      tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Workers on the SASL_SSL listener, logging in as the SCRAM user; their
    logs and the broker's are shown when the test fails."""
    def broker_log() -> str:
        return "\n----- secure broker log -----\n" + "\n".join(
            secure_kafka.log_path.read_text(errors="replace").splitlines()[-60:])

    for deployment in deployment_for_test(secure_kafka.bootstrap, unique_name, tmp_path, request,
                                          also_show=broker_log):
        deployment.settings.update(security.settings_env("SCRAM-SHA-512"))
        yield deployment


def sasl_settings(kafka: LocalKafka, mechanism: str = "SCRAM-SHA-512", **overrides: object) -> Settings:
    assert kafka.security is not None
    return load_settings(**{"broker": kafka.bootstrap, "kafka_connect_timeout_secs": CHECK_TIMEOUT_SECS,
                            **kafka.security.settings_overrides(mechanism), **overrides})


def mutual_tls_settings(security: BrokerSecurity, **overrides: object) -> Settings:
    return load_settings(**{"broker": f"127.0.0.1:{security.ssl_port}", "kafka_security_protocol": "SSL",
                            "kafka_ssl_ca_file": str(security.ca.cert),
                            "kafka_ssl_cert_file": str(security.client_cert),
                            "kafka_ssl_key_file": str(security.client_key),
                            "kafka_connect_timeout_secs": CHECK_TIMEOUT_SECS, **overrides})


async def round_trip(settings: Settings, topic: str) -> None:
    """Admin creates a topic, a producer writes to it, a consumer in a group
    reads it back and commits: every kind of client, all through client_options."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        # The broker learns of a new topic from the controller a moment later.
        deadline = time.monotonic() + 30
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} is not listed 30 s after it was created"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over TLS", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **client_options(settings), group_id=f"{topic}-group",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        record = await consumer.getone()
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"over TLS")


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
async def test_sasl_ssl_login_passes_for_every_kind_of_client(
        secure_kafka: LocalKafka, mechanism: str, unique_name: Callable[[str], str]) -> None:
    settings = sasl_settings(secure_kafka, mechanism)
    await check_kafka(settings)
    await round_trip(settings, unique_name("sasl-ssl"))


async def test_mutual_tls_passes_with_the_client_certificate(
        security: BrokerSecurity, unique_name: Callable[[str], str]) -> None:
    settings = mutual_tls_settings(security)
    await check_kafka(settings)
    await round_trip(settings, unique_name("mtls"))


async def refusal(settings: Settings) -> str:
    with pytest.raises(KafkaCheckError) as refused:
        await check_kafka(settings)
    message = str(refused.value)
    # Reported at the first answer, not after waiting out the connect timeout.
    assert "tried for" not in message, message
    return message


async def test_a_wrong_password_names_the_password_setting(secure_kafka: LocalKafka, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    message = await refusal(sasl_settings(secure_kafka, kafka_sasl_password_file=str(wrong)))
    assert "ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE: " in message
    assert "refused user 'accountant' with SCRAM-SHA-512" in message

    security = secure_kafka.security
    assert security is not None
    message = await refusal(sasl_settings(secure_kafka, "PLAIN", kafka_sasl_password_file="",
                                          kafka_sasl_password="not-the-password"))
    assert "ACCOUNTANT_KAFKA_SASL_PASSWORD: " in message


async def test_an_unknown_ca_names_the_ca_setting(secure_kafka: LocalKafka, tmp_path: Path) -> None:
    stranger = write_certificate_authority(tmp_path / "other-ca", name="some other CA")
    message = await refusal(sasl_settings(secure_kafka, kafka_ssl_ca_file=str(stranger.cert)))
    assert f"ACCOUNTANT_KAFKA_SSL_CA_FILE: {secure_kafka.bootstrap}: the broker's certificate is not trusted" in message
    assert str(stranger.cert) in message


async def test_the_system_trust_store_does_not_know_a_private_ca(secure_kafka: LocalKafka) -> None:
    message = await refusal(sasl_settings(secure_kafka, kafka_ssl_ca_file=""))
    assert "ACCOUNTANT_KAFKA_SSL_CA_FILE: " in message and "the system's trust store" in message


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
async def test_a_client_without_tls_at_a_tls_listener_names_the_protocol(
        secure_kafka: LocalKafka, protocol: str) -> None:
    sasl = {} if protocol == "PLAINTEXT" else {"kafka_sasl_mechanism": "SCRAM-SHA-512",
                                               "kafka_sasl_username": "accountant", "kafka_sasl_password": "x"}
    settings = load_settings(broker=secure_kafka.bootstrap, kafka_security_protocol=protocol,
                             kafka_connect_timeout_secs=CHECK_TIMEOUT_SECS, **sasl)
    message = await refusal(settings)
    assert (f"ACCOUNTANT_KAFKA_SECURITY_PROTOCOL: {secure_kafka.bootstrap} expects TLS, but "
            f"ACCOUNTANT_KAFKA_SECURITY_PROTOCOL is {protocol}") in message


async def test_tls_without_sasl_at_a_sasl_listener_names_the_protocol(secure_kafka: LocalKafka,
                                                                      security: BrokerSecurity) -> None:
    settings = load_settings(broker=secure_kafka.bootstrap, kafka_security_protocol="SSL",
                             kafka_ssl_ca_file=str(security.ca.cert), kafka_connect_timeout_secs=CHECK_TIMEOUT_SECS)
    message = await refusal(settings)
    assert "ACCOUNTANT_KAFKA_SECURITY_PROTOCOL: " in message and "expects a SASL login" in message


async def test_tls_at_a_listener_without_tls_names_the_protocol(secure_kafka: LocalKafka,
                                                                security: BrokerSecurity) -> None:
    settings = sasl_settings(secure_kafka, broker=f"127.0.0.1:{security.internal_port}")
    message = await refusal(settings)
    assert "ACCOUNTANT_KAFKA_SECURITY_PROTOCOL: " in message and "did not complete a TLS handshake" in message


async def test_a_missing_client_certificate_names_the_certificate_setting(security: BrokerSecurity) -> None:
    message = await refusal(mutual_tls_settings(security, kafka_ssl_cert_file="", kafka_ssl_key_file=""))
    assert "ACCOUNTANT_KAFKA_SSL_CERT_FILE: " in message and "wants a client certificate" in message


def test_the_worker_stops_at_start_naming_the_setting(secure_kafka: LocalKafka, tmp_path: Path) -> None:
    """What an operator sees: one message, no traceback, exit status 1."""
    security = secure_kafka.security
    assert security is not None
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}
    env.update(security.settings_env(), ACCOUNTANT_BROKER=secure_kafka.bootstrap,
               ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE=str(wrong), ACCOUNTANT_DATA_DIR=str(tmp_path / "data"),
               ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS=str(CHECK_TIMEOUT_SECS))
    result = subprocess.run([sys.executable, "-m", "app.cli", "worker"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


async def produce_json(settings: Settings, topic: str, values: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, orjson.dumps(value), key=value["session_id"].encode())
    finally:
        await producer.stop()


async def read_json_until(settings: Settings, topic: str, done: Callable[[list[dict[str, Any]]], bool],
                          timeout: float = 60) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, **client_options(settings), group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    values: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(values) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values += [orjson.loads(record.value) for record in records]
    finally:
        await consumer.stop()
    return values


def test_a_worker_over_sasl_ssl_accounts_a_session_and_closes_it(secure_deployment: Deployment) -> None:
    """A real worker logs in with SCRAM over TLS: its Faust consumer and
    producers, its topic creation, and its stores' bulk loads of the
    changelog (a restarted worker recovers the closed session through them)."""
    config = secure_deployment.config
    assert (config.kafka_security_protocol, config.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    worker = secure_deployment.worker().start().wait_ready()
    events = session_events("s-secure", [10, 20, 30], initial=100)
    asyncio.run(produce_json(config, config.events_topic, events))

    closures = asyncio.run(read_json_until(config, config.closures_topic,
                                           lambda got: any(c["closure_id"] == "s-secure" for c in got)))
    closure = next(c for c in closures if c["closure_id"] == "s-secure")
    assert closure["reason"] == "closed" and closure["total_token_count"] == 160
    assert closure["record"]["closed_at"] == events[-1]["occurred_at"]
    wait_for("the worker's counts of the batch", lambda: worker.stats()["closures"] == {"closed": 1}, timeout=30,
             observed=lambda: worker.stats())
    assert worker.stats()["applied"] == len(events)

    worker.stop()
    restarted = secure_deployment.worker("restarted").start().wait_ready()
    status, view = restarted.get("/sessions/s-secure")
    assert status == 200, view
    assert view["state"] == "closed" and view["total_token_count"] == 160


def test_accountant_dev_secure_runs_the_local_stack_over_sasl_ssl(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What the README offers anyone: `accountant dev --secure` (a broker with
    a SASL_SSL listener and a worker logged in to it), and in a second shell,
    with the variables it wrote to kafka.env, `accountant simulate`, whose
    outputs check out."""
    data_dir = tmp_path / "dev"
    # Only the tools' own variables (the Kafka jar cache) pass: no broker, no settings.
    for name in list(os.environ):
        if name.startswith("ACCOUNTANT_") and name not in NOT_SETTINGS:
            monkeypatch.delenv(name)
    env = dict(os.environ)
    dev = WorkerProcess("dev", {}, tmp_path, command=["-m", "app.cli", "dev", "--secure", "--data-dir", str(data_dir)])
    dev.start()
    try:
        dev.wait_ready(timeout=240)
        client_env = dict(line.split("=", 1) for line in (data_dir / "kafka.env").read_text().splitlines())
        assert client_env["ACCOUNTANT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        simulate = subprocess.run(
            [sys.executable, "-m", "app.cli", "simulate", "--sessions", "40", "--bad", "0", "--duplicates", "0",
             "--idle", "0", "--json", "--timeout", "120"],
            cwd=REPO, env={**env, **client_env}, capture_output=True, text=True, timeout=300)
        assert simulate.returncode == 0, simulate.stdout + simulate.stderr
        report = orjson.loads(simulate.stdout)
        assert report["verify"]["ok"] and report["verify"]["complete"], report["verify"]
        assert report["published"]["events"] > 40
    finally:
        dev.stop()
    assert dev.process is not None and dev.process.returncode == 0, dev.log_tail()
