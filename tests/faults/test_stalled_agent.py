"""Liveness means it: a worker whose agent has input waiting and cannot make
progress answers /healthz 503 once ACCOUNTANT_STALL_TIMEOUT_SECS has passed,
while its web server keeps answering; and 200 again once it moves.

The stall is a real one: the worker's private broker is frozen (SIGSTOP)
while the worker is working through a backlog, so the agent waits for
acknowledgements that do not come. The backlog is published before the worker
starts, so every fetch the worker makes shows it: the input lag it knows of
stays above 0 for as long as the broker is frozen."""

from __future__ import annotations

import signal

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
#: Enough for several seconds of work, so the broker is frozen mid-backlog.
SESSIONS, ROUNDS = 3000, 6


def input_lag(worker: WorkerProcess) -> float:
    """accountant_consumer_lag_records summed over the partitions."""
    status, text = worker.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "accountant_consumer_lag_records" for sample in family.samples)


def test_a_stalled_agent_fails_healthz_and_recovers(private_kafka: LocalKafka,
                                                    private_deployment: Deployment) -> None:
    deployment = private_deployment
    deployment.settings.update({
        "ACCOUNTANT_STALL_TIMEOUT_SECS": str(STALL_TIMEOUT_SECS),
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
    try:
        _, body = wait_for("/healthz to answer 503",
                           lambda: (answer := worker.get("/healthz"))[0] == 503 and answer,
                           timeout=60, interval=0.2, observed=lambda: worker.get("/healthz"))
        assert isinstance(body, dict) and body["status"] == "stalled", body
        assert body["stalled_seconds"] > STALL_TIMEOUT_SECS and body["stall_timeout_secs"] == STALL_TIMEOUT_SECS
        # Stalled, not gone: the web server answers, and the worker is still ready.
        assert worker.get("/readyz") == (200, {"ready": True})
        assert input_lag(worker) > 0
    finally:
        broker.send_signal(signal.SIGCONT)

    wait_for("the backlog to be accounted", deployment.committed_to_end, timeout=180, interval=0.5,
             observed=lambda: worker.get("/healthz"))
    wait_for("/healthz to answer 200 again", lambda: worker.get("/healthz")[0] == 200, timeout=30,
             observed=lambda: worker.get("/healthz"))
    worker.check_alive()
