"""Tenant period usage and threshold alerts (SPEC §9) against a naive model.

Session states come from the real `apply` on generated histories whose clock
steps across midnight UTC at a month's end. The model keeps every session's
tokens and `closed_at` and, at each point, sums everything and compares with
every threshold; the rules' incremental state, fed deltas in random batches
with some batches delivered again (a crash re-reading the input, with other
batch boundaries), must agree with it on every month's usage and every alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.rules import SECOND, CloseReason, Expire, Session, apply, format_timestamp, parse_timestamp
from app.rules.usage import (
    Budget,
    BudgetError,
    PeriodTotals,
    TenantUsage,
    UsageDelta,
    UsageEntry,
    UsageStep,
    alert_id,
    apply_delta,
    budget_state,
    carried_alerts,
    next_period,
    parse_budget,
    period_of,
    period_start,
    reaches,
    usage_step,
    usage_view,
)
from tests.rules.strategies import POLICY, activated, closed, created, event_delivery, round_

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: An hour before the end of November 2026: histories cross into December.
START = parse_timestamp("2026-11-30T23:00:00Z")
MINUTE = 60 * SECOND
TENANT = "acme"


def test_period_of_the_instants_around_midnight_at_a_months_end() -> None:
    assert period_of(parse_timestamp("2026-11-30T23:59:59.999999Z")) == "2026-11"
    assert period_of(parse_timestamp("2026-12-01T00:00:00Z")) == "2026-12"
    assert period_of(parse_timestamp("2026-12-31T23:59:59Z")) == "2026-12"
    assert period_of(parse_timestamp("2027-01-01T00:00:00Z")) == "2027-01"
    assert period_of(parse_timestamp("1969-12-31T23:59:59Z")) == "1969-12"
    assert period_start("2027-01") == parse_timestamp("2027-01-01T00:00:00Z")
    assert next_period("2026-12") == "2027-01" and next_period("2026-11") == "2026-12"


@given(st.integers(min_value=parse_timestamp("1971-01-01T00:00:00Z"),
                   max_value=parse_timestamp("9998-12-31T00:00:00Z")))
def test_an_instant_lies_in_its_period(at: int) -> None:
    period = period_of(at)
    assert period_start(period) <= at < period_start(next_period(period))
    assert format_timestamp(at)[:7] == period


def test_thresholds_are_compared_exactly() -> None:
    # 0.8 as a binary float is just above four fifths: 8 of 10 still reaches it.
    assert reaches(8, 0.8, 10) and not reaches(7, 0.8, 10)
    assert reaches(3, 0.3, 10) and reaches(10, 1.0, 10) and not reaches(9_999_999, 1.0, 10_000_000)


def test_budget_requests_name_the_offending_field() -> None:
    now = START
    assert parse_budget({"limit_tokens": 50}, now) == Budget(50, (0.8, 1.0), "2026-11", now)
    assert parse_budget({"limit_tokens": 50, "thresholds": [1, 0.5]}, now).thresholds == (0.5, 1.0)
    assert parse_budget({"limit_tokens": 50.0}, now).limit_tokens == 50
    for body, name in [([], "body"), ({}, "limit_tokens"), ({"limit_tokens": 0}, "limit_tokens"),
                       ({"limit_tokens": True}, "limit_tokens"), ({"limit_tokens": 2**63}, "limit_tokens"),
                       ({"limit_tokens": 5, "thresholds": []}, "thresholds"),
                       ({"limit_tokens": 5, "thresholds": [0]}, "thresholds"),
                       ({"limit_tokens": 5, "thresholds": [10.5]}, "thresholds"),
                       ({"limit_tokens": 5, "thresholds": [1, 1.0]}, "thresholds"),
                       ({"limit_tokens": 5, "thresholds": [0.1] * 11}, "thresholds"),
                       ({"limit_tokens": 5, "thresholds": ["0.5"]}, "thresholds"),
                       ({"limit_tokens": 5.5}, "limit_tokens"), ({"limit_tokens": 5, "limit": 5}, "limit")]:
        with pytest.raises(BudgetError) as refused:
            parse_budget(body, now)
        assert refused.value.field == name, body


def test_alert_ids_name_the_threshold_as_a_float() -> None:
    assert alert_id("acme", "2026-12", 1) == "acme:2026-12:1.0"
    assert alert_id("acme", "2026-12", 0.8) == "acme:2026-12:0.8"


# --------------------------------------------------------------------------
# The model


@dataclass
class ModelSession:
    tokens: int = 0
    closed_at: int | None = None


@dataclass
class Model:
    """Everything that happened, summed from scratch whenever asked."""

    sessions: dict[str, ModelSession] = field(default_factory=dict)
    reached: dict[str, tuple[int, int]] = field(default_factory=dict)  # alert id -> (usage, crossed_at)

    def usage(self, period: str, now: int) -> int:
        return sum(s.tokens for s in self.sessions.values()
                   if (s.closed_at is not None and period_of(s.closed_at) == period)
                   or (s.closed_at is None and period == period_of(now)))

    def periods(self, now: int) -> set[str]:
        return {period_of(now)} | {period_of(s.closed_at) for s in self.sessions.values() if s.closed_at is not None}

    def compare(self, budget: Budget, now: int, crossed_at: int) -> None:
        for period in self.periods(now):
            if not budget.applies_to(period):
                continue
            usage = self.usage(period, now)
            for threshold in budget.thresholds:
                name = alert_id(TENANT, period, threshold)
                if name not in self.reached and reaches(usage, threshold, budget.limit_tokens):
                    at = max(crossed_at, period_start(period)) if period == period_of(now) else crossed_at
                    self.reached[name] = (usage, at)


# --------------------------------------------------------------------------
# Histories through the real rules


@dataclass
class Op:
    kind: str  # "create", "activate", "round", "close", "late_close", "advance"
    session: int
    amount: int


ops = st.lists(st.one_of(
    st.builds(Op, st.just("create"), st.integers(0, 5), st.integers(1, 90)),  # ttl in minutes
    st.builds(Op, st.just("activate"), st.integers(0, 5), st.integers(0, 400)),
    st.builds(Op, st.just("round"), st.integers(0, 5), st.integers(0, 300)),
    st.builds(Op, st.just("close"), st.integers(0, 5), st.just(0)),
    st.builds(Op, st.just("advance"), st.just(0), st.integers(1, 40)),  # minutes
), min_size=1, max_size=40)


@dataclass
class Happened:
    entry: UsageEntry
    #: The worker's clock when it happened.
    now: int
    #: Every session's tokens and closed_at right after it, from the records themselves.
    sessions: dict[str, ModelSession]


def run(history: list[Op]) -> list[Happened]:
    """Apply the history through `apply`: each state change's entry, with
    the clock and every session's record right after it."""
    now = START
    states: dict[str, Session] = {}
    rounds: dict[str, int] = {}
    entries: list[Happened] = []
    sessions: dict[str, ModelSession] = {}
    offset = 0

    def record(session_id: str, before: object, after: object, occurred_at: int, at_offset: int | None) -> None:
        step = usage_step(before, after)  # type: ignore[arg-type]
        if step is None:
            return
        assert isinstance(after, Session)
        sessions[session_id] = ModelSession(after.record.total_token_count, after.record.closed_at)
        entries.append(Happened(UsageEntry(step, at_offset, occurred_at), now, dict(sessions)))

    for op in history:
        session_id = f"s-{op.session}"
        if op.kind == "advance":
            now += op.amount * MINUTE
            for expiring, state in sorted(states.items()):
                new_state, _ = apply(state, Expire(expiring), now, POLICY)
                if new_state is not state:
                    assert isinstance(new_state, Session)
                    record(expiring, state, new_state, new_state.record.closed_at or now, None)
                    states[expiring] = new_state
            continue
        if op.kind == "create":
            body = created(session_id, at=now, tenant=TENANT, ttl=op.amount * 60)
        elif op.kind == "activate":
            body = activated(session_id, at=now, tenant=TENANT, initial=op.amount)
        elif op.kind == "round":
            rounds[session_id] = rounds.get(session_id, 0) + 1
            body = round_(session_id, n=rounds[session_id], delta=op.amount, at=now, tenant=TENANT)
        else:
            body = closed(session_id, at=now, tenant=TENANT)
        before = states.get(session_id)
        after, _ = apply(before, event_delivery(body, offset=offset), now, POLICY)
        if isinstance(after, Session):
            record(session_id, before, after, now, offset)
            states[session_id] = after
        offset += 1
    return entries


@given(ops, st.integers(1, 1200), st.lists(st.sampled_from([0.25, 0.5, 0.8, 1.0, 1.5]), min_size=1, max_size=4,
                                             unique=True),
       st.lists(st.integers(1, 6), min_size=1, max_size=20), st.lists(st.booleans(), max_size=20))
@SETTINGS
def test_usage_and_alerts_equal_the_naive_model(history: list[Op], limit: int, thresholds: list[float],
                                                chunks: list[int], resend: list[bool]) -> None:
    budget = Budget(limit, tuple(sorted(thresholds)), period_of(START), START)
    entries = run(history)
    state = TenantUsage(TENANT)
    model = Model()
    alerts: dict[str, tuple[int, int]] = {}
    position = 0
    batch = 0
    while position < len(entries):
        size = chunks[batch % len(chunks)]
        chosen = entries[position:position + size]
        now = chosen[-1].now
        # A crash before the last batch was written: read again from an
        # earlier point with other boundaries (steps of the timer are never
        # re-sent here: they have no offset to recognise them by).
        start = position
        if batch < len(resend) and resend[batch]:
            while start > 0 and entries[start - 1].entry.offset is not None and position - start < 3:
                start -= 1
        delta = UsageDelta(TENANT, 0, tuple(happened.entry for happened in entries[start:position + size]))
        # The model: the same steps, each once, summed from scratch.
        model.compare(budget, now, max(period_start(period_of(now)), budget.set_at))
        for happened in chosen:
            model.sessions = happened.sessions
            model.compare(budget, now, happened.entry.occurred_at)
        state, emitted = apply_delta(state, delta, budget, now, batch)
        for alert in emitted:
            assert alert.alert_id not in alerts, "an alert id is emitted once"
            alerts[alert.alert_id] = (alert.usage_tokens, alert.crossed_at)
        for period in model.periods(now):
            assert state.usage(period, now) == model.usage(period, now), period
        assert state.open_sessions == sum(s.closed_at is None for s in model.sessions.values())
        assert TenantUsage.from_json(state.to_json()) == state
        position += size
        batch += 1
    assert alerts == model.reached


def test_open_sessions_carry_into_the_new_month_and_alert_at_its_start() -> None:
    budget = Budget(100, (0.5, 1.0), "2026-11", START)
    state = TenantUsage(TENANT, open_sessions=1, open_tokens=60)
    before_midnight = parse_timestamp("2026-11-30T23:59:59Z")
    after_midnight = parse_timestamp("2026-12-01T00:00:01Z")
    state, alerts = carried_alerts(state, budget, before_midnight)
    assert [a.alert_id for a in alerts] == ["acme:2026-11:0.5"]
    state, alerts = carried_alerts(state, budget, after_midnight)
    assert [(a.alert_id, a.crossed_at) for a in alerts] == [("acme:2026-12:0.5", period_start("2026-12"))]
    assert state.usage("2026-11", after_midnight) == 0 and state.usage("2026-12", after_midnight) == 60
    assert carried_alerts(state, budget, after_midnight) == (state, ())


def test_a_late_closure_counts_in_its_own_month_and_alerts_there() -> None:
    """A TTL close found after midnight with `closed_at` in November: the
    tokens leave December's open figure and reach November's closures."""
    budget = Budget(100, (1.0,), "2026-11", START)
    after_midnight = parse_timestamp("2026-12-01T00:05:00Z")
    expired_at = parse_timestamp("2026-11-30T23:50:00Z")
    state = TenantUsage(TENANT, open_sessions=2, open_tokens=150, closed={})
    close = UsageStep(TENANT, -1, -90, "2026-11", 90, CloseReason.TTL_EXPIRED)
    state, alerts = apply_delta(state, UsageDelta(TENANT, 0, (UsageEntry(close, None, expired_at),)), budget,
                                after_midnight, 0)
    # December reached 150 >= 100 by carrying (before the close), November only its 90.
    assert [(a.alert_id, a.usage_tokens, a.crossed_at) for a in alerts] == [
        ("acme:2026-12:1.0", 150, period_start("2026-12"))]
    assert state.usage("2026-11", after_midnight) == 90 and state.usage("2026-12", after_midnight) == 60


def test_an_event_of_the_old_month_that_crosses_the_new_one_crosses_at_its_start() -> None:
    budget = Budget(100, (1.0,), "2026-11", START)
    after_midnight = parse_timestamp("2026-12-01T00:00:02Z")
    late = UsageEntry(UsageStep(TENANT, 0, 100), 7, parse_timestamp("2026-11-30T23:59:59Z"))
    _, alerts = apply_delta(TenantUsage(TENANT), UsageDelta(TENANT, 0, (late,)), budget, after_midnight, 0)
    assert [(a.alert_id, a.crossed_at) for a in alerts] == [("acme:2026-12:1.0", period_start("2026-12"))]


def test_a_budget_applies_from_the_month_it_is_set_in() -> None:
    december = parse_timestamp("2026-12-01T00:00:00Z")
    budget = Budget(25, (1.0,), "2026-12", december)
    old = UsageEntry(UsageStep(TENANT, -1, -20, "2026-11", 20, CloseReason.CLOSED), 1, START)
    earlier = {"2026-11": PeriodTotals(10, 1, 0)}
    state, alerts = apply_delta(TenantUsage(TENANT, 1, 20, earlier), UsageDelta(TENANT, 0, (old,)), budget, december,
                                0)
    assert alerts == () and state.usage("2026-11", december) == 30 and state.usage("2026-12", december) == 0


def test_a_delta_written_twice_by_a_retried_send_counts_once() -> None:
    close = UsageEntry(UsageStep(TENANT, -1, -5, "2026-11", 5, CloseReason.TTL_EXPIRED), None, START)
    delta = UsageDelta(TENANT, 3, (close,), "d-1")
    once, _ = apply_delta(TenantUsage(TENANT, 1, 5), delta, None, START, 10)
    assert apply_delta(once, delta, None, START, 11) == (once, ())  # the copy, one position on
    again, _ = apply_delta(once, UsageDelta(TENANT, 3, (close,), "d-2"), None, START, 12)
    assert again.closed["2026-11"].ttl_expired == 2  # another delta: the timer's steps have no offset


def test_the_owner_reading_its_input_again_skips_what_it_applied() -> None:
    """A crash of the tenant's owner after it stored the state, before its
    input offset was committed: the same records come again, at the same
    positions, and none counts twice (a TTL step has no input offset to tell)."""
    close = UsageEntry(UsageStep(TENANT, -1, -5, "2026-11", 5, CloseReason.TTL_EXPIRED), None, START)
    first, second = UsageDelta(TENANT, 0, (close,), "d-1"), UsageDelta(TENANT, 1, (close,), "d-2")
    state, _ = apply_delta(TenantUsage(TENANT, 2, 10), first, None, START, 40)
    state, _ = apply_delta(state, second, None, START, 41)
    assert apply_delta(state, first, None, START, 40) == (state, ())
    assert apply_delta(state, second, None, START, 41) == (state, ())
    assert (state.open_sessions, state.open_tokens, state.closed["2026-11"].tokens) == (0, 0, 10)


def test_the_usage_view_reports_the_month_against_its_budget() -> None:
    december = parse_timestamp("2026-12-02T00:00:00Z")
    budget = Budget(100, (0.5, 1.0), "2026-11", START)
    state = TenantUsage(TENANT, 2, 30, {"2026-12": PeriodTotals(25, 1, 2), "2026-11": PeriodTotals(500, 9, 0)})
    view = usage_view(TENANT, state, budget, december)
    assert view == {"tenant_id": TENANT, "live_sessions": 2, "live_token_count": 30,
                    "closures": {"closed": 1, "ttl_expired": 2}, "period": "2026-12", "usage_tokens": 55,
                    "budget": budget.to_json(), "remaining_tokens": 45, "state": "warning"}
    assert usage_view(TENANT, None, None, december)["state"] == "none"
    assert [budget_state(usage, budget, "2026-12") for usage in (49, 50, 99, 100, 150)] == [
        "ok", "warning", "warning", "exceeded", "exceeded"]
    assert budget_state(10**9, Budget(1, (1.0,), "2027-01", START), "2026-12") == "none"
