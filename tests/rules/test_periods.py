"""Billing periods (app/rules/periods.py) against a naive model."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.rules.periods import booking_period, closable, month_of, next_month, parse_month

months = st.builds(lambda year, month: date(year, month, 1), st.integers(2020, 2030), st.integers(1, 12))


def all_months(first: date, last: date) -> list[date]:
    """Naive: walk the days, keep the firsts."""
    days = (first - date(1, 1, 1)).days, (last - date(1, 1, 1)).days
    return [day for offset in range(days[0], days[1] + 1)
            if (day := date.fromordinal(offset + 1)).day == 1]


@given(months, st.sets(months, max_size=30))
def test_an_item_is_booked_into_its_month_or_the_first_open_one_after(month: date, closed: set[date]) -> None:
    period, late = booking_period(month, closed)
    assert period not in closed and period >= month
    # Naive: every month from the item's month up to the period, the period excluded, is closed.
    assert all(between in closed for between in all_months(month, period) if between != period)
    assert late == (month in closed)


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9998, 12, 31)))
def test_month_of_and_next_month(moment: datetime) -> None:
    month = month_of(moment)
    assert month.day == 1 and month <= moment.date() < next_month(month)
    assert (next_month(month) - month).days in (28, 29, 30, 31)


@pytest.mark.parametrize("text, month", [("2026-11", date(2026, 11, 1)), (" 2026-01 ", date(2026, 1, 1))])
def test_a_month_is_read(text: str, month: date) -> None:
    assert parse_month(text) == month


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "2026/11", "nov", "2026-11-01", "0000-01"])
def test_a_bad_month_is_refused_saying_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_month(text)


def test_only_a_month_that_has_ended_can_be_closed() -> None:
    assert closable(date(2026, 11, 1), datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    assert not closable(date(2026, 11, 1), datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    assert not closable(date(2026, 12, 1), datetime(2026, 11, 15, tzinfo=UTC))
