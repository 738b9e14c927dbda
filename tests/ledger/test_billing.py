"""What billing runs against the ledger (real PostgreSQL, the commands as
subprocesses): `accountant usage` errors and zero rows, corrections
(`adjust`), closed periods (`period close`, late closures, `--as-of`,
partitions) and `export`. Every figure is checked against the closures and
adjustments sent, summed in Python (the oracle)."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import REPO
from tests.support.closures import ClosureSet
from tests.support.ledger_writes import LedgerWriter

pytestmark = pytest.mark.postgres

NOV = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def accountant(*args: str, dsn: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}
    if dsn is not None:
        clean["ACCOUNTANT_LEDGER_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


def ok(*args: str, dsn: str) -> str:
    result = accountant(*args, dsn=dsn)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def usage_rows(dsn: str, tenant: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(ok("usage", "--tenant", tenant, "--format", "json", *args, dsn=dsn))["rows"]


def totals(closures: list[dict[str, Any]], tenant: str) -> int:
    return sum(item["total_token_count"] for item in closures if item["record"]["tenant_id"] == tenant)


def in_month(population: ClosureSet, moment: datetime) -> list[dict[str, Any]]:
    """The population's closures moved to close in ``moment``'s month (one per minute from it)."""
    for index, item in enumerate(population.closures):
        closed = moment.replace(minute=index % 60, hour=index // 60 % 24)
        item["record"]["closed_at"] = closed.isoformat().replace("+00:00", "Z")
        item["emitted_at"] = item["record"]["closed_at"]
    return population.closures


# --------------------------------------------------------------------------
# accountant usage: errors in one line, a zero row


def test_usage_with_the_database_unreachable_says_so_in_one_line() -> None:
    line = one_line_error(accountant("usage", "--tenant", "t", "--from", "2026-11-01", "--to", "2026-11-30",
                                     "--dsn", "postgresql://postgres@127.0.0.1:1/ledger"))
    assert line.startswith("Error: cannot reach the ledger's database") and "127.0.0.1" in line


def test_usage_against_a_server_that_never_answers_gives_up_within_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = accountant("usage", "--tenant", "t", "--from", "2026-11-01", "--to", "2026-11-30", "--dsn",
                            f"postgresql://postgres@127.0.0.1:{port}/ledger",
                            env={"ACCOUNTANT_LEDGER_CONNECT_TIMEOUT_SECS": "2"})
        elapsed = time.monotonic() - started
    assert one_line_error(result).startswith("Error: cannot reach the ledger's database")
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_usage_of_a_database_not_migrated_names_the_command_then_a_tenant_without_usage_gets_a_zero_row(
        ledger_dsn: str) -> None:
    line = one_line_error(accountant("usage", "--tenant", "t", "--from", "2026-11-01", "--to", "2026-11-30",
                                     dsn=ledger_dsn))
    assert "is not migrated" in line and "run `accountant migrate`" in line
    assert "applied 0001_init.sql" in ok("migrate", dsn=ledger_dsn)
    assert "up to date" in ok("migrate", dsn=ledger_dsn)
    [row] = usage_rows(ledger_dsn, "nobody", "--from", "2026-11-01", "--to", "2026-11-30")
    assert row == {"tenant_id": "nobody", "closures": 0, "total_token_count": 0, "adjustments": 0,
                   "adjustment_token_count": 0, "billed_token_count": 0, "initial_token_count": 0,
                   "delta_token_count": 0, "round_count": 0, "missing_rounds": 0, "late_closures": 0}
    table = ok("usage", "--tenant", "nobody", "--period", "2026-11", dsn=ledger_dsn)
    assert "billing period 2026-11" in table and table.splitlines()[-1].startswith("nobody ")


def test_a_dsn_with_a_password_on_the_command_line_is_refused_without_echoing_it(ledger_dsn: str) -> None:
    result = accountant("usage", "--tenant", "t", "--period", "2026-11", "--dsn",
                        "postgresql://postgres:pw-canary-31@127.0.0.1:1/ledger")
    assert result.returncode == 2 and "ACCOUNTANT_LEDGER_DSN_FILE" in result.stderr
    assert "pw-canary-31" not in result.stderr + result.stdout


# --------------------------------------------------------------------------
# Corrections


def test_an_adjustment_is_a_row_of_its_own_shown_apart_and_together(ledger_dsn: str) -> None:
    population = ClosureSet(40, seed=41)
    items = in_month(population, NOV)
    LedgerWriter(ledger_dsn).write(items)
    target = next(item for item in items if item["record"]["tenant_id"] == "tenant-1"
                  and item["total_token_count"] > 1200)
    with psycopg.connect(ledger_dsn) as connection:
        before = connection.execute("SELECT * FROM closures WHERE closure_id = %s", (target["closure_id"],)).fetchall()

    said = ok("adjust", "--tenant", "tenant-1", "--closure-id", target["closure_id"], "--tokens", "-1200",
              "--reason", "double-counted retry", "--idempotency-key", "ticket-77", "--by", "alice", dsn=ledger_dsn)
    assert said.startswith("recorded adjustment #1: -1,200 tokens") and "booked in 2026-11" in said
    again = ok("adjust", "--tenant", "tenant-1", "--closure-id", target["closure_id"], "--tokens", "-1200",
               "--reason", "double-counted retry", "--idempotency-key", "ticket-77", dsn=ledger_dsn)
    assert again.startswith("already recorded as adjustment #1") and "nothing written" in again

    [row] = usage_rows(ledger_dsn, "tenant-1", "--period", "2026-11")
    expected = totals(items, "tenant-1")
    assert (row["total_token_count"], row["adjustments"], row["adjustment_token_count"], row["billed_token_count"]) \
        == (expected, 1, -1200, expected - 1200)
    by_day = usage_rows(ledger_dsn, "tenant-1", "--from", "2026-11-01", "--to", "2026-11-30")
    assert [(r["total_token_count"], r["billed_token_count"]) for r in by_day] == [(expected, expected - 1200)]
    with psycopg.connect(ledger_dsn) as connection:
        assert connection.execute("SELECT * FROM closures WHERE closure_id = %s",
                                  (target["closure_id"],)).fetchall() == before  # the closure never changes
        [(who, why, tokens, key)] = connection.execute(
            "SELECT created_by, reason, token_count, idempotency_key FROM ledger_adjustments").fetchall()
        assert (who, why, int(tokens), key) == ("alice", "double-counted retry", -1200, "ticket-77")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            connection.execute("UPDATE ledger_adjustments SET token_count = 5")


@pytest.mark.parametrize("args, says", [
    (("--closure-id", "no-such-closure", "--tokens", "-5"), "no such closure in the ledger"),
    (("--closure-id", "s-0000000", "--tokens", "-5", "--tenant", "someone-else"), "belongs to tenant"),
    (("--closure-id", "s-0000000", "--tokens", "-99999999"), "an adjustment takes off at most what is billed"),
    (("--closure-id", "s-0000000", "--tokens", "7", "--idempotency-key", "used"), "was used for another adjustment"),
])
def test_a_refused_adjustment_writes_nothing_and_says_why(ledger_dsn: str, args: tuple[str, ...], says: str) -> None:
    items = in_month(ClosureSet(3, seed=42), NOV)
    LedgerWriter(ledger_dsn).write(items)
    tenant = items[0]["record"]["tenant_id"]
    ok("adjust", "--tenant", tenant, "--closure-id", "s-0000000", "--tokens", "3", "--reason", "first",
       "--idempotency-key", "used", dsn=ledger_dsn)
    options = dict(zip(args[::2], args[1::2], strict=True))
    options.setdefault("--tenant", tenant)
    result = accountant("adjust", *(part for pair in options.items() for part in pair), "--reason", "r",
                        dsn=ledger_dsn)
    assert result.returncode == 1 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    with psycopg.connect(ledger_dsn) as connection:
        assert connection.execute("SELECT count(*) FROM ledger_adjustments").fetchone() == (1,)


def test_a_csv_of_adjustments_is_written_whole_or_not_at_all_and_a_rerun_changes_nothing(
        ledger_dsn: str, tmp_path: Path) -> None:
    items = in_month(ClosureSet(20, seed=43), NOV)
    LedgerWriter(ledger_dsn).write(items)
    lines = [(item["record"]["tenant_id"], item["closure_id"], 10 + index, f"credit {index}")
             for index, item in enumerate(items[:5])]
    bad = tmp_path / "bad.csv"
    bad.write_text("tenant_id,closure_id,token_count,reason\n" + "".join(f"{t},{c},{n},{r}\n" for t, c, n, r in lines)
                   + "tenant-0,no-such-closure,5,oops\n")
    result = accountant("adjust", "--csv", str(bad), dsn=ledger_dsn)
    assert result.returncode == 1 and "'no-such-closure'" in result.stderr
    good = tmp_path / "good.csv"
    good.write_text("tenant_id,closure_id,token_count,reason\n" + "".join(f"{t},{c},{n},{r}\n" for t, c, n, r in lines))
    assert ok("adjust", "--csv", str(good), dsn=ledger_dsn).count("recorded adjustment #") == 5
    assert ok("adjust", "--csv", str(good), dsn=ledger_dsn).count("already recorded") == 5
    expected: Counter[str] = Counter()
    for tenant, _, tokens, _ in lines:
        expected[tenant] += tokens
    for tenant in {tenant for tenant, *_ in lines}:
        [row] = usage_rows(ledger_dsn, tenant, "--period", "2026-11")
        assert row["adjustment_token_count"] == expected[tenant]
        assert row["billed_token_count"] == totals(items, tenant) + expected[tenant]


# --------------------------------------------------------------------------
# Closed periods


def test_a_closed_month_never_changes_late_closures_go_to_the_next_open_one(ledger_dsn: str) -> None:
    writer = LedgerWriter(ledger_dsn)
    november = in_month(ClosureSet(60, seed=44, prefix="nov"), NOV)
    writer.write(november)
    before_close = ok("usage", "--tenant", "tenant-2", "--period", "2026-11", "--format", "json", dsn=ledger_dsn)
    said = ok("period", "close", "2026-11", "--by", "billing", dsn=ledger_dsn)
    assert said.startswith("closed 2026-11") and f"{len(november)} closures" in said
    assert ok("period", "close", "2026-11", dsn=ledger_dsn).startswith("already closed: 2026-11")
    closed_at = datetime.now(UTC)
    time.sleep(0.05)

    late = in_month(ClosureSet(10, seed=45, prefix="late"), NOV)
    december = in_month(ClosureSet(10, seed=46, prefix="dec"), DEC)
    writer.write(late + december)
    ok("adjust", "--tenant", november[0]["record"]["tenant_id"], "--closure-id", november[0]["closure_id"],
       "--tokens", "5", "--reason", "after the invoice", dsn=ledger_dsn)

    # November's figures are what they were when it closed.
    assert ok("usage", "--tenant", "tenant-2", "--period", "2026-11", "--format", "json", dsn=ledger_dsn) \
        == before_close
    for tenant in ("tenant-0", "tenant-1", "tenant-2", "tenant-3"):
        [nov] = usage_rows(ledger_dsn, tenant, "--period", "2026-11")
        assert nov["total_token_count"] == totals(november, tenant) and nov["late_closures"] == 0
        [dec] = usage_rows(ledger_dsn, tenant, "--period", "2026-12")
        assert dec["total_token_count"] == totals(late + december, tenant)
        assert dec["late_closures"] == sum(item["record"]["tenant_id"] == tenant for item in late)
        # By closed_at, the late closures are November's: the operational view, not the invoice.
        [by_day] = usage_rows(ledger_dsn, tenant, "--from", "2026-11-01", "--to", "2026-11-30")
        assert by_day["total_token_count"] == totals(november + late, tenant)
    with psycopg.connect(ledger_dsn) as connection:
        booked = connection.execute("SELECT period, late, count(*) FROM closures GROUP BY 1, 2 ORDER BY 1, 2")
        assert booked.fetchall() == [(NOV.date().replace(day=1), False, 60), (DEC.date().replace(day=1), False, 10),
            (DEC.date().replace(day=1), True, 10)]
        assert connection.execute("SELECT period, late FROM ledger_adjustments").fetchall() == [
            (DEC.date().replace(day=1), True)]
    # As of the close, December held nothing yet.
    [as_of] = usage_rows(ledger_dsn, "tenant-2", "--period", "2026-12", "--as-of",
                         closed_at.isoformat().replace("+00:00", "Z"))
    assert as_of["closures"] == 0 and as_of["adjustments"] == 0


def test_a_month_not_yet_over_cannot_be_closed(ledger_dsn: str) -> None:
    ok("migrate", dsn=ledger_dsn)
    month = datetime.now(UTC).strftime("%Y-%m")
    line = one_line_error(accountant("period", "close", month, dsn=ledger_dsn))
    assert f"{month} has not ended yet" in line
    result = accountant("period", "close", "2026-13", dsn=ledger_dsn)
    assert result.returncode == 2 and result.stderr.strip().endswith("write YYYY-MM, e.g. 2026-11")


def test_each_month_has_its_partition_and_an_old_one_detaches(ledger_dsn: str) -> None:
    writer = LedgerWriter(ledger_dsn)
    november, december = in_month(ClosureSet(5, seed=47, prefix="n"), NOV), in_month(ClosureSet(5, seed=48), DEC)
    writer.write(november + december)
    ok("period", "close", "2026-11", dsn=ledger_dsn)
    with psycopg.connect(ledger_dsn, autocommit=True) as connection:
        partitions = [name for (name,) in connection.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'closures'::regclass ORDER BY 1")]
        assert partitions == ["closures_y2026m11", "closures_y2026m12"]
        connection.execute("ALTER TABLE closures DETACH PARTITION closures_y2026m11")
        assert connection.execute("SELECT count(*) FROM closures_y2026m11").fetchone() == (5,)
    # A re-sent November closure is still a repeat (closure_ids keeps every id), not billed again.
    writer.write([november[0]])
    for tenant in {item["record"]["tenant_id"] for item in december}:
        [row] = usage_rows(ledger_dsn, tenant, "--period", "2026-12")
        assert row["total_token_count"] == totals(december, tenant)
    with psycopg.connect(ledger_dsn) as connection:
        assert connection.execute("SELECT count(*) FROM closures").fetchone() == (5,)


# --------------------------------------------------------------------------
# Export


def test_export_writes_every_tenants_usage_by_model_and_the_adjustments(ledger_dsn: str, tmp_path: Path) -> None:
    items = in_month(ClosureSet(300, seed=49), NOV)
    LedgerWriter(ledger_dsn).write(items)
    ok("adjust", "--tenant", items[0]["record"]["tenant_id"], "--closure-id", items[0]["closure_id"],
       "--tokens", "-1", "--reason", "rounding", "--by", "bob", dsn=ledger_dsn)
    expected: dict[tuple[str, str, str], list[int]] = {}
    for item in items:
        key = (item["record"]["tenant_id"], item["record"]["provider_id"], item["record"]["model"])
        expected.setdefault(key, [0, 0])
        expected[key][0] += 1
        expected[key][1] += item["total_token_count"]
    first = (items[0]["record"]["tenant_id"], items[0]["record"]["provider_id"], items[0]["record"]["model"])

    result = accountant("export", "--period", "2026-11", "--format", "jsonl", dsn=ledger_dsn)
    assert result.returncode == 0, result.stderr
    assert "2026-11 is open" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    usage = {(r["tenant_id"], r["provider_id"], r["model"]): r for r in records if r["record_type"] == "usage"}
    assert {key: [r["closures"], r["total_token_count"]] for key, r in usage.items()} == expected
    assert usage[first]["billed_token_count"] == expected[first][1] - 1
    [adjustment] = [r for r in records if r["record_type"] == "adjustment"]
    assert (adjustment["closure_id"], adjustment["token_count"], adjustment["created_by"]) == (
        items[0]["closure_id"], -1, "bob")

    ok("period", "close", "2026-11", dsn=ledger_dsn)
    out = tmp_path / "2026-11.csv"
    result = accountant("export", "--period", "2026-11", "--out", str(out), dsn=ledger_dsn)
    assert result.returncode == 0 and "is open" not in result.stderr and f"to {out}" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {(r["tenant_id"], r["provider_id"], r["model"]): [int(r["closures"]), int(r["total_token_count"])]
            for r in rows if r["record_type"] == "usage"} == expected
    assert sum(int(r["billed_token_count"]) for r in rows if r["record_type"] == "usage") == \
        sum(total for _, total in expected.values()) - 1
