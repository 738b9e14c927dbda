"""Where the suite's Kafka broker comes from: an address from the environment
(loopback only), an `apache/kafka` container when a Docker engine answers, or
a `LocalKafka` (app/dev/kafka.py). The fixture is `kafka_bootstrap` in
tests/conftest.py."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from app.dev.kafka import TEST_BROKER_SETTINGS, kafka_version, wait_for_broker
from app.dev.processes import pick_free_loopback_port

__all__ = ["ENV_TEST_BOOTSTRAP", "docker_engine_answers", "is_loopback", "kafka_container", "non_loopback_addresses"]

ENV_TEST_BOOTSTRAP = "ACCOUNTANT_TEST_BOOTSTRAP"


def non_loopback_addresses(bootstrap: str) -> list[str]:
    """The addresses of `bootstrap` (host:port,...) that are not on loopback: tests never talk to them."""
    return [address for address in bootstrap.split(",") if not is_loopback(_host_of(address))]


def docker_engine_answers() -> bool:
    """Whether a Docker engine on this machine answers (testcontainers is in the
    `test` extra, a Docker engine may not be)."""
    try:
        import docker
        import testcontainers.core.container  # noqa: F401  (needed to start the container)
    except ImportError:
        return False
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith("tcp://") and not is_loopback(urlparse(docker_host).hostname or ""):
        return False  # never talk to a Docker engine on another machine
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, engine down: all mean "no Docker"
        return False


def kafka_container(log_path: Path, describe: Callable[[str], None]) -> Iterator[str]:
    """An apache/kafka container (same version and test settings as LocalKafka)
    with its client port published on 127.0.0.1 only; yields its address.
    `describe` is told where it is and where its logs go."""
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
        describe(f"apache/kafka container {container_id} at {bootstrap}; "
                 f"logs: docker logs {container_id} (saved to {log_path} at session end)")

        def is_running() -> bool:
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            return bool(wrapped.status == "running")

        try:
            wait_for_broker(bootstrap, timeout=120, is_alive=is_running)
            yield bootstrap
        finally:
            stdout, stderr = container.get_logs()
            log_path.write_bytes(stdout + stderr)


def _host_of(address: str) -> str:
    host, _, _ = address.strip().rpartition(":")
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
