"""The billing ledger (`accountant ledger`, app/ledger) under faults.

Simulator runs against a real worker, with a ledger writing the closures into
a real PostgreSQL: `finish` checks the worker's outputs with the fault oracle
as every fault test does, then the ledger against the same oracle once it
caught up: one row per closed session with the oracle's figures, per-tenant
token sums equal, lost = 0, double-billed = 0, and no conflict but the
expected ones. The faults: kill -9 of the ledger mid-batch, PostgreSQL stopped
for 10 s under load, every closure delivered 2-3 times, a closure re-sent with
a changed total (test_kill_worker.py runs a ledger through its worker kills).

Two more tests drive ledgers alone, with hand-made closures: rebalances in a
group of ledgers under load, and a batch fenced after its partitions moved.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from app.dev.postgres import LocalPostgres
from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from app.ledger.postgres_store import APPLICATION_NAME
from app.rules import SECOND, format_timestamp, parse_timestamp
from tests.faults.harness import Timeline, finish, publish_piece
from tests.ledger.test_ledger_service import assert_exact
from tests.support.closures import ClosureSet
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, simulated, split_points
from tests.support.ledger_processes import LedgerDeployment, LedgerProcess, resend_closures
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]

OUTAGE_SECS = 10.0

_BLOCKED_ON_LOCKS = f"""
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}' AND wait_event_type = 'Lock'
"""


def assert_every_record_accounted_once(ledgers: LedgerDeployment) -> None:
    """The stored offsets count exactly the records the database accounts for: batches are atomic."""
    offsets, records = ledgers.offsets_and_records()
    assert offsets == records, f"stored offsets cover {offsets} records, the database accounts for {records}"


def emitted_later(closure: dict[str, Any], seconds: int) -> dict[str, Any]:
    """The same closure sent again `seconds` later (all of it the same but emitted_at)."""
    return {**closure, "emitted_at": format_timestamp(parse_timestamp(closure["emitted_at"]) + seconds * SECOND)}


# --------------------------------------------------------------------------
# Simulator runs: a worker and a ledger, checked with the oracle


def start_worker_and_ledger(deployment: Deployment, billing: LedgerDeployment,
                            timeline: Timeline) -> tuple[WorkerProcess, LedgerProcess]:
    deployment.create_topics()
    worker = deployment.worker().start().wait_ready()
    writer = billing.ledger().start().wait_ready()
    timeline("ready")
    return worker, writer


def test_ledger_killed_mid_batch_twice_under_load(deployment: Deployment, deployment_ledger: LedgerDeployment,
                                                  fault_figures: Callable[[dict], None]) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=3000, rounds=4, seed=7014, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second = pieces(events, split_points(events, simulation, (0.5,)))
    billing = deployment_ledger
    # Small transactions, many of them: a kill lands inside one, past others.
    billing.settings["ACCOUNTANT_LEDGER_BATCH_MAX_RECORDS"] = "200"
    deployment.create_topics()
    worker = deployment.worker().start().wait_ready()
    billing.ledger("ledger-1").start().wait_ready()
    timeline("ready")

    # Each kill while the worker pours out closures and the ledger writes them.
    publish_piece(deployment, first, stamper)
    rows_at_kills = [billing.kill_mid_batch(billing.started[-1])]
    timeline("ledger-1 killed")
    assert_every_record_accounted_once(billing)
    billing.ledger("ledger-2").start().wait_ready()
    publish_piece(deployment, second, stamper)
    rows_at_kills.append(billing.kill_mid_batch(billing.started[-1], past_rows=rows_at_kills[0]))
    timeline("ledger-2 killed")
    assert_every_record_accounted_once(billing)
    assert rows_at_kills[-1] < simulation.expected.sessions, "the ledger had written everything before the kill"

    billing.ledger("ledger-3").start()
    finish(deployment, ledger, simulation, faults=2, report=fault_figures, stats_from=worker, exact_stats=True,
           timeline=timeline, billing=billing,
           extra={"ledger_kills": 2, "ledger_rows_at_kills": "+".join(map(str, rows_at_kills))})
    assert_every_record_accounted_once(billing)


def test_postgres_down_for_10_s_under_load(deployment: Deployment, private_postgres: LocalPostgres,
                                           private_postgres_ledger: LedgerDeployment,
                                           fault_figures: Callable[[dict], None]) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=2000, rounds=5, seed=8008, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    first, second, third = pieces(events, split_points(events, simulation, (0.3, 0.65)))
    billing = private_postgres_ledger
    worker, writer = start_worker_and_ledger(deployment, billing, timeline)
    pid = writer.pid

    publish_piece(deployment, first, stamper)
    wait_for("the ledger to write", lambda: billing.rows() > 0, timeout=60)
    private_postgres.stop()
    stopped = time.monotonic()
    timeline("PostgreSQL stopped")
    # The load goes on: the worker publishes the closures of this piece while the database is away.
    publish_piece(deployment, second, stamper)
    health, database_up = [], []
    while time.monotonic() - stopped < OUTAGE_SECS:
        writer.check_alive()
        health.append(writer.get("/healthz")[0])
        database_up.append(writer.metric("accountant_ledger_database_up"))
        time.sleep(0.5)
    private_postgres.start()
    outage = time.monotonic() - stopped
    timeline("PostgreSQL started")

    publish_piece(deployment, third, stamper)
    timeline("published")
    finish(deployment, ledger, simulation, faults=1, report=fault_figures, stats_from=worker, exact_stats=True,
           timeline=timeline, billing=billing,
           extra={"outage_secs": round(outage, 1),
                  "database_retries": writer.metric("accountant_ledger_database_retries_total")})
    assert writer.pid == pid and set(health) == {200}, f"/healthz during the outage: {sorted(set(health))}"
    assert 0.0 in database_up, "the ledger never noticed the database was down"
    assert writer.metric("accountant_ledger_database_retries_total") > 0
    writer.wait_metric("accountant_ledger_database_up", 1)
    assert_every_record_accounted_once(billing)


def test_every_closure_delivered_two_or_three_times(deployment: Deployment, deployment_ledger: LedgerDeployment,
                                                    fault_figures: Callable[[dict], None]) -> None:
    """Each closure the worker publishes is followed, on its partition, by one or
    two copies that differ only in `emitted_at` (a replay's copies do): the
    ledger counts them as repeats and bills the session once."""
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=1000, rounds=5, seed=9011, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    billing = deployment_ledger
    worker, writer = start_worker_and_ledger(deployment, billing, timeline)

    publish_piece(deployment, list(simulation.events()), stamper)
    chance = random.Random(9011)
    injected = resend_closures(deployment.bootstrap, deployment.closures_topic, ledger.closures,
                               lambda closure: [emitted_later(closure, 7 * n)
                                                for n in range(1, chance.choice((2, 3)))])
    timeline("copies sent")
    verdict = finish(deployment, ledger, simulation, faults=len(injected), report=fault_figures,
                     stats_from=worker, exact_stats=True, timeline=timeline, billing=billing, injected=injected,
                     extra={"closure_copies": len(injected)})
    repeats = len(injected) + len(verdict.outputs.closures) - simulation.expected.sessions
    assert verdict.figures["ledger_duplicates"] == repeats
    writer.wait_metric("accountant_ledger_duplicates_total", repeats)
    assert writer.metric("accountant_ledger_conflicts_total") == 0
    assert_every_record_accounted_once(billing)


def test_a_closure_resent_with_a_changed_total_lands_in_conflicts(
        deployment: Deployment, deployment_ledger: LedgerDeployment, fault_figures: Callable[[dict], None]) -> None:
    """Every 25th closure is followed by a copy whose total is 1,000 tokens more:
    the stored row stands (the oracle's total), the copy goes to
    closure_conflicts, and the metric and the log raise the alarm."""
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=600, rounds=5, seed=10012, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    billing = deployment_ledger
    worker, writer = start_worker_and_ledger(deployment, billing, timeline)

    publish_piece(deployment, list(simulation.events()), stamper)
    changed = sorted(ledger.closures)[::25]

    def more_tokens(closure: dict[str, Any]) -> list[dict[str, Any]]:
        record = {**closure["record"], "delta_token_count": closure["record"]["delta_token_count"] + 1000}
        return [{**emitted_later(closure, 5), "record": record,
                 "total_token_count": closure["total_token_count"] + 1000}]

    injected = resend_closures(deployment.bootstrap, deployment.closures_topic, changed, more_tokens)
    timeline("changed copies sent")
    finish(deployment, ledger, simulation, faults=len(injected), report=fault_figures, stats_from=worker,
           exact_stats=True, timeline=timeline, billing=billing, injected=injected, expected_conflicts=changed,
           extra={"changed_copies": len(injected)})
    writer.wait_metric("accountant_ledger_conflicts_total", len(changed))
    log = writer.log_tail(2000)
    assert all(f"CONFLICT: closure {closure_id!r}" in log for closure_id in changed)
    assert_every_record_accounted_once(billing)


# --------------------------------------------------------------------------
# Ledgers alone, with hand-made closures


def test_two_ledgers_in_one_group_with_rebalances(ledger_deployment: LedgerDeployment,
                                                  fault_figures: Callable[[dict], None]) -> None:
    """Ledgers join, crash and leave while closures keep coming: four rebalances under load."""
    deployment = ledger_deployment
    population = ClosureSet(30_000, seed=61)
    chunks = [population.closures[start:start + 500] for start in range(0, len(population.closures), 500)]
    publishing_done = threading.Event()

    def publish_steadily() -> None:
        try:
            for chunk in chunks:
                deployment.publish_closures(chunk)
                publishing_done.wait(0.3)  # paces the load so that it spans the rebalances
        finally:
            publishing_done.set()

    first = deployment.ledger("ledger-a").start().wait_ready()
    publisher = threading.Thread(target=publish_steadily, name="publisher")
    publisher.start()
    try:
        wait_for("ledger-a to write", lambda: first.metric("accountant_ledger_closures_written_total") > 0, 60)
        second = deployment.ledger("ledger-b").start().wait_ready()  # joins: a rebalance under load
        wait_for("ledger-b to share the work",
                 lambda: second.metric("accountant_ledger_closures_written_total") > 0, 60)
        first.kill()  # a crash: its partitions move on after the session timeout
        third = deployment.ledger("ledger-c").start().wait_ready()  # and another rebalance
        wait_for("ledger-c to share the work",
                 lambda: third.metric("accountant_ledger_closures_written_total") > 0, 60)
        fenced = second.metric("accountant_ledger_fenced_partitions_total")
        second.stop()  # a graceful leave: one more
    finally:
        publisher.join()
    deployment.wait_caught_up(alive=[third])
    fenced += third.metric("accountant_ledger_fenced_partitions_total")

    stored = assert_exact(deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    assert_every_record_accounted_once(deployment)
    fault_figures({"closures": len(population.closures), "lost": 0, "double_billed": 0,
                   "fenced_partitions": fenced})


def test_a_batch_in_flight_for_a_revoked_partition_is_fenced(ledger_deployment: LedgerDeployment,
                                                            fault_figures: Callable[[dict], None]) -> None:
    """Ledger A is frozen (SIGSTOP) in the middle of writing a batch, its
    transaction open and its offset rows locked. It stops heartbeating, the
    group evicts it, and ledger B takes every partition, reads them from the
    offsets the database held before A's batch, and writes too: B's write waits
    for A's locks. A thaws (SIGCONT) and commits; B finds other offsets than it
    expected, leaves those partitions out (fenced) and reads on from there.
    Nothing is lost or doubled."""
    deployment = ledger_deployment
    population = ClosureSet(40_000, seed=71)
    deployment.publish_closures(population.closures)
    first = deployment.ledger("ledger-a").start()
    deployment.freeze_mid_batch(first)
    try:
        assert deployment.rows() < len(population.closures), "ledger-a finished before it could be frozen"
        # Not waited ready: B is ready once it has read the stored offsets,
        # and A's frozen transaction holds their rows (B's reads give up after
        # the lock timeout and retry, as they would against a stuck writer).
        second = deployment.ledger("ledger-b").start()
        with psycopg.connect(deployment.dsn, autocommit=True) as watcher:
            wait_for("ledger-b to wait for ledger-a's locks",
                     lambda: watcher.execute(_BLOCKED_ON_LOCKS).fetchone()[0] == 1, 90)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    deployment.wait_caught_up(alive=[first, second])

    stored = assert_exact(deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    assert_every_record_accounted_once(deployment)
    wait_for("ledger-b to fence its batch for the partitions ledger-a wrote",
             lambda: second.metric("accountant_ledger_fenced_partitions_total") >= 1, 30)
    fenced = second.metric("accountant_ledger_fenced_partitions_total")
    fault_figures({"closures": len(population.closures), "fenced_partitions": fenced, "lost": 0,
                   "double_billed": 0})
