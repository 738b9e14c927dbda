"""Billing periods: UTC calendar months that, once closed (invoiced), never change.

A closure is billed in the month its session closed (``closed_at``, UTC),
unless that month is already closed when the ledger writes it: then it is
booked into the first open month after it, and marked late. An adjustment is
booked the same way, from the period of the closure it corrects. So the
figures of a closed month are final: nothing is ever added to it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date, datetime

_MONTH = re.compile(r"(\d{4})-(\d{2})\Z")


def month_of(moment: datetime) -> date:
    """The first day of ``moment``'s month (``moment`` in UTC)."""
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def booking_period(month: date, closed: Collection[date]) -> tuple[date, bool]:
    """(the period an item of ``month`` is booked into, whether it is late):
    ``month`` itself while open, else the first open month after it."""
    period = month
    while period in closed:
        period = next_month(period)
    return period, period != month


def parse_month(text: str) -> date:
    """``YYYY-MM`` as its first day; ValueError saying the form."""
    match = _MONTH.match(text.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise ValueError(f"{text!r} is not a month: write YYYY-MM, e.g. 2026-11")
    return date(int(match.group(1)), int(match.group(2)), 1)


def closable(month: date, now: datetime) -> bool:
    """Whether ``month`` has ended at ``now`` (UTC): only a month that has ended can be closed."""
    return next_month(month) <= now.date()
