"""Where the suite's PostgreSQL comes from, as `brokers` says for Kafka: a DSN
from the environment (loopback only; the role must be allowed to CREATE
DATABASE), a `postgres:15` container when a Docker engine answers, or a
`LocalPostgres` (app/dev/postgres.py: Debian's postgresql package). The
fixtures are `postgres_dsn` and `ledger_dsn` in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from psycopg.conninfo import conninfo_to_dict

from app.dev.postgres import wait_for_postgres
from app.dev.processes import pick_free_loopback_port
from tests.support.brokers import is_loopback

__all__ = ["ENV_TEST_POSTGRES_DSN", "POSTGRES_IMAGE", "non_local_hosts", "postgres_container"]

ENV_TEST_POSTGRES_DSN = "ACCOUNTANT_TEST_POSTGRES_DSN"
POSTGRES_IMAGE = "postgres:15"


def non_local_hosts(dsn: str) -> list[str]:
    """The hosts of `dsn` that are neither loopback nor a unix socket: tests never
    talk to them. psycopg.ProgrammingError if `dsn` is no connection string."""
    params = conninfo_to_dict(dsn)
    hosts = [host for host in str(params.get("host") or "").split(",") if host]
    hosts += [host for host in str(params.get("hostaddr") or "").split(",") if host]
    # No host at all is libpq's default: the local unix socket.
    return [host for host in hosts if not (host.startswith("/") or is_loopback(host))]


def postgres_container(describe: Callable[[str], None]) -> Iterator[str]:
    """A postgres container with its port published on 127.0.0.1 only; yields its DSN.
    `describe` is told where it is."""
    from testcontainers.core.container import DockerContainer

    port = pick_free_loopback_port()
    container = DockerContainer(POSTGRES_IMAGE)
    container.with_env("POSTGRES_USER", "postgres")
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    container.with_bind_ports(5432, ("127.0.0.1", port))
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with container:
        container_id = container.get_wrapped_container().short_id
        describe(f"{POSTGRES_IMAGE} container {container_id} at {dsn}; logs: docker logs {container_id}")
        wait_for_postgres(dsn, timeout=60)
        yield dsn
