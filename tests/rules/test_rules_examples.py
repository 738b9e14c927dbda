"""Examples of `apply`: one per rule of SPEC §5 and per rejection reason of §7,
with the exact JSON of records (§4), closures (§6) and rejections (§7)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from app import rules
from app.rules import (
    MAX_COUNT,
    SECOND,
    CloseReason,
    Expire,
    Outcome,
    Policy,
    Purge,
    Reason,
    Result,
    Session,
    State,
    Tombstone,
    format_timestamp,
)
from tests.rules.strategies import (
    POLICY,
    T0,
    Driver,
    Step,
    activated,
    closed,
    closures_in,
    created,
    event_delivery,
    extended,
    outcome_of,
    rejections_in,
    round_,
)

MINUTE = 60 * SECOND
GRACE = POLICY.grace
RETENTION = POLICY.retention


def ts(micros: int) -> str:
    return format_timestamp(micros)


class Gateway:
    """One partition of `session-events` and the agent consuming it."""

    def __init__(self, partition: int = 0, first_offset: int = 100, policy: Policy = POLICY) -> None:
        self.driver = Driver(policy=policy)
        self.partition = partition
        self.offset = first_offset
        self.now = T0

    def send(self, body: Any, *, now: int | None = None, key: Any = ..., offset: int | None = None) -> tuple:
        """Deliver at the next offset, by default a second after it occurred."""
        if now is None:
            at = body.get("occurred_at") if isinstance(body, dict) else None
            now = rules.parse_timestamp(at) + SECOND if isinstance(at, str) else self.now
        self.now = max(self.now, now)
        if offset is None:
            offset = self.offset
            self.offset += 1
        delivery = event_delivery(body, partition=self.partition, offset=offset, key=key)
        return self.driver.deliver(Step(delivery, now))

    def command(self, command: rules.Command, now: int) -> tuple:
        return self.driver.command(command, now)

    def state(self, session_id: str = "s-1") -> Session | None:
        return self.driver.states.get(session_id)


def expect(outputs: tuple, result: Result, reason: Reason | None = None) -> Outcome:
    outcome = outcome_of(outputs)
    assert (outcome.result, outcome.reason) == (result, reason), outputs
    if result is Result.REJECTED:
        [rejection] = rejections_in(outputs)
        assert rejection.reason is reason
    else:
        assert rejections_in(outputs) == []
    return outcome


def rejected(outputs: tuple, reason: Reason, field: str) -> dict:
    """The rejection's JSON; its detail names the offending field."""
    expect(outputs, Result.REJECTED, reason)
    [rejection] = rejections_in(outputs)
    body = rejection.to_json(T0)
    assert f"'{field}'" in body["detail"], body["detail"]
    assert "raw" not in body  # the event parsed
    orjson.dumps(body)
    return body


def assert_recorded(before: Session, after: Session, outputs: tuple, offset: int) -> None:
    """A rejection against an existing session: the record is unchanged and
    the offset accounted for, so a re-delivery is not judged again."""
    [_] = rejections_in(outputs)
    assert after == replace(before, last_offset=offset)


def record_json(**changes: Any) -> dict:
    base = {
        "session_id": "s-1",
        "tenant_id": "acme",
        "provider_id": "openai",
        "model": "gpt-x",
        "created_at": "2024-05-01T12:00:00Z",
        "activated_at": None,
        "closed_at": None,
        "ttl_secs": 600,
        "round_count": 0,
        "initial_token_count": 0,
        "delta_token_count": 0,
        "metadata": {},
    }
    return base | changes


def active(gw: Gateway | None = None, *, initial: int = 1000, ttl: int = 600) -> Gateway:
    gw = gw or Gateway()
    expect(gw.send(created(ttl=ttl)), Result.APPLIED)
    expect(gw.send(activated(initial=initial)), Result.APPLIED)
    return gw


# --------------------------------------------------------------------------
# §5.1 session.created


def test_creation_of_an_unknown_id_makes_a_pending_record() -> None:
    gw = Gateway(partition=3, first_offset=57)
    outputs = gw.send(created(metadata={"team": "search"}), now=T0 + 2 * SECOND)
    assert outputs == (Outcome(Result.APPLIED, "session.created"),)
    session = gw.state()
    assert session.state is State.PENDING
    assert session.record.to_json() == record_json(metadata={"team": "search"})
    assert orjson.loads(orjson.dumps(session.record.to_json())) == record_json(metadata={"team": "search"})
    assert session.record.to_view() == record_json(metadata={"team": "search"}) | {
        "state": "pending", "expires_at": "2024-05-01T12:10:00Z", "total_token_count": 0}
    assert (session.partition, session.created_offset, session.last_offset) == (3, 57, 57)
    assert session.owed == () and session.close_reason is None and session.closed_seen_at is None
    assert session.created_ttl_secs == 600 and session.missing_rounds == 0


def test_the_same_creation_again_is_a_duplicate_whatever_its_event_id() -> None:
    gw = Gateway()
    gw.send(created(event_id="e-1"))
    before = gw.state()
    outputs = gw.send(created(event_id="e-2"))
    assert outputs == (Outcome(Result.DUPLICATE, "session.created"),)
    assert gw.state() is before


def test_a_creation_re_sent_after_an_extension_is_still_a_duplicate() -> None:
    gw = Gateway()
    gw.send(created(ttl=600))
    gw.send(extended(ttl=900, at=T0 + 5 * SECOND))
    before = gw.state()
    expect(gw.send(created(ttl=600), now=T0 + 10 * SECOND), Result.DUPLICATE)
    assert gw.state() is before and before.record.ttl_secs == 900


@pytest.mark.parametrize("change", [
    {"tenant_id": "globex"},  # docs/design.md: another tenant is session_exists too
    {"provider_id": "anthropic"},
    {"model": "gpt-y"},
    {"ttl_secs": 601},
    {"metadata": {"team": "other"}},
    {"occurred_at": "2024-05-01T12:00:00.000001Z"},
])
def test_a_different_creation_for_an_existing_id_is_session_exists(change: dict) -> None:
    gw = Gateway()
    gw.send(created())
    before = gw.state()
    body = created() | change
    outputs = gw.send(body, now=T0 + SECOND)
    wire = rejected(outputs, Reason.SESSION_EXISTS, "session_id")
    assert_recorded(before, gw.state(), outputs, offset=101)
    assert wire == {
        "reason": "session_exists",
        "detail": wire["detail"],
        # The validated event: the optional metadata defaults to {} (§3).
        "event": {"metadata": {}} | body,
        "source": {"topic": "session-events", "partition": 0, "offset": 101},
        "rejected_at": "2024-05-01T12:00:00Z",
    }


# --------------------------------------------------------------------------
# §5.2 session.activated


def test_activation_moves_pending_to_active() -> None:
    gw = Gateway()
    gw.send(created())
    outputs = gw.send(activated(at=T0 + 2 * SECOND, initial=1234))
    assert outputs == (Outcome(Result.APPLIED, "session.activated"),)
    session = gw.state()
    assert session.state is State.ACTIVE
    assert session.record.to_json() == record_json(activated_at="2024-05-01T12:00:02Z", initial_token_count=1234)
    assert session.last_offset == 101


def test_activation_again_with_the_same_count_is_a_duplicate_on_active_and_closed() -> None:
    gw = active(initial=1000)
    before = gw.state()
    expect(gw.send(activated(initial=1000, at=T0 + 3 * SECOND)), Result.DUPLICATE)
    assert gw.state() is before
    gw.send(closed(at=T0 + 4 * SECOND))
    before = gw.state()
    expect(gw.send(activated(initial=1000)), Result.DUPLICATE)
    assert gw.state() is before


def test_activation_with_another_count_on_an_active_session_is_invalid_transition() -> None:
    gw = active(initial=1000)
    before = gw.state()
    outputs = gw.send(activated(initial=999, at=T0 + 5 * SECOND))
    rejected(outputs, Reason.INVALID_TRANSITION, "initial_token_count")
    assert_recorded(before, gw.state(), outputs, offset=gw.offset - 1)


@pytest.mark.parametrize("activate", [True, False])
def test_activation_with_another_count_on_a_closed_session_is_session_closed(activate: bool) -> None:
    """SPEC §5.2 (revision 2): closed first, like every other event (§5.7)."""
    gw = active(initial=1000) if activate else Gateway()
    if not activate:
        gw.send(created())
    gw.send(closed(at=T0 + 4 * SECOND))
    before = gw.state()
    outputs = gw.send(activated(initial=999, at=T0 + 5 * SECOND))
    rejected(outputs, Reason.SESSION_CLOSED, "session_id")
    assert_recorded(before, gw.state(), outputs, offset=gw.offset - 1)


# --------------------------------------------------------------------------
# §5.3 round.completed


def test_rounds_add_their_deltas_and_count() -> None:
    gw = active(initial=1000)
    expect(gw.send(round_(n=1, delta=200, at=T0 + 10 * SECOND)), Result.APPLIED)
    expect(gw.send(round_(n=2, delta=300, at=T0 + 20 * SECOND, model="gpt-x")), Result.APPLIED)
    record = gw.state().record
    assert (record.round_count, record.delta_token_count, record.total_token_count) == (2, 500, 1500)
    assert gw.state().last_offset == 103


def test_a_round_on_a_pending_session_is_invalid_transition() -> None:
    gw = Gateway()
    gw.send(created())
    before = gw.state()
    outputs = gw.send(round_(n=1, delta=5, at=T0 + SECOND))
    rejected(outputs, Reason.INVALID_TRANSITION, "type")
    assert_recorded(before, gw.state(), outputs, offset=101)


def test_a_round_for_another_model_is_model_mismatch() -> None:
    gw = active()
    before = gw.state()
    outputs = gw.send(round_(n=1, delta=5, at=T0 + 5 * SECOND, model="gpt-y"))
    wire = rejected(outputs, Reason.MODEL_MISMATCH, "model")
    assert_recorded(before, gw.state(), outputs, offset=102)
    assert wire["event"] == {
        "type": "round.completed", "event_id": wire["event"]["event_id"], "session_id": "s-1",
        "tenant_id": "acme", "occurred_at": "2024-05-01T12:00:05Z", "round": 1, "delta_token_count": 5,
        "model": "gpt-y",
    }


def test_a_round_not_above_round_count_is_a_duplicate_even_with_another_delta() -> None:
    gw = active()
    gw.send(round_(n=1, delta=5, at=T0 + 5 * SECOND))
    gw.send(round_(n=2, delta=5, at=T0 + 6 * SECOND))
    before = gw.state()
    for n in (1, 2):
        expect(gw.send(round_(n=n, delta=999, at=T0 + 7 * SECOND)), Result.DUPLICATE)
    assert gw.state() is before


def test_skipped_rounds_are_missing_until_they_arrive_and_count_then() -> None:
    """SPEC §5.3 (revision 2): a round that lands after a later one is billed."""
    gw = active(initial=10)
    gw.send(round_(n=1, delta=1, at=T0 + 5 * SECOND))
    expect(gw.send(round_(n=4, delta=2, at=T0 + 6 * SECOND)), Result.APPLIED)  # 2 and 3 skipped
    assert gw.state().missing_rounds == 2 and gw.state().missing.ranges == (2, 4)
    expect(gw.send(round_(n=3, delta=100, at=T0 + 7 * SECOND)), Result.APPLIED)  # late: counts
    session = gw.state()
    assert (session.record.round_count, session.record.delta_token_count) == (4, 103)
    assert session.missing_rounds == 1 and session.missing.ranges == (2, 3)
    expect(gw.send(round_(n=3, delta=100, at=T0 + 7 * SECOND)), Result.DUPLICATE)  # once only
    expect(gw.send(round_(n=7, delta=4, at=T0 + 8 * SECOND)), Result.APPLIED)  # 5 and 6 skipped
    outputs = gw.send(closed(at=T0 + 9 * SECOND))
    [closure] = closures_in(outputs)
    body = closure.to_json(T0 + 10 * SECOND)
    assert body["missing_rounds"] == 3  # 2, 5 and 6 never arrived
    assert body["record"]["round_count"] == 7
    assert body["total_token_count"] == 117


def test_a_late_round_in_the_middle_of_a_gap_splits_it() -> None:
    gw = active()
    gw.send(round_(n=10, delta=1, at=T0 + 5 * SECOND))
    expect(gw.send(round_(n=5, delta=1, at=T0 + 6 * SECOND)), Result.APPLIED)
    assert gw.state().missing.ranges == (1, 5, 6, 10) and gw.state().missing_rounds == 8
    for n in (1, 9):  # the ends of both pieces
        expect(gw.send(round_(n=n, delta=1, at=T0 + 7 * SECOND)), Result.APPLIED)
    assert gw.state().missing.ranges == (2, 5, 6, 9) and gw.state().record.delta_token_count == 4


def test_past_the_bound_the_oldest_gap_is_given_up_and_its_rounds_are_duplicates() -> None:
    gw = active(Gateway(policy=replace(POLICY, max_missing_ranges=2)), initial=0)
    for n, at in ((2, 5), (4, 6), (6, 7)):  # gaps {1}, {3}, {5}: three ranges, two kept
        expect(gw.send(round_(n=n, delta=10, at=T0 + at * SECOND)), Result.APPLIED)
    session = gw.state()
    assert session.missing.ranges == (3, 4, 5, 6) and session.missing.given_up == 1
    assert session.missing_rounds == 3
    before = gw.state()
    expect(gw.send(round_(n=1, delta=500, at=T0 + 8 * SECOND)), Result.DUPLICATE)  # given up: never billed
    assert gw.state() is before
    expect(gw.send(round_(n=3, delta=7, at=T0 + 9 * SECOND)), Result.APPLIED)  # still kept: billed
    [closure] = closures_in(gw.send(closed(at=T0 + 10 * SECOND)))
    assert (closure.missing_rounds, closure.record.delta_token_count) == (2, 37)


def test_a_late_round_still_obeys_the_overflow_rule_and_stays_missing() -> None:
    gw = active(initial=0)
    gw.send(round_(n=2, delta=MAX_COUNT - 5, at=T0 + 5 * SECOND))
    before = gw.state()
    outputs = gw.send(round_(n=1, delta=6, at=T0 + 6 * SECOND))
    rejected(outputs, Reason.OVERFLOW, "delta_token_count")
    assert_recorded(before, gw.state(), outputs, offset=gw.offset - 1)
    assert gw.state().missing.holds(1)
    expect(gw.send(round_(n=1, delta=5, at=T0 + 7 * SECOND)), Result.APPLIED)
    assert gw.state().record.total_token_count == MAX_COUNT and gw.state().missing_rounds == 0


def test_a_missing_round_after_the_close_is_session_closed_an_applied_one_a_duplicate() -> None:
    gw = active()
    gw.send(round_(n=1, delta=1, at=T0 + 5 * SECOND))
    gw.send(round_(n=3, delta=1, at=T0 + 6 * SECOND))
    gw.send(closed(at=T0 + 7 * SECOND))
    before = gw.state()
    rejected(gw.send(round_(n=2, delta=1, at=T0 + 6 * SECOND)), Reason.SESSION_CLOSED, "session_id")
    assert gw.state().record == before.record
    for n in (1, 3):
        expect(gw.send(round_(n=n, delta=1, at=T0 + 6 * SECOND)), Result.DUPLICATE)


# --------------------------------------------------------------------------
# §5.4 session.extended


@pytest.mark.parametrize("activate", [False, True])
def test_extension_sets_the_ttl_of_a_pending_or_active_session(activate: bool) -> None:
    gw = Gateway()
    gw.send(created(ttl=60))
    if activate:
        gw.send(activated())
    outputs = gw.send(extended(ttl=3600, at=T0 + 30 * SECOND))
    assert outputs == (Outcome(Result.APPLIED, "session.extended"),)
    session = gw.state()
    assert session.record.ttl_secs == 3600 and session.created_ttl_secs == 60
    assert session.record.expires_at == T0 + 3600 * SECOND
    assert session.record.to_view()["expires_at"] == "2024-05-01T13:00:00Z"
    # The TTL counts from created_at, so a shorter one is also honoured.
    gw.send(extended(ttl=45, at=T0 + 40 * SECOND))
    assert gw.state().record.expires_at == T0 + 45 * SECOND


def test_an_extension_of_a_closed_session_is_session_closed() -> None:
    gw = active()
    gw.send(closed(at=T0 + 5 * SECOND))
    before = gw.state()
    outputs = gw.send(extended(ttl=3600, at=T0 + 6 * SECOND))
    rejected(outputs, Reason.SESSION_CLOSED, "session_id")
    assert_recorded(before, gw.state(), outputs, offset=103)


def test_a_re_sent_extension_does_not_undo_a_later_one() -> None:
    """Gateways may re-send any event (§3). Re-applying an older extension
    would roll the TTL back and change which later rounds count."""
    gw = active(ttl=60)
    first = extended(ttl=120, at=T0 + 30 * SECOND)
    second = extended(ttl=600, at=T0 + 50 * SECOND)
    expect(gw.send(first), Result.APPLIED)
    expect(gw.send(second), Result.APPLIED)
    before = gw.state()
    expect(gw.send(first, now=T0 + 70 * SECOND), Result.DUPLICATE)
    expect(gw.send(second, now=T0 + 71 * SECOND), Result.DUPLICATE)
    assert gw.state() is before and before.record.ttl_secs == 600
    # A round at 3 minutes still counts: the session lives 10 minutes.
    expect(gw.send(round_(n=1, delta=50, at=T0 + 180 * SECOND)), Result.APPLIED)
    # And the re-send of the older extension on a closed session is a duplicate too.
    gw.send(closed(at=T0 + 190 * SECOND))
    expect(gw.send(first, now=T0 + 200 * SECOND), Result.DUPLICATE)


def test_the_latest_extension_wins_whatever_the_arrival_order() -> None:
    """An older extension (another event id) arriving after a newer one is
    superseded, and a tie on occurred_at goes to the longer TTL, so the TTL
    in force depends on the set of extensions, not on their order."""
    gw = active(ttl=60)
    expect(gw.send(extended(ttl=600, at=T0 + 50 * SECOND)), Result.APPLIED)
    expect(gw.send(extended(ttl=900, at=T0 + 30 * SECOND)), Result.DUPLICATE)
    assert gw.state().record.ttl_secs == 600
    expect(gw.send(extended(ttl=500, at=T0 + 50 * SECOND)), Result.DUPLICATE)
    expect(gw.send(extended(ttl=700, at=T0 + 50 * SECOND)), Result.APPLIED)
    assert gw.state().record.ttl_secs == 700 and gw.state().extended_at == T0 + 50 * SECOND
    expect(gw.send(extended(ttl=30, at=T0 + 55 * SECOND)), Result.APPLIED)  # later: wins, even if shorter
    assert gw.state().record.ttl_secs == 30


# --------------------------------------------------------------------------
# §5.5 session.closed and the closure (§6)


def test_closing_an_active_session_publishes_its_closure() -> None:
    gw = active(initial=1000)
    gw.send(round_(n=1, delta=200, at=T0 + 10 * SECOND))
    gw.send(round_(n=3, delta=300, at=T0 + 20 * SECOND))
    close_at = T0 + 30 * SECOND + 250_000
    outputs = gw.send(closed(at=close_at, reason="client hung up"), now=T0 + 31 * SECOND)
    assert outputs[-1] == Outcome(Result.APPLIED, "session.closed")
    [closure] = closures_in(outputs)
    session = gw.state()
    assert session.state is State.CLOSED and session.close_reason is CloseReason.CLOSED
    assert session.closed_seen_at == T0 + 31 * SECOND and session.last_offset == 104
    assert closure == session.closure()
    body = closure.to_json(T0 + 32 * SECOND)
    assert body == {
        "closure_id": "s-1",
        "reason": "closed",
        "record": record_json(
            activated_at="2024-05-01T12:00:01Z", closed_at="2024-05-01T12:00:30.250000Z",
            round_count=3, initial_token_count=1000, delta_token_count=500,
        ),
        "total_token_count": 1500,
        "missing_rounds": 1,
        "emitted_at": "2024-05-01T12:00:32Z",
    }
    assert orjson.loads(orjson.dumps(body)) == body


def test_closing_a_pending_session_is_allowed() -> None:
    gw = Gateway()
    gw.send(created())
    [closure] = closures_in(gw.send(closed(at=T0 + 5 * SECOND)))
    assert closure.to_json(T0)["record"] == record_json(closed_at="2024-05-01T12:00:05Z")
    assert closure.to_json(T0)["total_token_count"] == 0 and closure.reason is CloseReason.CLOSED


def test_closing_a_closed_session_again_is_a_duplicate() -> None:
    gw = active()
    gw.send(closed(at=T0 + 5 * SECOND))
    before = gw.state()
    outputs = gw.send(closed(at=T0 + 6 * SECOND, reason="again"))
    assert outputs == (Outcome(Result.DUPLICATE, "session.closed"),)
    assert gw.state() is before


# --------------------------------------------------------------------------
# §5.6 TTL expiry (the Expire command)


def test_expire_closes_at_expires_at_once_grace_has_passed() -> None:
    gw = active(initial=40, ttl=60)
    gw.send(round_(n=1, delta=2, at=T0 + 59 * SECOND))
    expires_at = T0 + MINUTE
    before = gw.state()
    # Not yet: the deadline is expires_at + grace.
    assert gw.command(Expire("s-1"), expires_at + GRACE - 1) == (Outcome(Result.COMMAND, "expire"),)
    assert gw.state() is before
    outputs = gw.command(Expire("s-1"), expires_at + GRACE)
    [closure] = closures_in(outputs)
    assert outputs[-1] == Outcome(Result.COMMAND, "expire")
    session = gw.state()
    assert session.close_reason is CloseReason.TTL_EXPIRED
    assert session.record.closed_at == expires_at and session.closed_seen_at == expires_at + GRACE
    assert session.last_offset == before.last_offset  # commands do not move event offsets
    assert closure == session.closure()
    assert closure.to_json(expires_at + GRACE) == {
        "closure_id": "s-1",
        "reason": "ttl_expired",
        "record": record_json(activated_at="2024-05-01T12:00:01Z", closed_at="2024-05-01T12:01:00Z",
                              ttl_secs=60, round_count=1, initial_token_count=40, delta_token_count=2),
        "total_token_count": 42,
        "missing_rounds": 0,
        "emitted_at": "2024-05-01T12:01:05Z",
    }
    # Again: nothing more.
    assert gw.command(Expire("s-1"), expires_at + 2 * GRACE) == (Outcome(Result.COMMAND, "expire"),)
    assert gw.state() is session


def test_expire_uses_the_extended_ttl() -> None:
    gw = Gateway()
    gw.send(created(ttl=60))
    gw.send(extended(ttl=120, at=T0 + 30 * SECOND))
    before = gw.state()
    assert before.due_at(POLICY) == T0 + 120 * SECOND + GRACE
    gw.command(Expire("s-1"), T0 + 60 * SECOND + GRACE)
    assert gw.state() is before
    [closure] = closures_in(gw.command(Expire("s-1"), T0 + 120 * SECOND + GRACE))
    assert closure.record.closed_at == T0 + 120 * SECOND and closure.reason is CloseReason.TTL_EXPIRED
    assert closure.to_json(T0)["record"]["activated_at"] is None  # a pending session expires too


def test_expire_of_a_closed_session_does_nothing() -> None:
    gw = active(ttl=60)
    gw.send(closed(at=T0 + 10 * SECOND))
    before = gw.state()
    assert gw.command(Expire("s-1"), T0 + 10 * MINUTE) == (Outcome(Result.COMMAND, "expire"),)
    assert gw.state() is before


# --------------------------------------------------------------------------
# §5.7 event time: session_expired, session_closed, clock_skew


def test_an_event_at_expires_at_counts_and_one_after_is_session_expired() -> None:
    gw = active(ttl=60)
    expect(gw.send(round_(n=1, delta=5, at=T0 + MINUTE), now=T0 + MINUTE + 1), Result.APPLIED)
    before = gw.state()
    # Processed before the Expire command came: judged by occurred_at alone.
    outputs = gw.send(round_(n=2, delta=5, at=T0 + MINUTE + 1), now=T0 + MINUTE + 2)
    wire = rejected(outputs, Reason.SESSION_EXPIRED, "occurred_at")
    assert_recorded(before, gw.state(), outputs, offset=103)
    assert wire["event"]["occurred_at"] == "2024-05-01T12:01:00.000001Z"
    for late in (closed(at=T0 + MINUTE + 1), extended(ttl=600, at=T0 + 2 * MINUTE)):
        rejected(gw.send(late, now=T0 + MINUTE + 3), Reason.SESSION_EXPIRED, "occurred_at")
    assert gw.state().state is State.ACTIVE


def test_an_activation_after_expiry_is_session_expired() -> None:
    gw = Gateway()
    gw.send(created(ttl=60))
    rejected(gw.send(activated(at=T0 + 61 * SECOND), now=T0 + 62 * SECOND), Reason.SESSION_EXPIRED, "occurred_at")


def test_events_for_a_closed_session_are_session_closed() -> None:
    gw = active(ttl=60)
    gw.send(round_(n=2, delta=5, at=T0 + 10 * SECOND))
    gw.command(Expire("s-1"), T0 + MINUTE + GRACE)
    before = gw.state()
    outputs = gw.send(round_(n=3, delta=5, at=T0 + 30 * SECOND), now=T0 + MINUTE + GRACE + 1)
    rejected(outputs, Reason.SESSION_CLOSED, "session_id")
    assert_recorded(before, gw.state(), outputs, offset=103)
    # A round applied before the close is a duplicate; round 1 never arrived.
    expect(gw.send(round_(n=2, delta=5, at=T0 + 30 * SECOND)), Result.DUPLICATE)
    rejected(gw.send(round_(n=1, delta=5, at=T0 + 30 * SECOND)), Reason.SESSION_CLOSED, "session_id")


def test_an_event_more_than_max_clock_skew_ahead_is_clock_skew() -> None:
    gw = active()
    now = T0 + 10 * SECOND
    edge = now + POLICY.max_clock_skew
    expect(gw.send(extended(ttl=3600, at=edge), now=now), Result.APPLIED)
    before = gw.state()
    outputs = gw.send(round_(n=1, delta=5, at=edge + 1), now=now)
    wire = rejected(outputs, Reason.CLOCK_SKEW, "occurred_at")
    assert_recorded(before, gw.state(), outputs, offset=103)
    assert wire["source"] == {"topic": "session-events", "partition": 0, "offset": 103}


def test_a_creation_from_the_future_is_clock_skew_and_creates_nothing() -> None:
    gw = Gateway()
    outputs = gw.send(created(at=T0 + POLICY.max_clock_skew + 1), now=T0)
    rejected(outputs, Reason.CLOCK_SKEW, "occurred_at")
    assert gw.state() is None


def test_a_creation_older_than_its_ttl_grace_and_retention_is_session_expired() -> None:
    """docs/design.md: its record would already have been closed and purged."""
    gw = Gateway()
    body = created(ttl=60)
    horizon = T0 + MINUTE + GRACE + RETENTION
    rejected(gw.send(body, now=horizon), Reason.SESSION_EXPIRED, "occurred_at")
    assert gw.state() is None
    # Until the horizon it still opens (and expires on the next timer tick).
    expect(gw.send(body, now=horizon - 1), Result.APPLIED)
    assert gw.state().state is State.PENDING


# --------------------------------------------------------------------------
# §5.8 tenant_mismatch, unknown_session


@pytest.mark.parametrize("body", [
    activated(tenant="globex"),
    round_(n=1, delta=1, at=T0 + 2 * SECOND, tenant="globex"),
    extended(ttl=60, at=T0 + 2 * SECOND, tenant="globex"),
    closed(at=T0 + 2 * SECOND, tenant="globex"),
], ids=lambda b: b["type"])
def test_an_event_of_another_tenant_is_tenant_mismatch(body: dict) -> None:
    gw = Gateway()
    gw.send(created())
    if body["type"] != "session.activated":
        gw.send(activated())
    before = gw.state()
    outputs = gw.send(body)
    wire = rejected(outputs, Reason.TENANT_MISMATCH, "tenant_id")
    assert_recorded(before, gw.state(), outputs, offset=gw.offset - 1)
    assert wire["event"]["tenant_id"] == "globex"


def test_tenant_mismatch_wins_over_duplicate_on_a_closed_session() -> None:
    gw = active()
    gw.send(closed(at=T0 + 5 * SECOND))
    rejected(gw.send(closed(at=T0 + 5 * SECOND, tenant="globex")), Reason.TENANT_MISMATCH, "tenant_id")


@pytest.mark.parametrize("body", [
    activated("ghost"),
    round_("ghost", n=1, delta=1, at=T0),
    extended("ghost", ttl=60, at=T0),
    closed("ghost", at=T0),
], ids=lambda b: b["type"])
def test_an_event_for_an_unknown_session_is_unknown_session(body: dict) -> None:
    gw = Gateway()
    outputs = gw.send(body, now=T0 + SECOND)
    wire = rejected(outputs, Reason.UNKNOWN_SESSION, "session_id")
    assert gw.state("ghost") is None
    [rejection] = rejections_in(outputs)
    assert rejection.session_key == "ghost"
    assert set(wire) == {"reason", "detail", "event", "source", "rejected_at"}
    assert wire["event"]["session_id"] == "ghost" and wire["event"]["type"] == body["type"]


# --------------------------------------------------------------------------
# §5.9 overflow


def test_the_delta_sum_never_passes_2_63_minus_1() -> None:
    gw = active(initial=0)
    expect(gw.send(round_(n=1, delta=MAX_COUNT, at=T0 + 2 * SECOND)), Result.APPLIED)
    before = gw.state()
    outputs = gw.send(round_(n=2, delta=1, at=T0 + 3 * SECOND))
    rejected(outputs, Reason.OVERFLOW, "delta_token_count")
    assert_recorded(before, gw.state(), outputs, offset=103)
    assert gw.state().record.total_token_count == MAX_COUNT
    # A zero round still counts: the rejected round number was not consumed.
    expect(gw.send(round_(n=2, delta=0, at=T0 + 4 * SECOND)), Result.APPLIED)


def test_initial_plus_delta_never_passes_2_63_minus_1() -> None:
    gw = active(initial=2**62)
    expect(gw.send(round_(n=1, delta=2**62 - 1, at=T0 + 2 * SECOND)), Result.APPLIED)
    assert gw.state().record.total_token_count == MAX_COUNT
    outputs = gw.send(round_(n=2, delta=1, at=T0 + 3 * SECOND))
    rejected(outputs, Reason.OVERFLOW, "delta_token_count")
    assert gw.state().record.delta_token_count == 2**62 - 1  # the sum alone would fit


# --------------------------------------------------------------------------
# §5.10 retention: Purge, tombstones


def test_purge_deletes_a_record_closed_late_after_retention() -> None:
    gw = active(ttl=1)
    closures_in(gw.send(closed(at=T0 + SECOND), now=T0 + 6 * SECOND))
    seen = T0 + 6 * SECOND  # later than expires_at + grace: retention counts from here
    closed_session = gw.state()
    assert closed_session.due_at(POLICY) == seen + RETENTION
    assert gw.command(Purge("s-1"), seen + RETENTION - 1) == (Outcome(Result.COMMAND, "purge"),)
    assert gw.state() is closed_session
    # A re-sent creation is refused from then on anyway: nothing needs to stay.
    assert gw.command(Purge("s-1"), seen + RETENTION) == (Outcome(Result.COMMAND, "purge"),)
    assert gw.state() is None


def tombstoned(ttl: int = 7200) -> tuple[Gateway, Session, int]:
    """A session closed long before its TTL, purged after retention: the
    gateway, the closed session and when retention ended."""
    gw = active(ttl=ttl)
    gw.send(round_(n=1, delta=5, at=T0 + 2 * SECOND))
    gw.send(closed(at=T0 + 5 * SECOND), now=T0 + 6 * SECOND)
    session = gw.state()
    retention_over = T0 + 6 * SECOND + RETENTION
    assert session.due_at(POLICY) == retention_over
    gw.command(Purge("s-1"), retention_over)
    return gw, session, retention_over


def test_after_retention_an_early_closed_record_leaves_a_compact_tombstone() -> None:
    """SPEC §5.10 (revision 2): the table does not keep the whole record for
    the length of a long TTL, only what recognises the session."""
    gw, session, _ = tombstoned(ttl=7200)
    until = T0 + 7200 * SECOND + GRACE + RETENTION  # a re-sent creation is refused from then on
    assert gw.state() == Tombstone(session.creation_digest(), 0, 100, 103, until)
    assert gw.state().due_at(POLICY) == until
    # Its size does not depend on the session's: 16 KiB of metadata change nothing.
    big = Gateway()
    big.send(created(ttl=7200, metadata={"blob": "x" * 16_000}))
    big.send(closed(at=T0 + 5 * SECOND), now=T0 + 6 * SECOND)
    big.command(Purge("s-1"), T0 + 6 * SECOND + RETENTION)
    assert len(rules.encode_state(big.state())) == len(rules.encode_state(gw.state())) < 80


def test_a_tombstone_calls_a_re_sent_creation_a_duplicate_and_anything_else_session_closed() -> None:
    gw, _, now = tombstoned()
    tombstone = gw.state()
    expect(gw.send(created(ttl=7200, event_id="retried"), now=now), Result.DUPLICATE)
    assert gw.state() is tombstone
    others = [created(ttl=7200, model="gpt-y"), created(ttl=7200, tenant="globex"), activated(),
              round_(n=2, delta=5, at=T0 + 3 * SECOND), round_(n=1, delta=5, at=T0 + 2 * SECOND),
              extended(ttl=9000, at=T0 + 4 * SECOND), closed(at=T0 + 5 * SECOND),
              round_(n=2, delta=5, at=T0 + 3 * SECOND, tenant="globex")]
    for body in others:
        offset = gw.offset
        rejected(gw.send(body, now=now), Reason.SESSION_CLOSED, "session_id")
        assert gw.state() == replace(tombstone, last_offset=offset)  # a redelivery stays a redelivery
    for offset in (100, gw.offset - 1):
        outputs = gw.send(round_(n=7, delta=1, at=T0 + 4 * SECOND), now=now, offset=offset)
        assert outputs == (Outcome(Result.REDELIVERED, "round.completed"),)
    # Before the session's creation offset it is judged as if nothing were there.
    rejected(gw.send(round_(n=7, delta=1, at=T0 + 4 * SECOND), now=now, offset=99),
             Reason.UNKNOWN_SESSION, "session_id")
    assert gw.command(Expire("s-1"), now) == (Outcome(Result.COMMAND, "expire"),)


def test_a_tombstone_goes_when_a_re_sent_creation_would_be_refused_anyway() -> None:
    gw, _, _ = tombstoned(ttl=7200)
    until = gw.state().until
    gw.command(Purge("s-1"), until - 1)
    assert isinstance(gw.state(), Tombstone)
    assert gw.command(Purge("s-1"), until) == (Outcome(Result.COMMAND, "purge"),)
    assert gw.state() is None
    # The gateway re-sends the creation after that: refused, not a second session.
    rejected(gw.send(created(ttl=7200), now=until), Reason.SESSION_EXPIRED, "occurred_at")
    assert gw.state() is None


def test_a_shortened_ttl_does_not_let_a_re_sent_creation_open_the_session_again() -> None:
    """The re-sent creation carries its own TTL, not the extension's: the
    record used to go at `expires_at + grace + retention` of the shortened
    TTL, and a creation re-sent after that opened the session a second time."""
    gw = Gateway()
    gw.send(created(ttl=7200))
    gw.send(extended(ttl=60, at=T0 + 10 * SECOND))
    gw.send(closed(at=T0 + 20 * SECOND), now=T0 + 21 * SECOND)
    for now in (T0 + 21 * SECOND + RETENTION, T0 + 65 * SECOND + RETENTION, T0 + 7200 * SECOND):
        gw.driver.timer(now)
        expect(gw.send(created(ttl=7200), now=now), Result.DUPLICATE)
    gw.driver.timer(T0 + 7200 * SECOND + GRACE + RETENTION)
    assert gw.state() is None


def test_a_long_extension_keeps_the_tombstone_until_expires_at_plus_grace() -> None:
    """SPEC §5.10 reads `expires_at` of the session, extensions included."""
    gw = Gateway()
    gw.send(created(ttl=60))
    gw.send(extended(ttl=60 + 2 * 3600, at=T0 + 10 * SECOND))
    gw.send(closed(at=T0 + 20 * SECOND), now=T0 + 21 * SECOND)
    gw.command(Purge("s-1"), T0 + 21 * SECOND + RETENTION)
    assert gw.state().until == T0 + (60 + 2 * 3600) * SECOND + GRACE


def test_a_flood_of_clashing_creations_keeps_the_table_value_small() -> None:
    """Rejections are published, never kept: 200 clashing creations with 15 KB
    of metadata each (legal) once made one table value pass Kafka's 1 MB
    record limit. Now the value does not grow at all."""
    gw = active()
    size = len(rules.encode_state(gw.state()))
    for n in range(200):
        outputs = gw.send(created(model="other", metadata={"blob": "x" * 15_000}, event_id=f"clash-{n}"))
        [rejection] = rejections_in(outputs)
        assert rejection.event["metadata"] == {"blob": "x" * 15_000} and not rejection.event_omitted
    assert len(rules.encode_state(gw.state())) <= size + len(str(gw.state().last_offset))


def test_purge_of_an_open_session_does_nothing() -> None:
    gw = active()
    before = gw.state()
    assert gw.command(Purge("s-1"), T0 + 10 * RETENTION) == (Outcome(Result.COMMAND, "purge"),)
    assert gw.state() is before


# --------------------------------------------------------------------------
# Redelivery bookkeeping (docs/design.md)


def test_redelivered_offsets_change_nothing() -> None:
    gw = active()
    gw.send(round_(n=1, delta=5, at=T0 + 2 * SECOND))
    gw.send(round_(n=2, delta=5, at=T0 + 3 * SECOND, tenant="globex"))  # rejected, recorded
    session = gw.state()
    assert (session.created_offset, session.last_offset) == (100, 103)
    for offset in range(100, 104):
        # Whatever the bytes at that offset say (even a new round), it was accounted.
        outputs = gw.send(round_(n=9, delta=1000, at=T0 + 4 * SECOND), offset=offset)
        assert outputs == (Outcome(Result.REDELIVERED, "round.completed"),)
        assert gw.state() is session


def test_an_offset_before_the_creation_is_judged_as_if_the_session_did_not_exist() -> None:
    gw = Gateway()
    gw.send(created(), offset=50)
    gw.send(activated(), offset=51)
    session = gw.state()
    rejected(gw.send(round_(n=1, delta=5, at=T0 + 2 * SECOND), offset=49), Reason.UNKNOWN_SESSION, "session_id")
    assert gw.state() is session


def test_the_same_offset_on_another_partition_is_not_a_redelivery() -> None:
    gw = active()
    other = event_delivery(round_(n=1, delta=5, at=T0 + 2 * SECOND), partition=1, offset=101)
    expect(gw.driver.deliver(Step(other, T0 + 3 * SECOND)), Result.APPLIED)


def test_a_duplicate_does_not_move_the_offset_and_is_judged_again_on_redelivery() -> None:
    gw = active()
    outputs = gw.send(activated(), offset=150)
    expect(outputs, Result.DUPLICATE)
    assert gw.state().last_offset == 101
    expect(gw.send(activated(), offset=150), Result.DUPLICATE)


def test_invalid_bytes_for_an_existing_session_leave_it_alone() -> None:
    gw = active()
    before = gw.state()
    outputs = gw.send(b"\x00garbage", key=b"s-1")
    expect(outputs, Result.REJECTED, Reason.INVALID_EVENT)
    assert gw.state() is before
    outputs = gw.send(activated("s-2"), key=b"s-1")
    expect(outputs, Result.REJECTED, Reason.KEY_MISMATCH)
    assert gw.state() is before
