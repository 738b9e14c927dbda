"""Fault 1: the worker is killed with SIGKILL under load, restarted, and finishes.

Two crashes: the first while the worker works through a backlog it is being
fed, the second while its successor is still catching up after recovering
the table. Neither may lose a token or bill one twice: not on the closures
topic, and not in the billing ledger (`accountant ledger` runs throughout and
must hold one row per session however often a replay repeats a closure).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from tests.faults.harness import Timeline, finish, publish_piece, wait_applied
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, simulated, split_points
from tests.support.ledger_processes import LedgerDeployment

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]


def test_kill_9_under_load_then_restart(deployment: Deployment, deployment_ledger: LedgerDeployment,
                                        fault_figures: Callable[[dict], None], guarantee: str) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=3000, seed=1001, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second, third = pieces(events, split_points(events, simulation, (0.45, 0.75)))
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()
    deployment_ledger.ledger().start().wait_ready()

    victim = deployment.worker("victim").start().wait_ready()
    timeline("ready")
    publish_piece(deployment, first, stamper)
    # Mid-stream: the worker is a third of the way through a backlog it was just fed.
    applied_at_first_kill = wait_applied(victim, ledger.applied // 3)
    victim.kill()
    timeline("kill 1")
    assert applied_at_first_kill < ledger.applied, "the worker was not under load when killed"

    publish_piece(deployment, second, stamper)  # arrives while no worker runs
    successor = deployment.worker("successor").start().wait_ready()
    timeline("successor ready")
    # Killed again while catching up on the backlog after its recovery.
    applied_at_second_kill = wait_applied(successor, 500)
    backlog_left = successor.stats(local=True)
    successor.kill()
    timeline("kill 2")

    last = deployment.worker("last").start().wait_ready()
    timeline("last ready")
    publish_piece(deployment, third, stamper)  # the last piece, while the restarted worker processes
    timeline("published")
    finish(deployment, ledger, simulation, faults=2, report=fault_figures, stats_from=last, timeline=timeline,
           billing=deployment_ledger,
           extra={"kills": 2, "applied_at_kills": f"{applied_at_first_kill}+{applied_at_second_kill}",
                  "redelivered_before_second_kill": backlog_left["redelivered"]})
