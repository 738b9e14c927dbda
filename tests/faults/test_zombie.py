"""A zombie: a worker frozen with an open transaction, evicted from the group
while a successor takes its partitions, then thawed.

exactly_once promises that a worker which lost a partition can no longer
write that partition's changelog or outputs (docs/guarantees.md). The
zombie here holds a transaction open for 60 s (its commit interval), so it
is frozen with uncommitted closures and changelog records in flight. Its
successor's fence aborts that transaction; once thawed, the zombie's next
write or commit is refused (ProducerFenced) and it stops. Then the successor
is killed and a third worker recovers the table from the changelog: had any
stale state of the zombie landed there, the sessions closed after that would
bill wrong. The oracle checks every closure and the ledger, and no closure
may reach billing twice. Budgets are set for every tenant: each tenant's
month must equal the oracle's, and every expected alert exist once.

At-least-once has no such fence (its writes are retried for up to
RETRY_FOR_SECS, with nothing to tell them stale); docs/guarantees.md says so.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from app.rules.usage import period_of
from tests.faults.harness import Timeline, finish, publish_piece, wait_applied
from tests.support.budgets import alerts_by_id, expected_alerts, limits_under, month_tokens, put_budget
from tests.support.clock import now_micros
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, simulated, split_points
from tests.support.ledger_processes import LedgerDeployment
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]


def test_a_thawed_zombie_is_fenced_and_writes_nothing(deployment: Deployment, deployment_ledger: LedgerDeployment,
                                                      fault_figures: Callable[[dict], None]) -> None:
    timeline = Timeline()
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = "exactly_once"
    simulation = Simulation(SimulationConfig(sessions=1500, rounds=6, seed=6006, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second, third = pieces(events, split_points(events, simulation, (0.4, 0.7)))
    deployment.create_topics()
    deployment_ledger.ledger().start().wait_ready()

    zombie = deployment.worker("zombie", ACCOUNTANT_TRANSACTION_COMMIT_INTERVAL_SECS="60").start().wait_ready()
    expected = month_tokens(simulation)
    limits = limits_under(expected)
    for tenant_id, limit in limits.items():
        put_budget(zombie, tenant_id, limit)
    timeline("zombie ready, budgets set")
    publish_piece(deployment, first, stamper)
    wait_applied(zombie, ledger.applied // 4)
    os.kill(zombie.pid, signal.SIGSTOP)  # frozen with its transactions open
    timeline("zombie frozen")

    successor = deployment.worker("successor").start().wait_ready()
    wait_for("the successor to own every partition",
             lambda: successor.owned_partitions() == frozenset(range(deployment.partitions)), timeout=60)
    timeline("successor owns all")
    publish_piece(deployment, second, stamper)
    wait_applied(successor, 1)

    os.kill(zombie.pid, signal.SIGCONT)
    timeline("zombie thawed")
    process = zombie.process
    assert process is not None
    wait_for("the thawed zombie to stop, fenced", lambda: process.poll() is not None, timeout=90,
             observed=zombie.log_tail)
    zombie_log = zombie.log_path.read_text(errors="replace")
    assert "ProducerFenced" in zombie_log or "fenced" in zombie_log.lower(), zombie.log_tail()
    assert process.returncode != 0, "a fenced worker must exit non-zero"
    timeline("zombie stopped")

    # The successor dies; a third worker recovers from the changelog alone.
    time.sleep(1.0)
    successor.kill()
    last = deployment.worker("last").start().wait_ready()
    timeline("last ready")
    publish_piece(deployment, third, stamper)
    finish(deployment, ledger, simulation, faults=3, report=fault_figures, stats_from=last, timeline=timeline,
           billing=deployment_ledger, extra={"zombie_exit": process.returncode})

    # Budgets: each tenant's month as the oracle sums it, and every alert once.
    period = period_of(now_micros())
    for tenant_id, tokens in expected.items():
        wait_for(f"{tenant_id}'s usage to equal the oracle's",
                 lambda tenant_id=tenant_id, tokens=tokens: last.get(f"/tenants/{tenant_id}/usage")[1].get(
                     "usage_tokens") == tokens, timeout=60, observed=lambda: last.get("/tenants")[1])
    by_id = alerts_by_id(deployment.bootstrap, deployment.config.alerts_topic,
                         expected_alerts(expected, limits, period))
    repeated = {alert_id: len(copies) for alert_id, copies in by_id.items() if len(copies) != 1}
    assert not repeated, repeated
