"""SPEC §5.3 (revision 2): rounds in any order, each billed once, missing
rounds kept as bounded ranges (app/rules/rounds.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from app.rules import NO_MISSING_ROUNDS, SECOND, MissingRounds, Outcome, Result, Session, apply
from tests.rules.strategies import (
    POLICY,
    T0,
    activated,
    closed,
    closures_in,
    created,
    event_delivery,
    outcome_of,
    round_,
)

BOUNDS = st.sampled_from([0, 1, 2, 3, POLICY.max_missing_ranges])


def kept(missing: MissingRounds) -> set[int]:
    return {n for start, end in zip(missing.ranges[::2], missing.ranges[1::2], strict=True) for n in range(start, end)}


@settings(max_examples=500, deadline=None)
@given(numbers=st.lists(st.integers(1, 40), max_size=60), bound=BOUNDS)
def test_missing_rounds_follow_the_numbers_applied(numbers: list[int], bound: int) -> None:
    """Against a plain set: what is kept is missing, what was given up is
    missing too and never comes back, and the oldest goes first."""
    missing = NO_MISSING_ROUNDS
    round_count = 0
    applied: set[int] = set()
    for number in numbers:
        if number > round_count:
            missing = missing.after_jump(round_count, number, bound)
            round_count = number
        elif missing.holds(number):
            missing = missing.after_late(number, bound)
        else:
            continue
        applied.add(number)
        never = set(range(1, round_count + 1)) - applied
        assert kept(missing) <= never and missing.count == len(never)
        assert missing.given_up == len(never - kept(missing))
        assert missing.range_count <= bound
        assert list(missing.ranges) == sorted(set(missing.ranges)), "ranges overlap or touch"
        if never - kept(missing):  # given up: always older (lower) than what is kept
            assert max(never - kept(missing)) < min(kept(missing), default=round_count + 1)
        for n in range(1, round_count + 2):
            assert missing.holds(n) == (n in kept(missing))
    if missing.given_up == 0:
        assert kept(missing) == set(range(1, round_count + 1)) - applied


def test_no_gap_shares_the_empty_value() -> None:
    assert NO_MISSING_ROUNDS.after_jump(4, 5, 10) is NO_MISSING_ROUNDS
    assert MissingRounds((3, 4), 0).after_late(3, 10) is NO_MISSING_ROUNDS


deliveries = st.lists(st.tuples(st.integers(1, 25), st.integers(0, 1000)), max_size=50)


@settings(max_examples=400, deadline=None)
@given(rounds=deliveries, bound=BOUNDS)
def test_any_interleaving_of_rounds_bills_each_number_at_most_once(rounds: list[tuple[int, int]],
                                                                  bound: int) -> None:
    """Rounds delivered in any order, any number of times, each time with any
    delta: the session bills the delta of each round number it applied, once;
    never more than the deltas of the distinct numbers delivered; and while
    the bound was never passed, every number delivered, with its first
    delta, and `missing_rounds` counts the numbers never delivered."""
    policy = replace(POLICY, max_missing_ranges=bound)
    now = T0 + 60 * SECOND
    session, _ = apply(None, event_delivery(created(), offset=0), now, policy)
    session, _ = apply(session, event_delivery(activated(initial=0), offset=1), now, policy)
    applied: dict[int, int] = {}
    largest: dict[int, int] = {}
    first: dict[int, int] = {}
    for offset, (number, delta) in enumerate(rounds, start=2):
        first.setdefault(number, delta)
        largest[number] = max(delta, largest.get(number, 0))
        body = round_(n=number, delta=delta, at=T0 + 10 * SECOND)
        session, outputs = apply(session, event_delivery(body, offset=offset), now, policy)
        assert isinstance(session, Session)
        result = outcome_of(outputs).result
        assert result in (Result.APPLIED, Result.DUPLICATE)
        if result is Result.APPLIED:
            assert number not in applied, "a round number billed twice"
            applied[number] = delta
        record = session.record
        assert record.delta_token_count == sum(applied.values()) <= sum(largest.values())
        assert record.round_count == max(applied, default=0)
        assert session.missing_rounds == record.round_count - len(applied)
        assert session.missing.range_count <= bound
    if session.missing.given_up == 0:
        assert applied == first
        assert session.missing_rounds == max(first, default=0) - len(first)
    session, outputs = apply(session, event_delivery(closed(at=T0 + 20 * SECOND), offset=len(rounds) + 2), now,
                             policy)
    [closure] = closures_in(outputs)
    assert outputs[-1] == Outcome(Result.APPLIED, "session.closed")
    assert closure.missing_rounds == closure.record.round_count - len(applied)
    assert closure.record.delta_token_count == sum(applied.values())
