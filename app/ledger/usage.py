"""What billing reads: usage of one tenant over UTC days, from the ledger's
``ledger_usage`` SQL function (app/ledger/migrations/0001_init.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg

#: How `accountant usage --by` groups; "model" means provider and model.
GROUPINGS = ("total", "provider", "model", "day", "month")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    tenant_id: str
    #: UTC days, both included.
    from_day: date
    to_day: date
    by: str = "total"

    def __post_init__(self) -> None:
        if self.by not in GROUPINGS:
            raise ValueError(f"by: must be one of {', '.join(GROUPINGS)}")
        if self.to_day < self.from_day:
            raise ValueError("to: must not be before from")


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


def fetch_usage(dsn: str, query: UsageQuery) -> list[UsageRow]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT * FROM ledger_usage(%s, %s, %s, %s)",
            (query.tenant_id, query.from_day, query.to_day, query.by)).fetchall()
    return [UsageRow(tenant, provider, model, period, int(closures), int(initial), int(delta), int(total),
                     int(rounds), int(missing))
            for tenant, provider, model, period, closures, initial, delta, total, rounds, missing in rows]
