"""Closing billing periods: `accountant period close YYYY-MM` and `period list`.

Closing takes an EXCLUSIVE lock on ``ledger_periods``: it waits for the
ledger's batch in flight (each batch holds a SHARE lock while it books
closures), and the next batch sees the month closed. From then on nothing is
booked into it: late closures and adjustments go to the first open month
(app/rules/periods.py), so the month's figures never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from app.rules.periods import closable

_SUMMARY = """
SELECT (SELECT count(*) FROM closures WHERE period = %(month)s),
       (SELECT coalesce(sum(total_token_count), 0) FROM closures WHERE period = %(month)s),
       (SELECT count(*) FROM ledger_adjustments WHERE period = %(month)s),
       (SELECT coalesce(sum(token_count), 0) FROM ledger_adjustments WHERE period = %(month)s)
"""


@dataclass(frozen=True, slots=True)
class PeriodState:
    month: date
    closed_at: datetime | None
    closed_by: str | None
    closures: int
    total_token_count: int
    adjustments: int
    adjustment_token_count: int

    def describe(self) -> str:
        state = (f"closed {self.closed_at:%Y-%m-%d %H:%M:%S} UTC by {self.closed_by}" if self.closed_at
                 else "open")
        return (f"{self.month:%Y-%m}  {state}: {self.closures:,} closures, {self.total_token_count:,} tokens, "
                f"{self.adjustments:,} adjustments ({self.adjustment_token_count:+,} tokens), billed "
                f"{self.total_token_count + self.adjustment_token_count:,} tokens")


class PeriodRefused(Exception):
    """The month cannot be closed; the message says why."""


def close_period(connection: psycopg.Connection[Any], month: date, closed_by: str) -> tuple[PeriodState, bool]:
    """Close ``month``; (its state, whether this call closed it: False when it was closed before)."""
    with connection.transaction():
        connection.execute("SET LOCAL TIME ZONE 'UTC'")
        connection.execute("LOCK TABLE ledger_periods IN EXCLUSIVE MODE")
        [(now,)] = connection.execute("SELECT now()").fetchall()
        known = connection.execute("SELECT closed_at FROM ledger_periods WHERE month = %s", (month,)).fetchone()
        if known is None:
            if not closable(month, now):
                raise PeriodRefused(f"{month:%Y-%m} has not ended yet (UTC): only a past month can be closed")
            connection.execute("INSERT INTO ledger_periods (month, closed_by) VALUES (%s, %s)", (month, closed_by))
        return _state(connection, month), known is None


def list_periods(connection: psycopg.Connection[Any]) -> list[PeriodState]:
    """Every month that has closures, adjustments or was closed, oldest first."""
    with connection.transaction():
        connection.execute("SET LOCAL TIME ZONE 'UTC'")
        months = [month for (month,) in connection.execute(
            "SELECT month FROM ledger_periods UNION SELECT DISTINCT period FROM closure_ids "
            "UNION SELECT DISTINCT period FROM ledger_adjustments ORDER BY 1")]
        return [_state(connection, month) for month in months]


def period_state(connection: psycopg.Connection[Any], month: date) -> PeriodState:
    with connection.transaction():
        connection.execute("SET LOCAL TIME ZONE 'UTC'")
        return _state(connection, month)


def _state(connection: psycopg.Connection[Any], month: date) -> PeriodState:
    closed = connection.execute("SELECT closed_at, closed_by FROM ledger_periods WHERE month = %s",
                                (month,)).fetchone()
    [(closures, total, adjustments, adjusted)] = connection.execute(_SUMMARY, {"month": month}).fetchall()
    return PeriodState(month, closed[0] if closed else None, closed[1] if closed else None, int(closures),
                       int(total), int(adjustments), int(adjusted))
