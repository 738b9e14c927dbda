"""`accountant ledger` never waits unseen and never skips unseen (real broker,
real PostgreSQL, the ledger as a subprocess): a held lock turns /healthz 503;
closures deleted before they were written, or a recreated topic, stop their
partition until a person accepts the gap; a database that cannot be used
stops the process with one line naming the setting. Every test checks the
money against the closures sent (the oracle), per tenant."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.dev.processes import pick_free_loopback_port
from app.ledger.read import read_usage_by_tenant
from tests.support import REPO
from tests.support.closures import ClosureSet
from tests.support.kafka import produce
from tests.support.ledger_processes import LEDGER_COMMAND, LedgerDeployment, LedgerProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def publish_round_robin(deployment: LedgerDeployment, population: ClosureSet) -> dict[int, list[dict]]:
    """Closure i to partition i % partitions, in order: partition -> its closures, by offset."""
    placed: dict[int, list[dict]] = {number: [] for number in range(deployment.partitions)}
    for index, item in enumerate(population.closures):
        placed[index % deployment.partitions].append(item)
    order = {item["closure_id"]: index for index, item in enumerate(population.closures)}
    asyncio.run(produce(deployment.bootstrap, deployment.topic,
                        ((item["closure_id"].encode(), orjson.dumps(item)) for item in population.closures),
                        partition_of=lambda key: order[key.decode()] % deployment.partitions))
    return placed


def totals(closures: list[dict]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for item in closures:
        sums[item["record"]["tenant_id"]] = sums.get(item["record"]["tenant_id"], 0) + item["total_token_count"]
    return sums


def billed(deployment: LedgerDeployment) -> dict[str, int]:
    return {tenant: usage["total_token_count"] for tenant, usage in read_usage_by_tenant(deployment.dsn).items()}


def with_accepted_gap(process: LedgerProcess, flag: str) -> LedgerProcess:
    process.command = [*LEDGER_COMMAND, "--accept-gap", flag]
    return process


def test_a_lock_held_on_the_offsets_turns_healthz_503_and_the_ledger_catches_up_after(
        ledger_deployment: LedgerDeployment) -> None:
    first, second = ClosureSet(200, seed=31, prefix="a"), ClosureSet(200, seed=32, prefix="b")
    ledger_deployment.publish_closures(first.closures)
    ledger = ledger_deployment.ledger(ACCOUNTANT_LEDGER_STALL_TIMEOUT_SECS="3",
                                      ACCOUNTANT_LEDGER_LOCK_TIMEOUT_SECS="0.5").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])
    assert ledger.get("/healthz")[0] == 200

    with psycopg.connect(ledger_deployment.dsn) as holder:  # a billing query holding the offsets
        holder.execute("SELECT * FROM ledger_offsets FOR UPDATE")
        ledger_deployment.publish_closures(second.closures)
        wait_for("/healthz to answer 503", lambda: ledger.get("/healthz")[0] == 503, 60, interval=0.5,
                 observed=ledger.log_tail)
        body = ledger.get("/healthz")[1]
        assert body["healthy"] is False and body["stalled_secs"] >= 3
        # The lock waits time out and are retried, counted, and said in the log.
        assert ledger.metric("accountant_ledger_database_retries_total") > 0
        assert ledger.metric("accountant_ledger_stalled_seconds") >= 3
        assert "LockNotAvailable" in ledger.log_tail(200)
        assert billed(ledger_deployment) == totals(first.closures)
        holder.rollback()

    ledger_deployment.wait_caught_up(alive=[ledger])
    wait_for("/healthz to answer 200", lambda: ledger.get("/healthz")[0] == 200, 30, interval=0.3)
    assert billed(ledger_deployment) == totals(first.closures + second.closures)


def test_closures_deleted_before_they_were_written_stop_their_partition_until_the_gap_is_accepted(
        ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(80, seed=33)
    placed = publish_round_robin(ledger_deployment, population)

    async def delete_first_records() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=ledger_deployment.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(ledger_deployment.topic, 0): RecordsToDelete(5)})
        finally:
            await admin.close()

    asyncio.run(delete_first_records())  # retention, before any ledger ran
    ledger = ledger_deployment.ledger("ledger-1").start().wait_ready()
    reachable = [item for number, items in placed.items() for item in (items[5:] if number == 0 else items)]
    others = [item for number, items in placed.items() if number != 0 for item in items]
    wait_for("the other partitions to be billed", lambda: billed(ledger_deployment) == totals(others), 60,
             interval=0.5, observed=lambda: f"{billed(ledger_deployment)}\n{ledger.log_tail()}")
    wait_for("the gap metric", lambda: ledger.metric("accountant_ledger_gap_refused") == 1, 30)
    status, body = ledger.get("/healthz")
    # Listed, but no 503: a restart cannot close a gap (the metric's alert calls a person).
    assert status == 200 and body["gaps"] == ["0:0-5"]
    assert "GAP: partition 0 of" in ledger.log_tail(200) and "--accept-gap 0:0-5" in ledger.log_tail(200)
    assert ledger_deployment.query("SELECT count(*) FROM ledger_gaps") == [(0,)]
    # Nothing of partition 0 was written, and its stored offset did not move.
    assert billed(ledger_deployment) == totals(others)
    assert ledger_deployment.query("SELECT next_offset FROM ledger_offsets WHERE partition = 0") == [(None,)]
    ledger.stop()

    accepted = with_accepted_gap(ledger_deployment.ledger("ledger-2"), "0:0-5").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[accepted])
    assert billed(ledger_deployment) == totals(reachable)
    [(partition, from_offset, to_offset, kind, accepted_by)] = ledger_deployment.query(
        "SELECT partition, from_offset, to_offset, kind, accepted_by FROM ledger_gaps")
    assert (partition, from_offset, to_offset, kind) == (0, 0, 5, "deleted") and accepted_by
    assert accepted.metric("accountant_ledger_gap_refused") == 0
    assert accepted.metric("accountant_ledger_gaps_accepted_total") == 1
    assert accepted.get("/healthz")[0] == 200


def test_a_stored_offset_past_the_partition_end_is_a_gap_too(ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(40, seed=34)
    ledger_deployment.publish_closures(population.closures)
    ledger = ledger_deployment.ledger("ledger-1").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])
    ledger.stop()
    # As if the topic had been recreated: the database holds an offset Kafka never reached.
    ledger_deployment.query("UPDATE ledger_offsets SET next_offset = 10000 WHERE partition = 1 RETURNING 1")

    again = ledger_deployment.ledger("ledger-2").start().wait_ready()
    wait_for("the gap metric", lambda: again.metric("accountant_ledger_gap_refused") == 1, 30,
             observed=again.log_tail)
    status, body = again.get("/healthz")
    assert status == 200 and body["gaps"] == ["1:10000-0"]
    assert "lies past the partition's end" in again.log_tail(200)
    again.stop()

    # Accepted: the partition is read again from its start; repeats are counted, not billed twice.
    accepted = with_accepted_gap(ledger_deployment.ledger("ledger-3"), "1:10000-0").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[accepted])
    assert billed(ledger_deployment) == totals(population.closures)
    assert ledger_deployment.query("SELECT kind FROM ledger_gaps") == [("past_end",)]
    [(repeats,)] = ledger_deployment.query("SELECT sum(duplicates) FROM closures")
    assert repeats > 0


def _dsn_with(dsn: str, **changes: str) -> str:
    return make_conninfo("", **{**conninfo_to_dict(dsn), **changes})


@pytest.mark.parametrize("change, says", [
    ({"dbname": "no_such_database"}, 'database "no_such_database" does not exist'),
    ({"user": "no_such_role"}, 'role "no_such_role" does not exist'),
])
def test_a_database_that_cannot_be_used_stops_the_ledger_with_one_line_naming_the_setting(
        ledger_dsn: str, change: dict[str, str], says: str) -> None:
    env = {"ACCOUNTANT_BROKER": "127.0.0.1:1", "ACCOUNTANT_LEDGER_DSN": _dsn_with(ledger_dsn, **change),
           "ACCOUNTANT_LEDGER_WEB_PORT": str(pick_free_loopback_port())}
    result = subprocess.run([sys.executable, "-m", "app.cli", "ledger"], cwd=REPO, timeout=60, capture_output=True,
                            text=True, env={**_clean_env(), **env})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("accountant ledger: ACCOUNTANT_LEDGER_DSN") and says in last, result.stderr
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}


def test_a_database_down_from_the_start_turns_healthz_503_after_the_stall_timeout(tmp_path: Path) -> None:
    env = {"ACCOUNTANT_BROKER": "127.0.0.1:1", "ACCOUNTANT_LEDGER_DSN": "postgresql://ledger@127.0.0.1:1/ledger",
           "ACCOUNTANT_LEDGER_STALL_TIMEOUT_SECS": "2", "ACCOUNTANT_LEDGER_CONNECT_TIMEOUT_SECS": "2"}
    ledger = LedgerProcess("ledger", env, tmp_path)
    ledger.start()
    try:
        wait_for("/healthz to answer", lambda: ledger.check_alive() or _answers(ledger), 30, interval=0.2)
        wait_for("/healthz to answer 503", lambda: ledger.get("/healthz")[0] == 503, 30, interval=0.3,
                 observed=ledger.log_tail)
        assert ledger.get("/healthz")[1]["stalled_secs"] >= 2
        assert ledger.metric("accountant_ledger_database_retries_total") > 0
        assert "retrying" in ledger.log_tail() and "Traceback" not in ledger.log_tail()
    finally:
        ledger.stop()


def _answers(process: LedgerProcess) -> bool:
    try:
        process.get("/healthz")
    except OSError:
        return False
    return True
