"""What billing reads: usage of one tenant, from the ledger's ``ledger_usage``
SQL function (app/ledger/migrations/0004_periods_adjustments.sql): over UTC
days of closed_at, or over one billing period; with the adjustments apart
and together; as the ledger held it at a past moment, if asked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

#: How `accountant usage --by` groups; "model" means provider and model.
GROUPINGS = ("total", "provider", "model", "day", "month")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    tenant_id: str
    #: UTC days, both included; or None with ``period``.
    from_day: date | None
    to_day: date | None
    by: str = "total"
    #: A billing period (first day of its month): what is booked in it.
    period: date | None = None
    #: Only what the ledger held at this moment (to reproduce an earlier report).
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        if self.by not in GROUPINGS:
            raise ValueError(f"by: must be one of {', '.join(GROUPINGS)}")
        if self.period is not None:
            if self.from_day is not None or self.to_day is not None:
                raise ValueError("period: give a period, or from and to, not both")
        elif self.from_day is None or self.to_day is None:
            raise ValueError("from and to: both are needed (or a period)")
        elif self.to_day < self.from_day:
            raise ValueError("to: must not be before from")
        if self.as_of is not None and self.as_of.tzinfo is None:
            raise ValueError("as_of: must say its UTC offset")


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant_id: str
    provider_id: str | None
    model: str | None
    period_start: date | None
    closures: int
    initial_token_count: int
    delta_token_count: int
    total_token_count: int
    round_count: int
    missing_rounds: int
    late_closures: int = 0
    adjustments: int = 0
    adjustment_token_count: int = 0

    @property
    def billed_token_count(self) -> int:
        """What is invoiced: the closures' tokens with their adjustments."""
        return self.total_token_count + self.adjustment_token_count


def fetch_usage(connection: psycopg.Connection[Any], query: UsageQuery) -> list[UsageRow]:
    """The rows of the query; one row of zeros when the tenant has no usage in it."""
    rows = connection.execute(
        "SELECT tenant_id, provider_id, model, period_start, closures, initial_token_count, delta_token_count, "
        "total_token_count, round_count, missing_rounds, late_closures, adjustments, adjustment_token_count "
        "FROM ledger_usage(%s, %s, %s, %s, %s, %s)",
        (query.tenant_id, query.from_day, query.to_day, query.by, query.period, query.as_of)).fetchall()
    if not rows:
        return [UsageRow(query.tenant_id, None, None, None, 0, 0, 0, 0, 0, 0)]
    return [UsageRow(tenant, provider, model, start, *(int(figure) for figure in figures))
            for tenant, provider, model, start, *figures in rows]
