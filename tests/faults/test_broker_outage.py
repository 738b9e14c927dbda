"""Fault 3: the broker stops for 10 s under load and starts again (same port,
same data); the worker rides it out in the same process and finishes.

On a broker of the test's own (`private_kafka`): the session's shared broker
is never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from app.dev.kafka import LocalKafka
from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from tests.faults.harness import Timeline, finish, publish_piece, wait_applied
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, simulated, split_points

pytestmark = [pytest.mark.faults, pytest.mark.integration]

OUTAGE_SECS = 10.0


def test_broker_down_for_10_s_under_load(private_kafka: LocalKafka, private_deployment: Deployment,
                                         fault_figures: Callable[[dict], None], guarantee: str) -> None:
    deployment = private_deployment
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=1500, rounds=6, seed=3003, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second = pieces(events, split_points(events, simulation, (0.6,)))
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()

    worker = deployment.worker("worker").start().wait_ready()
    pid = worker.process.pid
    timeline("ready")
    publish_piece(deployment, first, stamper)
    applied_at_stop = wait_applied(worker, ledger.applied // 4)
    private_kafka.stop()
    stopped = time.monotonic()
    timeline("broker stopped")
    assert applied_at_stop < ledger.applied, "the worker was not under load when the broker stopped"

    # The worker stays up while the broker is gone: same process, alive.
    health = []
    while time.monotonic() - stopped < OUTAGE_SECS:
        health.append(worker.get("/healthz")[0])
        assert worker.process.poll() is None, f"the worker exited during the outage:\n{worker.log_tail()}"
        time.sleep(0.5)
    assert set(health) == {200}, f"/healthz during the outage: {sorted(set(health))}"
    private_kafka.start()
    outage = time.monotonic() - stopped
    timeline("broker started")

    publish_piece(deployment, second, stamper)
    timeline("published")
    finish(deployment, ledger, simulation, faults=1, report=fault_figures, stats_from=worker, exact_stats=True,
           timeline=timeline, extra={"outage_secs": round(outage, 1), "applied_at_stop": applied_at_stop})
    assert worker.process.poll() is None and worker.process.pid == pid
    assert worker.get("/healthz")[0] == 200
