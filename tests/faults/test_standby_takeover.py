"""Fault 2: two workers with standby replicas; one is killed, the other takes
over its partitions; the killed one comes back and the group rebalances again.

`table_standby_replicas=1` with the RocksDB store (app/service.py): each worker keeps a standby copy
of the other's table partitions, so the takeover need not replay the whole
changelog.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from tests.faults.harness import PARTITIONS, Timeline, finish, publish_piece, wait_applied
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, simulated, split_points
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ALL = frozenset(range(PARTITIONS))


def test_standby_takes_over_a_killed_worker_and_hands_back(deployment: Deployment,
                                                           fault_figures: Callable[[dict], None],
                                                           guarantee: str) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=2000, rounds=6, seed=2002, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second, third = pieces(events, split_points(events, simulation, (0.35, 0.7)))
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()

    a = deployment.worker("a").start()
    b = deployment.worker("b").start()
    a.wait_ready()
    b.wait_ready()
    wait_for("the two workers to share the partitions",
             lambda: a.owned_partitions() and b.owned_partitions()
             and a.owned_partitions() | b.owned_partitions() == ALL,
             timeout=90)
    a_partitions = a.owned_partitions()
    timeline("both ready")

    publish_piece(deployment, first, stamper)
    wait_applied(a, 300)  # a is busy with its share of the stream
    a.kill()
    timeline("a killed")

    # b takes over every partition (after the session timeout evicts a) ...
    wait_for("b to own every partition", lambda: b.owned_partitions() == ALL, timeout=60, interval=0.2)
    timeline("b owns all")
    publish_piece(deployment, second, stamper)
    # ... and processes everything published so far, a's former partitions included.
    wait_for("b to commit every partition to its end", deployment.committed_to_end, timeout=90,
             interval=0.5)
    timeline(f"b processed all (a had {sorted(a_partitions)})")

    again = deployment.worker("a-again").start().wait_ready()
    wait_for("a rebalance that gives the returning worker partitions back",
             lambda: again.owned_partitions() and b.owned_partitions() != ALL
             and again.owned_partitions() | b.owned_partitions() == ALL, timeout=60, interval=0.2)
    timeline("rebalanced")
    publish_piece(deployment, third, stamper)
    wait_applied(again, 1)  # the returning worker processes its share again
    timeline("published")
    finish(deployment, ledger, simulation, faults=2, report=fault_figures, stats_from=b, timeline=timeline,
           extra={"kills": 1, "rebalances": 2,
                  "partitions_after": f"{sorted(again.owned_partitions())}|{sorted(b.owned_partitions())}"})
