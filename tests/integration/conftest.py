"""Fixtures for tests that run real workers against the real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.workers import Deployment, WorkerProcess


@pytest.fixture
def deployment(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A fresh app id and topic prefix; every worker started from it is stopped afterwards,
    and the logs of all of them are shown when the test fails."""
    deployment = Deployment(kafka_bootstrap, unique_name("acct"), unique_name("t") + ".", tmp_path)
    started: list[WorkerProcess] = []
    original = deployment.worker

    def tracked(name: str = "worker") -> WorkerProcess:
        worker = original(name)
        started.append(worker)
        return worker

    deployment.worker = tracked  # type: ignore[method-assign]
    yield deployment
    for worker in started:
        worker.stop(timeout=20)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for worker in started:
            print(f"\n----- {worker.name} log ({worker.log_path}) -----\n{worker.log_tail(120)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
