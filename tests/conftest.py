"""Fixtures shared by the whole suite.

``kafka_bootstrap`` (session) gives a real Kafka broker, chosen in this order:
  1. ``ACCOUNTANT_TEST_BOOTSTRAP`` (host:port[,host:port...], loopback only);
  2. an ``apache/kafka`` container, if testcontainers is installed and a Docker
     engine answers;
  3. a ``LocalKafka`` broker (app/dev/kafka.py: Java + jars from Maven Central).
A failing test that used it gets a "Kafka broker" report section naming the
broker and its log.

``deployment`` gives real workers on that broker (tests/support/deployment.py),
with a fresh app id and topic prefix per test.

What tests and benchmarks share lives in tests/support/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from app.dev.kafka import LocalKafka, wait_for_broker
from tests.support.brokers import ENV_TEST_BOOTSTRAP, docker_engine_answers, kafka_container, non_loopback_addresses
from tests.support.deployment import Deployment
from tests.support.fixtures import deployment_for_test

# Where the session's broker is and where its log lives, for failure reports.
_BROKER_DESCRIPTION = pytest.StashKey[str]()


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Each phase's report on the item, so fixtures can tell whether the test failed.
    setattr(item, f"rep_{report.when}", report)
    if report.failed and "kafka_bootstrap" in getattr(item, "fixturenames", ()):
        description = item.config.stash.get(_BROKER_DESCRIPTION, None)
        if description:
            report.sections.append(("Kafka broker", description))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    description = config.stash.get(_BROKER_DESCRIPTION, None)
    if description:
        terminalreporter.write_line(f"Kafka broker used: {description}")
