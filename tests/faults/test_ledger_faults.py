"""The ledger under faults: every closure exactly once in the database, whatever happens.

Each test checks the ledger against the closures it published: one row per
closure_id, per-tenant token sums equal, no duplicate counted unless one was
sent (an over-count would reveal a batch written twice), and no conflicts.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from app.dev.postgres import LocalPostgres
from app.ledger.postgres_store import APPLICATION_NAME
from tests.ledger.test_ledger_service import assert_exact
from tests.support.closures import ClosureSet, rfc3339
from tests.support.ledger_processes import LedgerDeployment

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]

#: A transaction of the ledger is open and has gone past locking its offsets: a batch is being written.
_WRITING_A_BATCH = f"""
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}' AND xact_start IS NOT NULL
  AND (query LIKE '%FOR UPDATE%' OR query LIKE 'SELECT closure_id, content_sha256%' OR query LIKE 'COPY closures%'
       OR query LIKE '%UPDATE closures%' OR query LIKE '%UPDATE ledger_offsets%')
"""
_ROLLED_BACK = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
_BLOCKED_ON_LOCKS = f"""
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}' AND wait_event_type = 'Lock'
"""


def wait_until(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(poll)


def _rows(connection: psycopg.Connection) -> int:
    try:
        return connection.execute("SELECT count(*) FROM closures").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def assert_offsets_match_rows(deployment: LedgerDeployment) -> None:
    """With valid closures sent once each, the stored offsets count exactly the rows: atomicity."""
    [(offsets, rows)] = deployment.query(
        "SELECT (SELECT coalesce(sum(next_offset), 0) FROM ledger_offsets WHERE consumer_group = %s), "
        "(SELECT count(*) FROM closures)", (deployment.group,))
    assert offsets == rows, f"stored offsets cover {offsets} records but {rows} rows are stored"


def test_kill_9_mid_batch_then_restart(ledger_deployment: LedgerDeployment,
                                        fault_figures: Callable[[dict], None]) -> None:
    population = ClosureSet(40_000, seed=31)
    ledger_deployment.publish_closures(population.closures)
    rows_at_kills = []
    for attempt in range(2):
        ledger = ledger_deployment.ledger(f"ledger-{attempt}").start()
        with psycopg.connect(ledger_deployment.dsn, autocommit=True) as watcher:
            # Past a committed batch of its own, so the restart resumes mid-partition.
            before = rows_at_kills[-1] if rows_at_kills else 0
            wait_until(lambda before=before: _rows(watcher) > before, 120, "writing")
            rolled_back = watcher.execute(_ROLLED_BACK).fetchone()[0]
            wait_until(lambda: watcher.execute(_WRITING_A_BATCH).fetchone()[0] > 0, 120, "writing a batch",
                       poll=0.002)
            ledger.kill()
            # The server rolls back the transaction the kill left open: the kill was mid-batch.
            wait_until(lambda rolled_back=rolled_back: watcher.execute(_ROLLED_BACK).fetchone()[0] > rolled_back, 30,
                       "rolling back the killed ledger's transaction")
        [(rows,)] = ledger_deployment.query("SELECT count(*) FROM closures")
        rows_at_kills.append(rows)
        assert rows < len(population.closures), "the ledger had finished before the kill"
        assert_offsets_match_rows(ledger_deployment)
    ledger = ledger_deployment.ledger("ledger-final").start()
    ledger_deployment.wait_caught_up(alive=[ledger])

    stored = assert_exact(ledger_deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    assert_offsets_match_rows(ledger_deployment)
    fault_figures({"closures": len(population.closures), "rows_at_kills": rows_at_kills, "lost": 0,
                   "double_billed": 0})


def test_postgres_down_for_10_s_under_load(kafka_bootstrap: str, private_postgres: LocalPostgres, tmp_path: Path,
                                           unique_name: Callable[[str], str],
                                           fault_figures: Callable[[dict], None]) -> None:
    with psycopg.connect(private_postgres.dsn, autocommit=True) as connection:
        connection.execute("CREATE DATABASE ledger")
    dsn = psycopg.conninfo.make_conninfo(private_postgres.dsn, dbname="ledger")
    deployment = LedgerDeployment(kafka_bootstrap, dsn, unique_name("t") + ".", unique_name("ledger"), tmp_path)
    deployment.create_topic()
    population = ClosureSet(24_000, seed=41)
    chunks = [population.closures[start:start + 2000] for start in range(0, len(population.closures), 2000)]
    try:
        ledger = deployment.ledger().start().wait_ready()
        pid = ledger.process.pid
        deployment.publish_closures(chunks[0] + chunks[1])
        wait_until(lambda: deployment.query("SELECT count(*) FROM closures")[0][0] > 0, 60, "writing")
        private_postgres.stop()
        stopped = time.monotonic()
        health, database_up, published = [], [], 2
        while time.monotonic() - stopped < 10:
            if published < len(chunks) - 2:  # the load goes on while the database is away
                deployment.publish_closures(chunks[published])
                published += 1
            health.append(ledger.get("/healthz")[0])
            database_up.append(ledger.metric("accountant_ledger_database_up"))
            ledger.check_alive()
            time.sleep(0.2)
        private_postgres.start()
        outage = time.monotonic() - stopped
        for chunk in chunks[published:]:
            deployment.publish_closures(chunk)
        deployment.wait_caught_up(alive=[ledger])

        assert ledger.process.pid == pid and set(health) == {200}
        assert 0.0 in database_up, "the ledger never noticed the database was down"
        retries = ledger.metric("accountant_ledger_database_retries_total")
        assert retries > 0
        stored = assert_exact(deployment, population)
        assert sum(row["duplicates"] for row in stored) == 0
        ledger.wait_metric("accountant_ledger_database_up", 1)
        fault_figures({"closures": len(population.closures), "outage_secs": round(outage, 1),
                       "database_retries": retries, "lost": 0, "double_billed": 0})
    finally:
        deployment.stop_all()


def test_every_closure_delivered_two_or_three_times(ledger_deployment: LedgerDeployment,
                                                    fault_figures: Callable[[dict], None]) -> None:
    population = ClosureSet(5000, seed=51)
    rng = random.Random(51)
    deliveries = []
    for item in population.closures:
        for copy_number in range(rng.choice([2, 3])):
            emitted = datetime.fromisoformat(item["emitted_at"].replace("Z", "+00:00"))
            deliveries.append(dict(item, emitted_at=rfc3339(emitted + timedelta(seconds=7 * copy_number))))
    rng.shuffle(deliveries)
    # Half before the ledger starts, half while it runs.
    ledger_deployment.publish_closures(deliveries[: len(deliveries) // 2])
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.publish_closures(deliveries[len(deliveries) // 2:])
    ledger_deployment.wait_caught_up(alive=[ledger])

    stored = assert_exact(ledger_deployment, population)
    repeats = len(deliveries) - len(population.closures)
    assert sum(row["duplicates"] for row in stored) == repeats
    ledger.wait_metric("accountant_ledger_duplicates_total", repeats)
    assert ledger.metric("accountant_ledger_conflicts_total") == 0
    assert ledger_deployment.query("SELECT count(*) FROM closure_conflicts") == [(0,)]
    fault_figures({"closures": len(population.closures), "deliveries": len(deliveries), "duplicates": repeats,
                   "lost": 0, "double_billed": 0})


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
        wait_until(lambda: first.metric("accountant_ledger_closures_written_total") > 0, 60, "writing")
        second = deployment.ledger("ledger-b").start().wait_ready()  # joins: a rebalance under load
        wait_until(lambda: second.metric("accountant_ledger_closures_written_total") > 0, 60, "sharing the work")
        first.kill()  # a crash: its partitions move on after the session timeout
        third = deployment.ledger("ledger-c").start().wait_ready()  # and another rebalance
        wait_until(lambda: third.metric("accountant_ledger_closures_written_total") > 0, 60, "sharing the work")
        fenced = second.metric("accountant_ledger_fenced_partitions_total")
        second.stop()  # a graceful leave: one more
    finally:
        publisher.join()
    deployment.wait_caught_up(alive=[third])
    fenced += third.metric("accountant_ledger_fenced_partitions_total")

    stored = assert_exact(deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    assert_offsets_match_rows(deployment)
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
    frozen = False
    try:
        with psycopg.connect(deployment.dsn, autocommit=True) as watcher:
            while not frozen:
                assert _rows(watcher) < len(population.closures), "ledger-a finished before it could be frozen"
                wait_until(lambda: watcher.execute(_WRITING_A_BATCH).fetchone()[0] > 0, 120, "writing a batch",
                           poll=0.002)
                os.kill(first.process.pid, signal.SIGSTOP)
                # Frozen with the transaction open? (It may have committed just before.)
                if watcher.execute(_WRITING_A_BATCH).fetchone()[0] > 0:
                    frozen = True
                else:
                    os.kill(first.process.pid, signal.SIGCONT)
            second = deployment.ledger("ledger-b").start().wait_ready(timeout=90)
            wait_until(lambda: watcher.execute(_BLOCKED_ON_LOCKS).fetchone()[0] == 1, 90,
                       "ledger-b waiting for ledger-a's locks")
    finally:
        if frozen:
            os.kill(first.process.pid, signal.SIGCONT)
    deployment.wait_caught_up(alive=[first, second])

    stored = assert_exact(deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    assert_offsets_match_rows(deployment)
    wait_until(lambda: second.metric("accountant_ledger_fenced_partitions_total") >= 1, 30,
               "fencing ledger-b's batch for the partitions ledger-a wrote")
    fenced = second.metric("accountant_ledger_fenced_partitions_total")
    fault_figures({"closures": len(population.closures), "fenced_partitions": fenced, "lost": 0,
                   "double_billed": 0})
