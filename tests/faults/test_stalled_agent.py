"""A broker outage is not the worker's death (docs/operations.md, "Probes"):
a worker whose agent has input waiting and cannot make progress because its
broker is frozen keeps answering /healthz 200 past
ACCOUNTANT_STALL_TIMEOUT_SECS (a restart would not bring the broker back),
while /readyz answers 503 broker_unreachable once
ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS has passed (it cannot take an
ingest request); both 200 again once the broker is back.

The stall is a real one: the worker's private broker is frozen (SIGSTOP)
while the worker is working through a backlog, so the agent waits for
acknowledgements that do not come. The backlog is published before the worker
starts, so every fetch the worker makes shows it: the input lag it knows of
stays above 0 for as long as the broker is frozen. A stall with the broker
answering (the process itself stuck): tests/web/test_health.py."""

from __future__ import annotations

import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.dev.kafka import LocalKafka
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import produce_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STALL_TIMEOUT_SECS = 5
UNREACHABLE_SECS = 3
#: Enough for several seconds of work, so the broker is frozen mid-backlog.
SESSIONS, ROUNDS = 3000, 6


def worker_metric(worker: WorkerProcess, name: str) -> float:
    """A metric of the worker, summed over its labels."""
    status, text = worker.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == name for sample in family.samples)


def input_lag(worker: WorkerProcess) -> float:
    return worker_metric(worker, "accountant_consumer_lag_records")


def test_a_frozen_broker_makes_the_worker_unready_not_dead_and_both_recover(private_kafka: LocalKafka,
                                                                           private_deployment: Deployment) -> None:
    deployment = private_deployment
    deployment.settings.update({
        "ACCOUNTANT_STALL_TIMEOUT_SECS": str(STALL_TIMEOUT_SECS),
        "ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS": str(UNREACHABLE_SECS),
        # Longer than the freeze: the group keeps the worker, so the stall ends
        # where it began (an eviction and a rebalance would end it too).
        "ACCOUNTANT_SESSION_TIMEOUT_SECS": "60",
    })
    deployment.create_topics()
    produce_events(deployment.bootstrap, deployment.events_topic,
                   [item for number in range(SESSIONS)
                    for item in session_events(f"s-{number}", [10] * ROUNDS)])
    worker = deployment.worker().start().wait_ready()
    wait_for("the worker to see its backlog", lambda: worker.check_alive() or input_lag(worker) > 0,
             timeout=60, interval=0.05)

    broker = private_kafka.process
    assert broker is not None
    broker.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        _, body = wait_for("/readyz to answer 503", lambda: (answer := worker.get("/readyz"))[0] == 503 and answer,
                           timeout=60, interval=0.2, observed=lambda: worker.get("/readyz"))
        assert isinstance(body, dict) and body["status"] == "broker_unreachable", body
        # Past the stall timeout, twice over: alive all along.
        health = []
        while time.monotonic() - frozen_at < 2 * STALL_TIMEOUT_SECS + 1:
            health.append(worker.get("/healthz"))
            time.sleep(0.5)
        assert all(answer == (200, {"status": "ok"}) for answer in health), health
        assert float(worker_metric(worker, "accountant_agent_stalled_seconds")) > STALL_TIMEOUT_SECS
        assert input_lag(worker) > 0
    finally:
        broker.send_signal(signal.SIGCONT)

    wait_for("the backlog to be accounted", deployment.committed_to_end, timeout=180, interval=0.5,
             observed=lambda: worker.get("/healthz"))
    wait_for("/readyz to answer 200 again", lambda: worker.get("/readyz")[0] == 200, timeout=30,
             observed=lambda: worker.get("/readyz"))
    assert worker.get("/healthz") == (200, {"status": "ok"})
    worker.check_alive()
