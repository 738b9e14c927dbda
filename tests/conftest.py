"""Fixtures shared by the whole suite.

``kafka_bootstrap`` (session) gives a real Kafka broker, chosen in this order:
  1. ``ACCOUNTANT_TEST_BOOTSTRAP`` (host:port[,host:port...], loopback only);
  2. an ``apache/kafka`` container, if testcontainers is installed and a Docker
     engine answers;
  3. a ``LocalKafka`` broker (app/broker.py: Java + jars from Maven Central).
A failing test that used it gets a "Kafka broker" report section naming the
broker and its log.

More fixtures go in their own modules under tests/fixtures/, loaded with
``pytest_plugins = ["tests.fixtures.<module>", ...]`` here.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from app.broker import TEST_BROKER_SETTINGS, LocalKafka, kafka_version, pick_free_loopback_port, wait_for_broker

ENV_TEST_BOOTSTRAP = "ACCOUNTANT_TEST_BOOTSTRAP"

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.ledger"]

# Where the session's broker is and where its log lives, for failure reports.
_BROKER_DESCRIPTION = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Fail the whole run at once rather than every integration test.
    bootstrap = os.environ.get(ENV_TEST_BOOTSTRAP)
    if bootstrap:
        non_loopback = [address for address in bootstrap.split(",") if not _is_loopback(_host_of(address))]
        if non_loopback:
            raise pytest.UsageError(
                f"{ENV_TEST_BOOTSTRAP}={bootstrap!r}: tests only talk to brokers on loopback "
                f"(127.0.0.0/8, ::1, localhost); refusing {', '.join(non_loopback)}"
            )


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a broker shared by the session.

    Tests must not stop it; use per-test topic and group names (``unique_name``).
    """
    config = request.config
    external = os.environ.get(ENV_TEST_BOOTSTRAP)
    if external:
        config.stash[_BROKER_DESCRIPTION] = f"external broker {external} (from {ENV_TEST_BOOTSTRAP})"
        wait_for_broker(external, timeout=30)
        yield external
    elif _docker_engine_answers():
        yield from _kafka_container(config, tmp_path_factory.mktemp("kafka-container") / "broker.log")
    else:
        # Under pytest's basetemp, so the log survives the run (pytest keeps the last three).
        with LocalKafka(workdir=tmp_path_factory.mktemp("kafka")) as kafka:
            config.stash[_BROKER_DESCRIPTION] = f"LocalKafka {kafka.bootstrap}, log: {kafka.log_path}"
            yield kafka.bootstrap


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of collision-free names for topics, groups and app ids:
    ``unique_name("events")`` -> ``"events-1f0c3a9e7b2d"``."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and "kafka_bootstrap" in getattr(item, "fixturenames", ()):
        description = item.config.stash.get(_BROKER_DESCRIPTION, None)
        if description:
            report.sections.append(("Kafka broker", description))
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    description = config.stash.get(_BROKER_DESCRIPTION, None)
    if description:
        terminalreporter.write_line(f"Kafka broker used: {description}")


# --------------------------------------------------------------------------
# Docker (optional: testcontainers is in the `test` extra, a Docker engine may not be)


def _docker_engine_answers() -> bool:
    try:
        import docker
        import testcontainers.core.container  # noqa: F401  (needed to start the container)
    except ImportError:
        return False
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith("tcp://") and not _is_loopback(urlparse(docker_host).hostname or ""):
        return False  # never talk to a Docker engine on another machine
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, engine down: all mean "no Docker"
        return False


def _kafka_container(config: pytest.Config, log_path: Path) -> Iterator[str]:
    """An apache/kafka container (same version and test settings as LocalKafka)
    with its client port published on 127.0.0.1 only."""
    from testcontainers.core.container import DockerContainer

    # The same port inside and outside, so the advertised address is right
    # without rewriting the config after the container starts.
    port = pick_free_loopback_port()
    environment = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@127.0.0.1:9093",
        # The image maps KAFKA_FOO_BAR to foo.bar.
        **{"KAFKA_" + key.upper().replace(".", "_"): value for key, value in TEST_BROKER_SETTINGS.items()},
    }
    container = DockerContainer(f"apache/kafka:{kafka_version()}")
    for name, value in environment.items():
        container.with_env(name, value)
    container.with_bind_ports(port, ("127.0.0.1", port))
    bootstrap = f"127.0.0.1:{port}"
    with container:
        container_id = container.get_wrapped_container().short_id
        config.stash[_BROKER_DESCRIPTION] = (
            f"apache/kafka container {container_id} at {bootstrap}; "
            f"logs: docker logs {container_id} (saved to {log_path} at session end)"
        )
        def is_running() -> bool:
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            return wrapped.status == "running"

        try:
            wait_for_broker(bootstrap, timeout=120, is_alive=is_running)
            yield bootstrap
        finally:
            stdout, stderr = container.get_logs()
            log_path.write_bytes(stdout + stderr)


def _host_of(address: str) -> str:
    host, _, _ = address.strip().rpartition(":")
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
