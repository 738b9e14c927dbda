"""Fixtures of the ledger tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import pytest_runtest_makereport  # noqa: F401  (records rep_call)
from tests.ledger.processes import LedgerDeployment


@pytest.fixture
def ledger_deployment(kafka_bootstrap: str, ledger_dsn: str, unique_name: Callable[[str], str], tmp_path: Path,
                      request: pytest.FixtureRequest) -> Iterator[LedgerDeployment]:
    """A fresh closures topic (4 partitions), consumer group and database; every
    ledger started from it is stopped afterwards, its log shown when the test fails."""
    deployment = LedgerDeployment(kafka_bootstrap, ledger_dsn, unique_name("t") + ".", unique_name("ledger"),
                                  tmp_path)
    deployment.create_topic()
    yield deployment
    deployment.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in deployment.started:
            print("\n" + process.describe())
