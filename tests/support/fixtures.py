"""What the suite's fixtures share (the fixtures are in the conftest.py files)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.deployment import Deployment

__all__ = ["body_failed", "deployment_for_test"]


def body_failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test body failed (tests/conftest.py keeps each phase's report on the item)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


def deployment_for_test(bootstrap: str, unique_name: Callable[[str], str], workdir: Path,
                        request: pytest.FixtureRequest,
                        also_show: Callable[[], str] | None = None) -> Iterator[Deployment]:
    """A fresh app id and topic prefix for one test; every worker started from it
    is stopped afterwards, and when the test failed the logs of all of them are
    shown (and `also_show()`)."""
    deployment = Deployment(bootstrap, unique_name("acct"), unique_name("t") + ".", workdir)
    yield deployment
    deployment.stop_workers(timeout=20)
    if body_failed(request):
        print(deployment.worker_logs())
        if also_show is not None:
            print(also_show())
