"""`accountant ledger` end to end: real broker, real PostgreSQL, the ledger as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from app.ledger.read import read_conflicts, read_ledger_closures, read_usage_by_tenant
from tests.support import REPO
from tests.support.closures import ClosureSet, closure
from tests.support.ledger_processes import LedgerDeployment

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def assert_exact(deployment: LedgerDeployment, population: ClosureSet) -> list[dict]:
    """One row per closure_id, with the figures the closures carry; nothing else."""
    stored = read_ledger_closures(deployment.dsn)
    expected = {item["closure_id"]: item for item in population.closures}
    assert len(stored) == len(expected), f"{len(stored)} rows for {len(expected)} closures"
    assert {row["closure_id"] for row in stored} == set(expected)
    mismatched = [row["closure_id"] for row in stored
                  if row["total_token_count"] != expected[row["closure_id"]]["total_token_count"]
                  or row["tenant_id"] != expected[row["closure_id"]]["record"]["tenant_id"]]
    assert mismatched == []
    assert {tenant: usage["total_token_count"] for tenant, usage in read_usage_by_tenant(deployment.dsn).items()} \
        == population.totals_by_tenant()
    return stored


def test_the_lag_counts_the_records_the_ledger_has_not_stored(ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(30, seed=3)
    ledger_deployment.publish_closures(population.closures)
    assert ledger_deployment.lag() == 30  # no ledger yet, not even its schema
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])
    assert ledger_deployment.lag() == 0
    assert len(read_ledger_closures(ledger_deployment.dsn)) == 30


def test_closures_land_once_with_their_figures_and_offsets(ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(3000, seed=11)
    ledger_deployment.publish_closures(population.closures)
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])

    stored = assert_exact(ledger_deployment, population)
    assert sum(row["duplicates"] for row in stored) == 0
    ledger.wait_metric("accountant_ledger_closures_written_total", 3000)
    assert ledger.metric("accountant_ledger_lag_records") == 0
    assert ledger.get("/healthz")[0] == 200
    offsets = ledger_deployment.query("SELECT partition, next_offset FROM ledger_offsets WHERE consumer_group = %s "
                                      "ORDER BY partition", (ledger_deployment.group,))
    assert [partition for partition, _ in offsets] == [0, 1, 2, 3]
    assert sum(offset for _, offset in offsets) == 3000


def test_a_restarted_ledger_resumes_from_the_database_offsets(ledger_deployment: LedgerDeployment) -> None:
    first, second = ClosureSet(500, seed=1, prefix="a"), ClosureSet(500, seed=2, prefix="b")
    ledger_deployment.publish_closures(first.closures)
    ledger = ledger_deployment.ledger("ledger-1").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])
    ledger.stop()
    ledger_deployment.publish_closures(second.closures)
    again = ledger_deployment.ledger("ledger-2").start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[again])

    both = ClosureSet(0)
    both.closures = first.closures + second.closures
    assert_exact(ledger_deployment, both)
    # Only the new closures were read: the first 500 were not re-delivered.
    again.wait_metric("accountant_ledger_closures_written_total", 500)
    assert again.metric("accountant_ledger_duplicates_total") == 0


def test_bad_records_go_to_rejects_and_the_ledger_goes_on(ledger_deployment: LedgerDeployment) -> None:
    good = ClosureSet(50, seed=5)
    broken = closure("bad-total")
    broken["total_token_count"] += 1
    # SPEC §3 rev. 3: U+0000 in metadata is billed like any other closure; in an id it is refused.
    nul = closure("nul", tenant_id="tenant-0", initial=1200, delta=34, metadata={"note": "a\x00b"})
    nul_tenant = closure("nul-tenant", tenant_id="tenant-\x00")
    ledger_deployment.publish([("junk", b"\xff not json"), ("bad-total", orjson.dumps(broken)),
                               ("nul", orjson.dumps(nul)), ("nul-tenant", orjson.dumps(nul_tenant)),
                               ("tombstone", None)])
    ledger_deployment.publish_closures(good.closures)
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])

    billed = ClosureSet(0)
    billed.closures = [*good.closures, nul]
    assert_exact(ledger_deployment, billed)
    rejects = ledger_deployment.query("SELECT key, error, value, source_topic FROM ledger_rejects ORDER BY key")
    assert [(key, error.split(":")[0]) for key, error, _, _ in rejects] == [
        (b"bad-total", "total_token_count"), (b"junk", "not JSON"), (b"nul-tenant", "record.tenant_id"),
        (b"tombstone", "no value (a tombstone or an empty record)")]
    assert {topic for *_, topic in rejects} == {ledger_deployment.topic}
    assert rejects[1][2] == b"\xff not json"
    ledger.wait_metric("accountant_ledger_rejects_total", 4)


def test_repeats_are_counted_and_a_changed_closure_lands_in_conflicts(ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(200, seed=8)
    ledger_deployment.publish_closures(population.closures)
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])

    original = population.closures[17]
    resent = orjson.loads(orjson.dumps(original))
    resent["emitted_at"] = "2026-02-01T00:00:00Z"
    changed = orjson.loads(orjson.dumps(resent))
    changed["record"]["delta_token_count"] += 1000
    changed["total_token_count"] += 1000
    ledger_deployment.publish_closures([resent, changed, resent])
    ledger_deployment.wait_caught_up(alive=[ledger])

    stored = {row["closure_id"]: row for row in assert_exact(ledger_deployment, population)}
    assert stored[original["closure_id"]]["total_token_count"] == original["total_token_count"]
    assert stored[original["closure_id"]]["duplicates"] == 2
    [conflict] = read_conflicts(ledger_deployment.dsn)
    assert conflict["closure_id"] == original["closure_id"]
    assert conflict["total_token_count"] == original["total_token_count"] + 1000
    ledger.wait_metric("accountant_ledger_conflicts_total", 1)
    assert ledger.metric("accountant_ledger_duplicates_total") == 2
    assert f"CONFLICT: closure '{original['closure_id']}'" in ledger.log_tail(200)


def test_usage_command_figures_match_the_closures(ledger_deployment: LedgerDeployment) -> None:
    population = ClosureSet(1200, seed=21)
    ledger_deployment.publish_closures(population.closures)
    ledger = ledger_deployment.ledger().start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])

    tenant = "tenant-2"
    mine = [item for item in population.closures if item["record"]["tenant_id"] == tenant]
    closed_days = sorted({item["record"]["closed_at"][:10] for item in mine})
    first_day, last_day = closed_days[0], closed_days[-1]

    def usage(*args: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "app.cli", "usage", "--tenant", tenant, *args,
                                 "--format", "json", "--dsn", ledger_deployment.dsn],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout)

    def expected(key, items=mine) -> dict:
        sums: dict = {}
        for item in items:
            group = key(item)
            count, total = sums.get(group, (0, 0))
            sums[group] = (count + 1, total + item["total_token_count"])
        return sums

    by_model = usage("--from", first_day, "--to", last_day, "--by", "model")["rows"]
    assert {(row["provider_id"], row["model"]): (row["closures"], row["total_token_count"]) for row in by_model} == \
        expected(lambda item: (item["record"]["provider_id"], item["record"]["model"]))
    by_provider = usage("--from", first_day, "--to", last_day, "--by", "provider")["rows"]
    assert {row["provider_id"]: (row["closures"], row["total_token_count"]) for row in by_provider} == \
        expected(lambda item: item["record"]["provider_id"])
    by_day = usage("--from", first_day, "--to", last_day, "--by", "day")["rows"]
    assert {row["day"]: (row["closures"], row["total_token_count"]) for row in by_day} == \
        expected(lambda item: item["record"]["closed_at"][:10])
    by_month = usage("--from", first_day, "--to", last_day, "--by", "month")["rows"]
    assert {row["month"]: (row["closures"], row["total_token_count"]) for row in by_month} == \
        expected(lambda item: item["record"]["closed_at"][:7])
    # One UTC day alone: its boundaries are UTC midnight.
    [one_day] = usage("--from", closed_days[1], "--to", closed_days[1])["rows"]
    assert (one_day["closures"], one_day["total_token_count"]) == expected(
        lambda item: "all", [item for item in mine if item["record"]["closed_at"][:10] == closed_days[1]])["all"]

    table = subprocess.run([sys.executable, "-m", "app.cli", "usage", "--tenant", tenant, "--from", first_day,
                            "--to", last_day, "--dsn", ledger_deployment.dsn],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    total = sum(item["total_token_count"] for item in mine)
    assert table.returncode == 0 and f"{total:,}" in table.stdout, table.stdout + table.stderr


def test_the_usage_command_refuses_an_inverted_period(ledger_dsn: str) -> None:
    result = subprocess.run([sys.executable, "-m", "app.cli", "usage", "--tenant", "t", "--from", "2026-02-01",
                             "--to", "2026-01-01", "--dsn", ledger_dsn], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "to: must not be before from" in result.stderr
    assert "Traceback" not in result.stderr
