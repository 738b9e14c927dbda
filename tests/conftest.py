"""Fixtures shared by the whole suite.

``kafka_bootstrap`` (session) gives a real Kafka broker, chosen in this order:
  1. ``ACCOUNTANT_TEST_BOOTSTRAP`` (host:port[,host:port...], loopback only);
  2. an ``apache/kafka`` container, if testcontainers is installed and a Docker
     engine answers;
  3. a ``LocalKafka`` broker (app/dev/kafka.py: Java + jars from Maven Central).
A failing test that used it gets a "Kafka broker" report section naming the
broker and its log.

``postgres_dsn`` (session) gives a real PostgreSQL server the same way:
  1. ``ACCOUNTANT_TEST_POSTGRES_DSN`` (a libpq URI or key=value string, loopback
     only; the role must be allowed to CREATE DATABASE);
  2. a ``postgres:15`` container, if testcontainers is installed and a Docker
     engine answers;
  3. a ``LocalPostgres`` server (app/dev/postgres.py: Debian's postgresql package).
A failing test that used it gets a "PostgreSQL" report section naming the server.

``deployment`` gives real workers on that broker (tests/support/deployment.py),
with a fresh app id and topic prefix per test; ``ledger_dsn`` a fresh database
on that server; ``ledger_deployment`` `accountant ledger` processes on both
(tests/support/ledger_processes.py), ``deployment_ledger`` ledgers reading the
closures of ``deployment``'s workers.

What tests and benchmarks share lives in tests/support/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import psycopg
import pytest

from app.dev.kafka import LocalKafka, wait_for_broker
from app.dev.postgres import LocalPostgres, scratch_database
from tests.support.brokers import ENV_TEST_BOOTSTRAP, docker_engine_answers, kafka_container, non_loopback_addresses
from tests.support.deployment import Deployment
from tests.support.fixtures import body_failed, deployment_for_test
from tests.support.ledger_processes import LedgerDeployment
from tests.support.postgres import ENV_TEST_POSTGRES_DSN, non_local_hosts, postgres_container

# Where the session's broker is and where its log lives, for failure reports.
_BROKER_DESCRIPTION = pytest.StashKey[str]()
# The same for the session's PostgreSQL.
_POSTGRES_DESCRIPTION = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Fail the whole run at once rather than every integration test.
    bootstrap = os.environ.get(ENV_TEST_BOOTSTRAP)
    if bootstrap:
        non_loopback = non_loopback_addresses(bootstrap)
        if non_loopback:
            raise pytest.UsageError(
                f"{ENV_TEST_BOOTSTRAP}={bootstrap!r}: tests only talk to brokers on loopback "
                f"(127.0.0.0/8, ::1, localhost); refusing {', '.join(non_loopback)}"
            )
    dsn = os.environ.get(ENV_TEST_POSTGRES_DSN)
    if dsn:
        try:
            remote = non_local_hosts(dsn)
        except psycopg.ProgrammingError:
            raise pytest.UsageError(f"{ENV_TEST_POSTGRES_DSN} is not a libpq connection string") from None
        if remote:
            raise pytest.UsageError(
                f"{ENV_TEST_POSTGRES_DSN}: tests only talk to PostgreSQL on loopback (127.0.0.0/8, ::1, "
                f"localhost) or a unix socket; refusing {', '.join(remote)}"
            )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The `long` tier costs minutes: it runs only when the -m expression asks for it.
    if "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a long test: select it with -m long")
    for item in items:
        if item.get_closest_marker("long"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a broker shared by the session.

    Tests must not stop it; use per-test topic and group names (``unique_name``).
    """
    config = request.config
    external = os.environ.get(ENV_TEST_BOOTSTRAP)

    def describe(description: str) -> None:
        config.stash[_BROKER_DESCRIPTION] = description

    if external:
        describe(f"external broker {external} (from {ENV_TEST_BOOTSTRAP})")
        wait_for_broker(external, timeout=30)
        yield external
    elif docker_engine_answers():
        yield from kafka_container(tmp_path_factory.mktemp("kafka-container") / "broker.log", describe)
    else:
        # Under pytest's basetemp, so the log survives the run (pytest keeps the last three).
        with LocalKafka(workdir=tmp_path_factory.mktemp("kafka")) as kafka:
            describe(f"LocalKafka {kafka.bootstrap}, log: {kafka.log_path}")
            yield kafka.bootstrap


@pytest.fixture(scope="session")
def postgres_dsn(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a PostgreSQL server shared by the session, connected as a role that
    may create databases. Tests must not stop it; use ``ledger_dsn`` for a database."""
    config = request.config
    external = os.environ.get(ENV_TEST_POSTGRES_DSN)

    def describe(description: str) -> None:
        config.stash[_POSTGRES_DESCRIPTION] = description

    if external:
        describe(f"external PostgreSQL (from {ENV_TEST_POSTGRES_DSN})")
        yield external
    elif docker_engine_answers():
        yield from postgres_container(describe)
    else:
        # The data directory in a fresh temporary directory (the server may run as
        # user postgres, which cannot enter pytest's root-only basetemp); the log
        # under basetemp, so it survives the run.
        log_path = tmp_path_factory.mktemp("postgres") / "postgres.log"
        with LocalPostgres(log_path=log_path, fast=True) as postgres:
            describe(f"LocalPostgres {postgres.dsn}, log: {postgres.log_path}")
            yield postgres.dsn


@pytest.fixture
def ledger_dsn(postgres_dsn: str) -> Iterator[str]:
    """A fresh empty database for one test; dropped afterwards."""
    with scratch_database(postgres_dsn, "ledger") as dsn:
        yield dsn


#: ACCOUNTANT_PROCESSING_GUARANTEE values; fault tests that take `guarantee` run in each.
GUARANTEES = ("at_least_once", "exactly_once")


@pytest.fixture(params=GUARANTEES)
def guarantee(request: pytest.FixtureRequest) -> str:
    """Each processing guarantee in turn: the test puts it in its deployment's
    settings (`harness.finish` then holds exactly_once to no repeat)."""
    return str(request.param)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of collision-free names for topics, groups and app ids:
    ``unique_name("events")`` -> ``"events-1f0c3a9e7b2d"``."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def deployment(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Workers on the shared broker: a fresh app id and topic prefix; every worker
    started from it is stopped afterwards, and the logs of all of them are shown
    when the test fails."""
    yield from deployment_for_test(kafka_bootstrap, unique_name, tmp_path, request)


@pytest.fixture
def ledger_deployment(kafka_bootstrap: str, ledger_dsn: str, unique_name: Callable[[str], str], tmp_path: Path,
                      request: pytest.FixtureRequest) -> Iterator[LedgerDeployment]:
    """`accountant ledger` processes on the shared broker and a fresh database: a
    fresh closures topic (4 partitions) and consumer group; every ledger started
    from it is stopped afterwards, and its log shown when the test failed."""
    ledgers = LedgerDeployment(kafka_bootstrap, ledger_dsn, unique_name("t") + ".", unique_name("ledger"), tmp_path)
    ledgers.create_topic()
    yield ledgers
    ledgers.stop_all()
    if body_failed(request):
        print(ledgers.logs())


@pytest.fixture
def deployment_ledger(deployment: Deployment, ledger_dsn: str, unique_name: Callable[[str], str],
                      request: pytest.FixtureRequest) -> Iterator[LedgerDeployment]:
    """`accountant ledger` processes reading the closures of ``deployment``'s
    workers into a fresh database; the workers know it (their /ledger and the
    dashboard show its lag). Ledgers are stopped afterwards, and their logs shown
    when the test failed."""
    ledgers = LedgerDeployment.beside(deployment, ledger_dsn, unique_name("ledger"))
    deployment.settings.update({"ACCOUNTANT_LEDGER_DSN": ledgers.dsn, "ACCOUNTANT_LEDGER_GROUP": ledgers.group})
    yield ledgers
    ledgers.stop_all()
    if body_failed(request):
        print(ledgers.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Each phase's report on the item, so fixtures can tell whether the test failed.
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        for fixture, key, title in (("kafka_bootstrap", _BROKER_DESCRIPTION, "Kafka broker"),
                                    ("postgres_dsn", _POSTGRES_DESCRIPTION, "PostgreSQL")):
            description = item.config.stash.get(key, None)
            if description and fixture in getattr(item, "fixturenames", ()):
                report.sections.append((title, description))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    for key, title in ((_BROKER_DESCRIPTION, "Kafka broker"), (_POSTGRES_DESCRIPTION, "PostgreSQL")):
        description = config.stash.get(key, None)
        if description:
            terminalreporter.write_line(f"{title} used: {description}")
