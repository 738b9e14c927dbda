"""The changelog codec: v2 bytes as written now, and v1 bytes (real samples
in tests/rules/data/v1, written by the code before the version existed)
still loading, their outbox becoming outputs owed once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from app.rules import (
    SECOND,
    CloseReason,
    Closure,
    Delivery,
    Expire,
    MissingRounds,
    Outcome,
    Reason,
    Rejection,
    Result,
    Session,
    SessionRecord,
    Source,
    Tombstone,
    apply,
    decode_state,
    encode_state,
    settle_owed,
)
from tests.rules.strategies import T0, closed, event_delivery, round_

V1 = Path(__file__).parent / "data" / "v1"


def v1(name: str) -> Session:
    return decode_state((V1 / f"{name}.json").read_bytes())


def record(**changes: object) -> SessionRecord:
    base = SessionRecord(session_id="s-1", tenant_id="acme", provider_id="openai", model="gpt-x", created_at=T0,
                         activated_at=None, closed_at=None, ttl_secs=600, round_count=0, initial_token_count=0,
                         delta_token_count=0, metadata={})
    return replace(base, **changes)


def bookkeeping(session: Session) -> tuple:
    return (session.created_ttl_secs, session.missing_rounds, session.close_reason, session.closed_seen_at,
            session.partition, session.created_offset, session.last_offset, session.extended_at)


# --------------------------------------------------------------------------
# v1


def test_every_v1_sample_is_tested() -> None:
    assert {path.stem for path in V1.glob("*.json")} == {
        "pending", "active_extended_with_rejection_owed", "active_confirmed",
        "closed_with_closure_and_rejection_owed", "closed_confirmed", "ttl_expired_pending_closure_owed",
        "active_rejections_owed_some_omitted", "active_extended_before_extended_at",
    }


def test_a_v1_pending_session_loads_with_nothing_owed() -> None:
    session = v1("pending")
    assert session.record == record(ttl_secs=900, metadata={"team": "search", "tags": [1, 2.5, None],
                                                            "ünï": "çødé"})
    assert bookkeeping(session) == (900, 0, None, None, 2, 40, 40, None)
    assert session.owed == ()


def test_a_v1_active_extended_session_owes_its_rejection_as_stored() -> None:
    session = v1("active_extended_with_rejection_owed")
    assert session.record == record(activated_at=T0 + 2 * SECOND, ttl_secs=1800, round_count=4,
                                     initial_token_count=1200, delta_token_count=350)
    assert bookkeeping(session) == (600, 2, None, None, 5, 1000, 1005, T0 + 9 * SECOND)
    assert session.owed == (Rejection(
        "s-1", Reason.MODEL_MISMATCH, "field 'model' differs from the session's model ('gpt-x')",
        {"type": "round.completed", "event_id": "ev-15", "session_id": "s-1", "tenant_id": "acme",
         "occurred_at": "2024-05-01T12:00:10Z", "round": 5, "delta_token_count": 7, "model": "gpt-other"},
        None, Source("session-events", 5, 1005)),)
    assert v1("active_confirmed") == replace(session, owed=())


def test_a_v1_closed_session_owes_its_closure_rebuilt_from_the_record() -> None:
    session = v1("closed_with_closure_and_rejection_owed")
    closed_record = record(activated_at=T0 + SECOND, closed_at=T0 + 20 * SECOND + 250_000, ttl_secs=300,
                           round_count=3, initial_token_count=10, delta_token_count=11)
    assert session.record == closed_record
    assert bookkeeping(session) == (300, 1, CloseReason.CLOSED, T0 + 21 * SECOND, 0, 7, 12, None)
    rejection, closure = session.owed
    assert isinstance(rejection, Rejection) and rejection.reason is Reason.TENANT_MISMATCH
    assert rejection.source == Source("session-events", 0, 11) and rejection.event["tenant_id"] == "globex"
    assert closure == Closure(closed_record, CloseReason.CLOSED, 1)
    assert closure.to_json(T0) == {
        "closure_id": "s-1", "reason": "closed", "record": closed_record.to_json(), "total_token_count": 21,
        "missing_rounds": 1, "emitted_at": "2024-05-01T12:00:00Z",
    }
    assert v1("closed_confirmed") == replace(session, owed=())


def test_a_v1_session_closed_by_ttl_owes_its_ttl_closure() -> None:
    session = v1("ttl_expired_pending_closure_owed")
    assert session.record == record(session_id="s-é", closed_at=T0 + 60 * SECOND, ttl_secs=60, metadata=None)
    assert bookkeeping(session) == (60, 0, CloseReason.TTL_EXPIRED, T0 + 65 * SECOND, 1, 3, 3, None)
    assert session.owed == (Closure(session.record, CloseReason.TTL_EXPIRED, 0),)


def test_v1_rejections_whose_event_was_left_out_are_owed_without_it_and_say_so() -> None:
    session = v1("active_rejections_owed_some_omitted")
    assert [o.source.offset for o in session.owed if isinstance(o, Rejection)] == [502, 503, 504, 505]
    first, *rest = session.owed
    assert isinstance(first, Rejection) and first.event["event_id"] == "clash-0" and not first.event_omitted
    for owed in rest:
        assert isinstance(owed, Rejection) and owed.event is None and owed.event_omitted
        assert owed.to_json(T0)["event_omitted"] is True


def test_a_v1_value_from_before_extended_at_existed_loads() -> None:
    session = v1("active_extended_before_extended_at")
    assert session.record == record(activated_at=T0 + SECOND, ttl_secs=1200, round_count=2,
                                    initial_token_count=50, delta_token_count=9)
    assert bookkeeping(session) == (600, 1, None, None, 4, 70, 73, None)


@pytest.mark.parametrize("path", sorted(V1.glob("*.json")), ids=lambda path: path.stem)
def test_a_v1_value_settled_and_written_as_v2_reads_back_the_same(path: Path) -> None:
    session = decode_state(path.read_bytes())
    settled, owed = settle_owed(session)
    assert owed == session.owed and settled == replace(session, owed=())
    data = encode_state(settled)
    assert data.startswith(b"[2,") and len(data) < len(path.read_bytes())
    assert decode_state(data) == settled


# --------------------------------------------------------------------------
# Owed outputs go out once


def test_a_session_that_still_owes_outputs_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="settle_owed"):
        encode_state(v1("ttl_expired_pending_closure_owed"))


def test_apply_hands_out_owed_outputs_first_and_returns_the_session_without_them() -> None:
    session = v1("closed_with_closure_and_rejection_owed")
    # A re-sent close at an offset past the session's: a duplicate, plus what was owed.
    late = event_delivery(closed(at=T0 + 20 * SECOND), offset=13)
    new_state, outputs = apply(session, late, T0 + 30 * SECOND)
    assert outputs == (*session.owed, Outcome(Result.DUPLICATE, "session.closed"))
    assert new_state == replace(session, owed=())
    # Applied again to the state returned: nothing is owed any more.
    assert apply(new_state, late, T0 + 30 * SECOND) == (new_state, (Outcome(Result.DUPLICATE, "session.closed"),))


def test_a_redelivery_or_a_command_also_hands_out_what_is_owed() -> None:
    session = v1("active_extended_with_rejection_owed")
    redelivered = event_delivery(round_(n=9, delta=1, at=T0 + 10 * SECOND), partition=5, offset=1003)
    new_state, outputs = apply(session, redelivered, T0 + 30 * SECOND)
    assert outputs == (*session.owed, Outcome(Result.REDELIVERED, "round.completed"))
    assert new_state == replace(session, owed=())
    new_state, outputs = apply(session, Expire("s-1"), T0 + 30 * SECOND)
    assert outputs == (*session.owed, Outcome(Result.COMMAND, "expire"))
    assert new_state == replace(session, owed=())


# --------------------------------------------------------------------------
# v2


def test_v2_is_the_documented_array() -> None:
    session = Session(record(activated_at=T0 + SECOND, closed_at=T0 + 9 * SECOND, round_count=9,
                             initial_token_count=100, delta_token_count=20, metadata={"team": "search"}),
                      created_ttl_secs=300, close_reason=CloseReason.TTL_EXPIRED,
                      closed_seen_at=T0 + 10 * SECOND, partition=3, created_offset=17, last_offset=23,
                      extended_at=T0 + 2 * SECOND, missing=MissingRounds((3, 5, 7, 8), 1))
    assert orjson.loads(encode_state(session)) == [
        2, "S", "s-1", "acme", "openai", "gpt-x", T0, T0 + SECOND, T0 + 9 * SECOND, 600, 9, 100, 20,
        {"team": "search"}, 300, "ttl_expired", T0 + 10 * SECOND, 3, 17, 23, T0 + 2 * SECOND, 1, [3, 5, 7, 8],
    ]
    assert decode_state(encode_state(session)) == session
    assert session.closure().missing_rounds == 4


def test_a_tombstone_is_the_documented_array() -> None:
    tombstone = Tombstone(bytes(range(16)), 3, 17, 23, T0 + 7200 * SECOND)
    assert orjson.loads(encode_state(tombstone)) == [
        2, "T", 3, 17, 23, T0 + 7200 * SECOND, "000102030405060708090a0b0c0d0e0f"]
    assert decode_state(encode_state(tombstone)) == tombstone


def test_v1_missing_rounds_come_back_given_up_so_a_late_one_stays_a_duplicate() -> None:
    """v1 kept how many rounds were missing, not which: a late number could
    be one already applied, so all stay duplicates, as they were under v1."""
    session, _ = settle_owed(v1("active_confirmed"))  # rounds 1 and 4 applied; 2 and 3 missing
    assert session.missing == MissingRounds((), 2) and session.missing_rounds == 2
    late = Delivery(Source("session-events", 5, 1006),
                    event_delivery(round_(n=2, delta=3, at=T0 + 20 * SECOND)).message)
    assert apply(session, late, T0 + 21 * SECOND) == (session, (Outcome(Result.DUPLICATE, "round.completed"),))


@pytest.mark.parametrize("data", [b"[3,\"S\"]", b"[]", b"\"text\"", b"[2,\"Q\",1]"])
def test_an_unknown_format_or_kind_is_refused_by_name(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"format version|unknown kind"):
        decode_state(data)


def test_a_delivery_of_a_source_never_seen_by_a_v1_session_is_judged_normally() -> None:
    session, _ = settle_owed(v1("active_confirmed"))
    delivery = Delivery(Source("session-events", 5, 1006),
                        event_delivery(round_(n=5, delta=3, at=T0 + 20 * SECOND)).message)
    new_state, outputs = apply(session, delivery, T0 + 21 * SECOND)
    assert outputs == (Outcome(Result.APPLIED, "round.completed"),)
    assert new_state.record.delta_token_count == 353 and new_state.last_offset == 1006
