"""Corrections, append-only: `accountant adjust` writes rows of
``ledger_adjustments`` (who, when, why, which closure, how many tokens) and
never changes a closure. An adjustment is booked like a closure: into the
period of the closure it corrects, or the first open one after it.

All adjustments of one command are written in one transaction, or none: a
refused one (unknown closure, another tenant's, a billed total that would go
below zero, an idempotency key used for something else) refuses the lot,
each problem said on a line of its own. An idempotency key seen before with
the same adjustment is a repeat: ignored, and said so.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from app.rules.periods import booking_period

CSV_COLUMNS = ("tenant_id", "closure_id", "token_count", "reason")
#: Optional column; without it, a row's key is derived from the file's content and the row's line.
CSV_KEY_COLUMN = "idempotency_key"

_CLOSURE = """
SELECT c.tenant_id, c.total_token_count, i.period,
       (SELECT coalesce(sum(a.token_count), 0) FROM ledger_adjustments AS a WHERE a.closure_id = i.closure_id)
FROM closure_ids AS i LEFT JOIN closures AS c ON c.closure_id = i.closure_id AND c.period = i.period
WHERE i.closure_id = %s
FOR NO KEY UPDATE OF i
"""
_BY_KEY = "SELECT id, tenant_id, closure_id, token_count, reason FROM ledger_adjustments WHERE idempotency_key = %s"
_INSERT = """
INSERT INTO ledger_adjustments (closure_id, tenant_id, token_count, reason, created_by, period, late, idempotency_key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id, period, late
"""


@dataclass(frozen=True, slots=True)
class Adjustment:
    tenant_id: str
    closure_id: str
    #: Tokens added to (negative: taken off) the closure's billed total.
    token_count: int
    reason: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one adjustment: written now, or found written before under its key."""

    adjustment: Adjustment
    id: int
    period: str
    late: bool
    repeat: bool

    def describe(self) -> str:
        what = (f"{self.adjustment.token_count:+,} tokens on closure {self.adjustment.closure_id!r} of "
                f"{self.adjustment.tenant_id!r}")
        if self.repeat:
            return f"already recorded as adjustment #{self.id} ({what}); nothing written"
        late = ", late: its own period is closed" if self.late else ""
        return f"recorded adjustment #{self.id}: {what}, booked in {self.period}{late}"


class AdjustmentRefused(Exception):
    """Nothing was written; the message has one line per problem."""


def adjustment_problems(adjustment: Adjustment) -> list[str]:
    """What is wrong with an adjustment on its own (before the ledger is asked)."""
    problems = []
    if not adjustment.tenant_id or not adjustment.closure_id:
        problems.append("tenant and closure id must not be empty")
    if adjustment.token_count == 0:
        problems.append("tokens: must not be 0")
    if not adjustment.reason.strip():
        problems.append("reason: must say why")
    if not adjustment.idempotency_key:
        problems.append("idempotency key: must not be empty")
    return problems


def read_adjustments_csv(path: Path) -> list[Adjustment]:
    """The adjustments of a CSV file with a header (tenant_id, closure_id,
    token_count, reason[, idempotency_key]); AdjustmentRefused naming each bad line."""
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:16]
    reader = csv.DictReader(content.decode("utf-8-sig").splitlines())
    missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise AdjustmentRefused(f"{path}: the header lacks {', '.join(missing)} "
                                f"(columns: {', '.join(CSV_COLUMNS)}[, {CSV_KEY_COLUMN}])")
    adjustments, problems = [], []
    for line, row in enumerate(reader, start=2):
        try:
            tokens = int((row.get("token_count") or "").strip())
        except ValueError:
            problems.append(f"{path}:{line}: token_count: must be an integer")
            continue
        adjustment = Adjustment((row.get("tenant_id") or "").strip(), (row.get("closure_id") or "").strip(),
                                tokens, (row.get("reason") or "").strip(),
                                (row.get(CSV_KEY_COLUMN) or "").strip() or f"csv:{digest}:{line}")
        problems += [f"{path}:{line}: {problem}" for problem in adjustment_problems(adjustment)]
        adjustments.append(adjustment)
    if problems:
        raise AdjustmentRefused("\n".join(problems))
    if not adjustments:
        raise AdjustmentRefused(f"{path}: no adjustments in it")
    return adjustments


def record_adjustments(connection: psycopg.Connection[Any], adjustments: Sequence[Adjustment],
                       created_by: str) -> list[Recorded]:
    """Write the adjustments in one transaction, or raise AdjustmentRefused and write none."""
    problems = [f"{item.closure_id!r}: {problem}" for item in adjustments for problem in adjustment_problems(item)]
    if problems:
        raise AdjustmentRefused("\n".join(problems))
    recorded: list[Recorded] = []
    with connection.transaction():
        # No month closes while these are booked (`accountant period close` takes EXCLUSIVE).
        connection.execute("LOCK TABLE ledger_periods IN SHARE MODE")
        closed = frozenset(month for (month,) in connection.execute("SELECT month FROM ledger_periods"))
        for item in adjustments:
            problem, done = _record_one(connection, item, created_by, closed)
            if problem is not None:
                problems.append(f"closure {item.closure_id!r} of {item.tenant_id!r}: {problem}")
            elif done is not None:
                recorded.append(done)
        if problems:
            raise AdjustmentRefused("\n".join(problems))  # rolls the transaction back
    return recorded


def _record_one(connection: psycopg.Connection[Any], item: Adjustment, created_by: str,
                closed: frozenset) -> tuple[str | None, Recorded | None]:
    earlier = connection.execute(_BY_KEY, (item.idempotency_key,)).fetchone()
    if earlier is not None:
        number, tenant, closure_id, tokens, reason = earlier
        if (tenant, closure_id, int(tokens), reason) != (item.tenant_id, item.closure_id, item.token_count,
                                                         item.reason):
            return (f"idempotency key {item.idempotency_key!r} was used for another adjustment (#{number}: "
                    f"{int(tokens):+,} tokens on closure {closure_id!r} of {tenant!r})"), None
        return None, Recorded(item, number, "", False, repeat=True)
    found = connection.execute(_CLOSURE, (item.closure_id,)).fetchone()
    if found is None:
        return "no such closure in the ledger", None
    tenant, total, period, adjusted = found
    if tenant is None:
        return f"its period {period:%Y-%m} was archived (its partition detached)", None
    if tenant != item.tenant_id:
        return f"the closure belongs to tenant {tenant!r}", None
    if total + adjusted + item.token_count < 0:
        return (f"would bill it {total + adjusted + item.token_count:,} tokens (billed now: "
                f"{total + adjusted:,}); an adjustment takes off at most what is billed"), None
    booked, late = booking_period(period, closed)
    number, booked, late = connection.execute(_INSERT, (item.closure_id, item.tenant_id, item.token_count,
                                                        item.reason, created_by, booked, late,
                                                        item.idempotency_key)).fetchone()  # type: ignore[misc]
    return None, Recorded(item, number, f"{booked:%Y-%m}", late, repeat=False)
