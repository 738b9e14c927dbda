"""Whether the ledger bills what a simulation must: the simulator's oracle
(`app.dev.oracle.Expected`) against the ledger's rows.

`check_ledger` compares (pure): one row per closed session, each with the
oracle's figures (the ledger's columns read back as a closure and given to
`oracle.check_closures`), token sums per tenant, the conflicts expected and no
others, no closure of the run among the ledger's rejects. `verify_ledger`
first waits until the ledger has caught up with the closures topic (lag 0)
and holds a row for every session, then reads and checks.
`verify_simulation_ledger` is what `accountant simulate --verify` calls.

Lost: a session without a row, or a row with fewer tokens than the oracle's;
double-billed: a row of a session never planned, or with more tokens.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
import psycopg

from app.dev.ledger import DSN_FILE
from app.dev.oracle import ClosureReport, Expected, check_closures, listing
from app.ledger.kafka_options import kafka_client_options
from app.ledger.lag import LedgerLagReader
from app.ledger.read import read_conflicts, read_ledger_closures, read_rejects
from app.settings import Settings

__all__ = ["LedgerReport", "check_ledger", "format_ledger_report", "verify_ledger", "verify_simulation_ledger"]

#: Where `accountant dev` (default --data-dir) says which database its ledger writes.
DEV_DSN_FILE = Path("data") / DSN_FILE


@dataclass
class LedgerReport:
    #: The ledger's rows of this run, read as closures, against the oracle.
    closures: ClosureReport
    tokens_by_tenant: dict[str, int]
    expected_tokens_by_tenant: dict[str, int]
    #: Repeats with identical content, counted and ignored.
    duplicates: int
    #: closure id -> conflicting deliveries kept in closure_conflicts.
    conflicts: dict[str, int]
    expected_conflicts: list[str] = field(default_factory=list)
    #: Records of this run in ledger_rejects (at most a few words each).
    rejects: list[str] = field(default_factory=list)
    #: The ledger's lag when it was read (None: unknown).
    lag_records: int | None = None
    #: Whether the ledger caught up and held every session before the timeout.
    complete: bool = True
    #: Why the ledger could not be read at all.
    error: str | None = None

    @property
    def rows(self) -> int:
        return self.closures.received

    @property
    def lost(self) -> int:
        return len(self.closures.missing) + self._wrong_totals(lambda got, want: got < want)

    @property
    def double_billed(self) -> int:
        return len(self.closures.unexpected) + self._wrong_totals(lambda got, want: got > want)

    def _wrong_totals(self, wrong: Callable[[int, int], bool]) -> int:
        return sum(1 for differences in self.closures.mismatched.values()
                   if "total_token_count" in differences
                   and wrong(differences["total_token_count"]["actual"], differences["total_token_count"]["expected"]))

    @property
    def tenants_differing(self) -> dict[str, tuple[int, int]]:
        """tenant -> (expected, ledger) tokens, where they differ."""
        tenants = self.tokens_by_tenant.keys() | self.expected_tokens_by_tenant.keys()
        pairs = {tenant: (self.expected_tokens_by_tenant.get(tenant, 0), self.tokens_by_tenant.get(tenant, 0))
                 for tenant in sorted(tenants)}
        return {tenant: pair for tenant, pair in pairs.items() if pair[0] != pair[1]}

    @property
    def ok(self) -> bool:
        return (self.error is None and self.closures.ok and not self.tenants_differing and not self.rejects
                and sorted(self.conflicts) == sorted(self.expected_conflicts))

    def figures(self) -> dict[str, Any]:
        """The fault suite's figures of the ledger."""
        return {"ledger_rows": self.rows, "ledger_tokens": sum(self.tokens_by_tenant.values()),
                "ledger_lost": self.lost, "ledger_double_billed": self.double_billed,
                "ledger_duplicates": self.duplicates, "ledger_conflicts": sum(self.conflicts.values()),
                "ledger_rejects": len(self.rejects)}

    def problems(self) -> list[str]:
        """What is wrong, one line each (empty when ok)."""
        lines = [] if self.error is None else [f"the ledger could not be read: {self.error}"]
        report = self.closures
        if report.missing:
            lines.append(f"{len(report.missing)} sessions without a ledger row: {listing(report.missing)}")
        if report.unexpected:
            lines.append(f"ledger rows of sessions never planned: {listing(report.unexpected)}")
        lines.extend(report.mismatch_lines("ledger row"))
        for tenant, (want, got) in self.tenants_differing.items():
            lines.append(f"tenant {tenant}: the ledger bills {got:,} tokens, the oracle {want:,}")
        if sorted(self.conflicts) != sorted(self.expected_conflicts):
            lines.append(f"conflicts for {listing(sorted(self.conflicts))}, expected for "
                         f"{listing(sorted(self.expected_conflicts))}")
        if self.rejects:
            lines.append(f"{len(self.rejects)} closures of the run in ledger_rejects: {listing(self.rejects)}")
        if not self.complete:
            lines.append(f"the ledger had not caught up before the timeout (lag {self.lag_records})")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "closures": self.closures.to_json(), "ok": self.ok, "lost": self.lost,
                "double_billed": self.double_billed}


def _as_closure(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger row in the closure's shape (SPEC §6), from the columns billing reads."""
    return {
        "closure_id": row["closure_id"],
        "reason": row["reason"],
        "total_token_count": row["total_token_count"],
        "missing_rounds": row["missing_rounds"],
        "record": {name: row[name] for name in ("tenant_id", "provider_id", "model", "ttl_secs", "round_count",
                                                "initial_token_count", "delta_token_count", "closed_at")},
    }


def check_ledger(expected: Expected, rows: Iterable[Mapping[str, Any]], conflicts: Iterable[Mapping[str, Any]],
                 rejects: Iterable[str] = (), *, expected_conflicts: Collection[str] = ()) -> LedgerReport:
    """The ledger's rows, conflicts and rejects of one run against the oracle."""
    rows = [row for row in rows if str(row["closure_id"]).startswith(expected.marker)]
    tokens: Counter[str] = Counter()
    for row in rows:
        tokens[row["tenant_id"]] += row["total_token_count"]
    conflicting = Counter(str(conflict["closure_id"]) for conflict in conflicts
                          if str(conflict["closure_id"]).startswith(expected.marker))
    return LedgerReport(
        closures=check_closures(expected, [_as_closure(row) for row in rows]),
        tokens_by_tenant=dict(sorted(tokens.items())),
        expected_tokens_by_tenant=expected.tokens_by_tenant(),
        duplicates=sum(row["duplicates"] for row in rows),
        conflicts=dict(sorted(conflicting.items())),
        expected_conflicts=sorted(expected_conflicts),
        rejects=list(rejects),
    )


async def verify_ledger(expected: Expected, reader: LedgerLagReader, *, timeout: float,
                        expected_conflicts: Collection[str] = (), progress: TextIO | None = None) -> LedgerReport:
    """Wait (up to `timeout` seconds) until the ledger that `reader` watches has
    caught up with its topic and holds a row for every session of the run,
    then check it."""
    dsn = reader.dsn
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 5
    lag: int | None = None
    while True:
        try:
            lag = sum((await reader.lag()).values())
            rows = await asyncio.to_thread(_count_rows, dsn, expected.marker)
        except Exception as error:  # no lag yet: the ledger may not have created its schema
            lag, rows, waiting_on = None, 0, f"{type(error).__name__}: {error}"
        else:
            waiting_on = f"lag {lag}, {rows:,}/{expected.sessions:,} sessions"
        complete = lag == 0 and rows >= expected.sessions
        if complete or time.monotonic() >= deadline:
            break
        if progress is not None and time.monotonic() >= next_note:
            next_note += 5
            print(f"simulate: waiting for the ledger: {waiting_on}", file=progress, flush=True)
        await asyncio.sleep(0.5)
    stored = await asyncio.to_thread(read_ledger_closures, dsn, expected.marker)
    conflicts = await asyncio.to_thread(read_conflicts, dsn, expected.marker)
    rejects = await asyncio.to_thread(read_rejects, dsn, expected.marker.encode())
    report = check_ledger(expected, stored, conflicts,
                          [f"{r['source_topic']}/{r['source_partition']}@{r['source_offset']}: {r['error']}"
                           for r in rejects], expected_conflicts=expected_conflicts)
    report.lag_records, report.complete = lag, complete
    return report


def _count_rows(dsn: str, prefix: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM closures WHERE starts_with(closure_id, %s)",
                                          (prefix,)).fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0  # the ledger has not created its schema yet


def verify_simulation_ledger(settings: Settings, expected: Expected, timeout: float) -> LedgerReport | None:
    """The ledger's check for `accountant simulate --verify`: of the ledger at
    ACCOUNTANT_LEDGER_DSN, else of the one `accountant dev` runs (data/ledger-dsn.txt);
    None, with a note on stderr, when there is neither."""
    dsn = settings.ledger_dsn
    if not dsn and DEV_DSN_FILE.exists():
        dsn = DEV_DSN_FILE.read_text().strip()
        click.echo(f"simulate: checking the ledger of `accountant dev` ({DEV_DSN_FILE})", err=True)
    if not dsn:
        click.echo("simulate: no ledger to check (set ACCOUNTANT_LEDGER_DSN)", err=True)
        return None

    async def run() -> LedgerReport:
        async with LedgerLagReader(dsn, settings.ledger_group, settings.closures_topic,
                                   kafka_client_options(settings)) as reader:
            return await verify_ledger(expected, reader, timeout=timeout, progress=sys.stderr)

    try:
        return asyncio.run(run())
    except psycopg.Error as error:  # the database is unreachable, or is no ledger
        report = check_ledger(expected, [], [])
        report.error, report.complete = f"{type(error).__name__}: {error}", False
        return report


def format_ledger_report(report: LedgerReport) -> str:
    lines = [
        "ledger",
        f"  rows        {report.rows:,} of {report.closures.expected:,} sessions"
        f" ({report.duplicates:,} repeats ignored)",
        f"  tokens      {sum(report.tokens_by_tenant.values()):,} of {report.closures.expected_tokens:,}",
        f"  conflicts   {sum(report.conflicts.values()):,}",
        *(f"  {problem}" for problem in report.problems()),
        "  OK" if report.ok else "  MISMATCH",
    ]
    return "\n".join(lines)
