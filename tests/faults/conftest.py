"""Fixtures of the fault suite.

* ``deployment`` (tests/conftest.py): workers on the shared session broker,
  with a fresh app id and topic prefix per test.
* ``private_kafka``: a LocalKafka broker of the test's own, for faults that stop
  the broker (the shared one must never be stopped).
* ``private_deployment``: a Deployment on ``private_kafka``.
* ``private_postgres``: a LocalPostgres of the test's own, for faults that stop
  the database (the session's shared one must never be stopped).
* ``private_postgres_ledger``: `accountant ledger` processes reading the
  closures of ``deployment``'s workers into a database on ``private_postgres``.
* ``fault_figures``: where a test reports what it measured; the figures of all
  fault tests are printed in pytest's terminal summary, and appended as JSON
  lines to ``$ACCOUNTANT_FAULT_FIGURES`` when that is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app.dev.kafka import LocalKafka
from app.dev.postgres import LocalPostgres
from tests.support.deployment import Deployment
from tests.support.fixtures import body_failed, deployment_for_test
from tests.support.ledger_processes import LedgerDeployment

ENV_FIGURES = "ACCOUNTANT_FAULT_FIGURES"
_FIGURES = pytest.StashKey[list]()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker for this test alone: stop/start it freely (same port, same data)."""
    kafka = LocalKafka(workdir=tmp_path / "private-kafka")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.close()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL server for this test alone: stop/start it freely (same port, same data)."""
    postgres = LocalPostgres(log_path=tmp_path / "private-postgres.log", fast=True)
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.close()


@pytest.fixture
def private_postgres_ledger(deployment: Deployment, private_postgres: LocalPostgres,
                            unique_name: Callable[[str], str],
                            request: pytest.FixtureRequest) -> Iterator[LedgerDeployment]:
    """Like ``deployment_ledger``, with the database on the test's private server."""
    with psycopg.connect(private_postgres.dsn, autocommit=True) as connection:
        connection.execute("CREATE DATABASE ledger")
    ledgers = LedgerDeployment.beside(deployment, make_conninfo(private_postgres.dsn, dbname="ledger"),
                                      unique_name("ledger"))
    deployment.settings.update({"ACCOUNTANT_LEDGER_DSN": ledgers.dsn, "ACCOUNTANT_LEDGER_GROUP": ledgers.group})
    yield ledgers
    ledgers.stop_all()
    if body_failed(request):
        print(ledgers.logs())
        log = private_postgres.log_path.read_text(errors="replace").splitlines()[-40:]
        print(f"\n----- private PostgreSQL log ({private_postgres.log_path}) -----\n" + "\n".join(log))


@pytest.fixture
def private_deployment(private_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path,
                       request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Like ``deployment``, on the test's private broker. Workers are stopped
    before the broker is (fixture teardown order), and their logs and the
    broker's are shown when the test fails."""
    def broker_log() -> str:
        log = private_kafka.log_path.read_text(errors="replace").splitlines()[-60:]
        return f"\n----- private broker log ({private_kafka.log_path}) -----\n" + "\n".join(log)

    yield from deployment_for_test(private_kafka.bootstrap, unique_name, tmp_path, request, also_show=broker_log)


@pytest.fixture
def fault_figures(request: pytest.FixtureRequest) -> Callable[[dict], None]:
    """Report one test's figures (a flat dict) for the terminal summary."""

    def report(figures: dict) -> None:
        entry = {"test": request.node.name, **figures}
        request.config.stash.setdefault(_FIGURES, []).append(entry)
        path = os.environ.get(ENV_FIGURES)
        if path:
            with open(path, "ab") as out:
                out.write(orjson.dumps(entry) + b"\n")

    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    entries = config.stash.get(_FIGURES, [])
    if not entries:
        return
    terminalreporter.section("fault suite figures")
    for entry in entries:
        terminalreporter.write_line(" ".join(f"{key}={value}" for key, value in entry.items()))
    total = {key: sum(entry.get(key, 0) for entry in entries)
             for key in ("events", "sessions", "faults_injected", "lost", "double_billed", "ledger_lost",
                         "ledger_double_billed")}
    terminalreporter.write_line("total " + " ".join(f"{key}={value}" for key, value in total.items()))
