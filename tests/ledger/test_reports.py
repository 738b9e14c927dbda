"""Pure pieces of what others read from the ledger: lag and `accountant usage` output."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest

from app.ledger.lag import lag_per_partition
from app.ledger.usage import UsageQuery, UsageRow
from app.ledger.usage_format import render_usage


def test_lag_counts_what_the_database_does_not_hold() -> None:
    assert lag_per_partition({0: 10, 1: 7, 2: 5, 3: 9}, {0: 10, 1: 3, 2: None}, {2: 2, 3: 4}) == {
        0: 0, 1: 4, 2: 3, 3: 5}


def test_lag_is_never_negative() -> None:
    # The stored offset can pass a stale end offset read just before.
    assert lag_per_partition({0: 10}, {0: 12}, {}) == {0: 0}


ROWS = [
    UsageRow("acme", "openai", "gpt", None, 2, 10, 2**64, 2**64 + 10, 7, 1, late_closures=1, adjustments=2,
             adjustment_token_count=-7),
    UsageRow("acme", "anthropic", "claude", None, 1, 5, 5, 10, 3, 0),
]


def test_json_keeps_sums_past_2_to_the_64_exact() -> None:
    query = UsageQuery("acme", date(2026, 1, 1), date(2026, 1, 31), "model")
    data = json.loads(render_usage(query, ROWS, "json"))
    assert (data["from"], data["to"], data["by"], data["timezone"]) == ("2026-01-01", "2026-01-31", "model", "UTC")
    assert data["rows"][0] == {"tenant_id": "acme", "provider_id": "openai", "model": "gpt", "closures": 2,
                               "total_token_count": 2**64 + 10, "adjustments": 2, "adjustment_token_count": -7,
                               "billed_token_count": 2**64 + 3, "initial_token_count": 10,
                               "delta_token_count": 2**64, "round_count": 7, "missing_rounds": 1,
                               "late_closures": 1}
    assert (data["period"], data["as_of"]) == (None, None)


def test_csv_has_a_header_and_one_line_per_row() -> None:
    query = UsageQuery("acme", date(2026, 1, 1), date(2026, 1, 31), "provider")
    lines = list(csv.reader(io.StringIO(render_usage(query, ROWS, "csv"))))
    assert lines[0] == ["tenant_id", "provider_id", "closures", "total_token_count", "adjustments",
                        "adjustment_token_count", "billed_token_count", "initial_token_count", "delta_token_count",
                        "round_count", "missing_rounds", "late_closures"]
    assert lines[1][:7] == ["acme", "openai", "2", str(2**64 + 10), "2", "-7", str(2**64 + 3)]


def test_the_table_is_aligned_and_says_the_period() -> None:
    query = UsageQuery("acme", date(2026, 1, 1), date(2026, 1, 31), "model")
    table = render_usage(query, ROWS, "table").splitlines()
    assert table[0] == "usage of acme, 2026-01-01 .. 2026-01-31 (UTC days, both included)"
    assert len({len(line) for line in table[1:3]}) == 1
    assert "18,446,744,073,709,551,626" in table[3]
    assert "(no closures)" in render_usage(query, [], "table")


def test_the_table_of_a_period_as_of_a_moment_says_so() -> None:
    query = UsageQuery("acme", None, None, "total", date(2026, 11, 1), datetime(2026, 12, 3, 9, 0, tzinfo=UTC))
    title = render_usage(query, ROWS[:1], "table").splitlines()[0]
    assert title == ("usage of acme, billing period 2026-11 (closures and adjustments booked in it), "
                     "as of 2026-12-03T09:00:00+00:00")


@pytest.mark.parametrize("period, from_day, to_day, error", [
    (date(2026, 11, 1), date(2026, 11, 1), None, "not both"),
    (None, date(2026, 11, 1), None, "both are needed"),
])
def test_a_period_or_days_but_not_both(period: date | None, from_day: date | None, to_day: date | None,
                                       error: str) -> None:
    with pytest.raises(ValueError, match=error):
        UsageQuery("acme", from_day, to_day, "total", period)


@pytest.mark.parametrize(("by", "from_day", "to_day", "error"), [
    ("week", date(2026, 1, 1), date(2026, 1, 2), "by: must be one of"),
    ("day", date(2026, 1, 2), date(2026, 1, 1), "to: must not be before from"),
])
def test_a_bad_query_is_refused(by: str, from_day: date, to_day: date, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        UsageQuery("acme", from_day, to_day, by)
