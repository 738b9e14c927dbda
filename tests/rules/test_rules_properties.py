"""Properties of `app.rules` over generated gateway histories (hypothesis).

The oracles are computed from the outcomes of the run (which events were
applied), never by re-implementing `apply`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app import rules
from app.rules import (
    MAX_COUNT,
    SECOND,
    Delivery,
    Expire,
    InvalidEvent,
    Outcome,
    Purge,
    Reason,
    Result,
    Session,
    SessionRecord,
    Source,
    Tombstone,
    decode_event,
    decode_state,
    encode_state,
)
from tests.rules.strategies import (
    POLICY,
    T0,
    Driver,
    History,
    Step,
    activated,
    closed,
    closure_content,
    closures_in,
    created,
    event_delivery,
    extended,
    finish,
    histories,
    lags,
    outcome_of,
    rejections_in,
    replay,
    round_,
    run_history,
    shift,
)

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GATEWAY_RESULTS = {Result.APPLIED, Result.DUPLICATE, Result.REJECTED}


def closure_set(closures) -> set[bytes]:
    return {closure_content(c) for c in closures}


def closures_by_session(driver: Driver) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for closure in driver.closures():
        content = closure_content(closure)
        assert found.setdefault(closure.session_id, content) == content, "two different closures for one session"
    return found


def assert_round_trips(state: rules.Stored) -> None:
    assert decode_state(encode_state(state)) == state
    if isinstance(state, Session):
        record = state.record
        assert SessionRecord.from_json(orjson.loads(orjson.dumps(record.to_json()))) == record


# --------------------------------------------------------------------------
# Conservation


@SETTINGS
@given(data=st.data(), history=histories())
def test_conservation(data: st.DataObject, history: History) -> None:
    delays = data.draw(lags(len(history.sent)), label="lags")
    driver, per_event = run_history(history, delays)
    finish(driver)

    applied: dict[str, list] = defaultdict(list)  # session -> applied events, in order
    for logged, sent in per_event:
        outputs = logged.outputs
        outcome = outcome_of(outputs)
        message = logged.step.delivery.message
        # Every gateway record ends in exactly one of applied, duplicate, rejected.
        assert outcome.result in GATEWAY_RESULTS, (sent.kind, outcome)
        rejections = rejections_in(outputs)
        if outcome.result is Result.REJECTED:
            assert len(rejections) == 1
            assert rejections[0].reason == outcome.reason
            assert rejections[0].source == logged.step.delivery.source
            assert not rejections[0].event_omitted
        else:
            assert rejections == [] and outcome.reason is None
        if outcome.result is Result.DUPLICATE:
            assert logged.after is logged.before, "a duplicate writes nothing"
        if outcome.result is Result.APPLIED:
            assert not isinstance(message, InvalidEvent)
            applied[message.session_id].append(message)
        closures = closures_in(outputs)
        if closures:
            assert outcome.result is Result.APPLIED and outcome.event_type == "session.closed"

    for entry in driver.log:
        outcome = outcome_of(entry.outputs)
        if not isinstance(entry.step.delivery, Delivery):
            assert outcome.result is Result.COMMAND
            assert rejections_in(entry.outputs) == []
            if closures_in(entry.outputs):
                assert isinstance(entry.step.delivery, Expire)
        if entry.after is not None:
            assert_round_trips(entry.after)

    closures = closures_by_session(driver)
    emitted = [c.session_id for c in driver.closures()]
    assert len(emitted) == len(set(emitted)), "a session closed twice"
    # Every session the gateways created was created once and closed once.
    assert set(closures) == set(history.sessions) == set(driver.states)
    for session_id in history.sessions:
        events = applied[session_id]
        kinds = [e.type for e in events]
        assert kinds.count("session.created") == 1 and kinds[0] == "session.created"
        assert kinds.count("session.activated") <= 1
        assert kinds.count("session.closed") <= 1
        creation = events[0]
        activation = [e for e in events if e.type == "session.activated"]
        rounds = [e for e in events if e.type == "round.completed"]
        extensions = [e for e in events if e.type == "session.extended"]
        close = [e for e in events if e.type == "session.closed"]
        initial = activation[0].initial_token_count if activation else 0
        deltas = sum(r.delta_token_count for r in rounds)
        last_round = max((r.round for r in rounds), default=0)
        ttl = extensions[-1].ttl_secs if extensions else creation.ttl_secs

        body = orjson.loads(closures[session_id])
        record = body["record"]
        assert body["closure_id"] == session_id
        assert body["total_token_count"] == initial + deltas <= MAX_COUNT
        assert record["initial_token_count"] == initial
        assert record["delta_token_count"] == deltas
        assert record["round_count"] == last_round
        assert body["missing_rounds"] == last_round - len(rounds)
        assert len({r.round for r in rounds}) == len(rounds), "a round number applied twice"
        assert record["ttl_secs"] == ttl
        assert record["tenant_id"] == creation.tenant_id and record["model"] == creation.model
        assert record["created_at"] == rules.format_timestamp(creation.occurred_at)
        assert record["activated_at"] == (rules.format_timestamp(activation[0].occurred_at) if activation else None)
        if close:
            assert body["reason"] == "closed"
            assert record["closed_at"] == rules.format_timestamp(close[0].occurred_at)
        else:
            assert body["reason"] == "ttl_expired"
            expires_at = creation.occurred_at + ttl * SECOND
            assert record["closed_at"] == rules.format_timestamp(expires_at)
        # Nothing was accounted after the session's expiry (as it stood then).
        expires_at = creation.occurred_at + creation.ttl_secs * SECOND
        for event in events[1:]:
            assert event.occurred_at <= expires_at
            if event.type == "session.extended":
                expires_at = creation.occurred_at + event.ttl_secs * SECOND
    assert not any(o.result is Result.REDELIVERED for e in driver.log for o in e.outputs if isinstance(o, Outcome))


# --------------------------------------------------------------------------
# Retention


def next_offsets(history: History) -> dict[int, int]:
    """The next free offset of each partition after the history."""
    ends: dict[int, int] = defaultdict(int)
    for sent, offset in zip(history.sent, history.offsets, strict=True):
        ends[sent.partition] = max(ends[sent.partition], offset + 1)
    return ends


@SETTINGS
@given(history=histories())
def test_retention_then_a_tombstone_then_nothing_and_never_open_again(history: History) -> None:
    """SPEC §5.10. A closed record stays for retention; then, while a re-send
    of its creation could still be accepted, a tombstone that calls that
    re-send a duplicate and anything else session_closed; then nothing, and
    the re-send is refused as too late. At no point does it open again."""
    driver, per_event = run_history(history)
    now = finish(driver)
    creations = {logged.step.delivery.message.session_id: sent for logged, sent in per_event
                 if outcome_of(logged.outputs) == Outcome(Result.APPLIED, "session.created")}
    offsets = next_offsets(history)

    def send(sent, at: int, body: bytes | None = None) -> tuple:
        offset = offsets[sent.partition]
        offsets[sent.partition] += 1
        message = decode_event(sent.key, body if body is not None else sent.value)
        return driver.deliver(Step(Delivery(Source("session-events", sent.partition, offset), message), at))

    for session_id in sorted(driver.states):
        session = driver.states[session_id]
        creation = creations[session_id]
        retention_over = session.due_at(POLICY)
        assert retention_over == session.closed_seen_at + POLICY.retention
        kept = driver.command(Purge(session_id), max(now, retention_over - 1))
        assert kept == (Outcome(Result.COMMAND, "purge"),) and driver.states[session_id] is session
        driver.command(Purge(session_id), retention_over)
        until = session.tombstone_until(POLICY)
        if until > retention_over:
            tombstone = driver.states[session_id]
            assert tombstone == Tombstone(session.creation_digest(), session.partition, session.created_offset,
                                          session.last_offset, until)
            assert tombstone.due_at(POLICY) == until
            assert outcome_of(send(creation, until - 1)) == Outcome(Result.DUPLICATE, "session.created")
            clash = orjson.dumps(orjson.loads(creation.value) | {"model": "another"})
            assert outcome_of(send(creation, until - 1, clash)).reason is Reason.SESSION_CLOSED
            assert driver.states[session_id].last_offset == offsets[creation.partition] - 1
            redelivered = Delivery(Source("session-events", session.partition, session.last_offset),
                                   decode_event(creation.key, creation.value))
            assert outcome_of(driver.deliver(Step(redelivered, until - 1))).result is Result.REDELIVERED
            driver.command(Purge(session_id), until - 1)
            assert isinstance(driver.states[session_id], Tombstone)
            driver.command(Purge(session_id), until)
        else:
            until = retention_over
        assert session_id not in driver.states
        assert outcome_of(send(creation, until)) == Outcome(Result.REJECTED, "session.created",
                                                            Reason.SESSION_EXPIRED)
    assert driver.states == {}
    # Commands for a deleted session are harmless.
    late = now + 10 * POLICY.retention
    for session_id in history.sessions:
        for command in (Expire(session_id), Purge(session_id)):
            assert driver.command(command, late) == (Outcome(Result.COMMAND, type(command).__name__.lower()),)
            assert session_id not in driver.states


# --------------------------------------------------------------------------
# Extensions (SPEC §3)


@SETTINGS
@given(data=st.data(), extensions=st.lists(st.tuples(st.integers(1, 100), st.integers(200, 3600)), min_size=1,
                                           max_size=6))
def test_the_latest_extension_stands_whatever_the_order_and_the_repeats(
        data: st.DataObject, extensions: list[tuple[int, int]]) -> None:
    """Of the extensions a session received, the one with the latest
    occurred_at, then the larger ttl_secs, stands, in any arrival order and
    with any of them re-sent (every TTL here outlives every occurred_at)."""
    resent = data.draw(st.lists(st.sampled_from(extensions), max_size=4), label="re-sent")
    arrival = data.draw(st.permutations(extensions + resent), label="arrival order")
    now = T0 + 200 * SECOND
    state, _ = rules.apply(None, event_delivery(created(ttl=600), offset=0), now)
    for offset, (at, ttl) in enumerate(arrival, start=1):
        state, outputs = rules.apply(state, event_delivery(extended(ttl=ttl, at=T0 + at * SECOND), offset=offset),
                                     now)
        assert outcome_of(outputs).result in (Result.APPLIED, Result.DUPLICATE)
    at, ttl = max(extensions)
    assert isinstance(state, Session)
    assert (state.record.ttl_secs, state.extended_at, state.created_ttl_secs) == (ttl, T0 + at * SECOND, 600)


# --------------------------------------------------------------------------
# Idempotence under redelivery


def same_verdict(original: tuple, again: tuple) -> bool:
    first, second = outcome_of(original), outcome_of(again)
    return second.result is Result.REDELIVERED or (first.result, first.reason) == (second.result, second.reason)


@SETTINGS
@given(data=st.data(), history=histories())
def test_redelivering_one_event_changes_nothing(data: st.DataObject, history: History) -> None:
    driver, _ = run_history(history)
    finish(driver)
    log = [entry.step for entry in driver.log]
    gateway = [i for i, step in enumerate(log) if isinstance(step.delivery, Delivery)]
    i = data.draw(st.sampled_from(gateway), label="redelivered index")
    p = data.draw(st.integers(i + 1, len(log)), label="redelivered before position")
    steps = [*log[:p], Step(log[i].delivery, log[p - 1].now), *log[p:]]
    again = replay({}, steps)
    assert again.states == driver.states
    assert closure_set(again.closures()) == closure_set(driver.closures())
    assert same_verdict(driver.log[i].outputs, again.log[p].outputs)
    if outcome_of(again.log[p].outputs).result is not Result.REDELIVERED:
        # Judged again: the same outputs (a rejection derived from the bytes, or
        # a duplicate); nothing new in the table.
        assert again.log[p].after is again.log[p].before


def closed_seen_at(state: rules.Stored) -> int | None:
    return state.closed_seen_at if isinstance(state, Session) else None


def without_closed_seen_at(states: dict[str, rules.Stored]) -> dict[str, rules.Stored]:
    return {sid: replace(state, closed_seen_at=None) if isinstance(state, Session) else state
            for sid, state in states.items()}


@SETTINGS
@given(data=st.data(), history=histories())
def test_crash_and_replay_from_a_snapshot(data: st.DataObject, history: History) -> None:
    """The agent publishes a batch's outputs, then stores the states, then
    commits the input offsets. A crash anywhere leaves outputs published up
    to some point k of the log, the table stored as of m <= k, and offsets
    committed up to j <= m; the restarted worker (`delay` later) loads the
    table and applies the log again from j. It ends with the same table and
    publishes no closure that differs from the ones without the crash."""
    driver, _ = run_history(history)
    finish(driver)
    log = [entry.step for entry in driver.log]
    k = data.draw(st.integers(1, len(log)), label="outputs published up to k")
    m = data.draw(st.integers(0, k), label="table stored as of m")
    j = data.draw(st.integers(0, m), label="offsets committed up to j")
    delay = data.draw(st.integers(0, POLICY.grace - 1), label="restart delay")

    published_before = replay({}, log[:k]).closures()
    stored = {sid: decode_state(encode_state(s)) for sid, s in replay({}, log[:m]).states.items()}
    after = replay(stored, [shift(step, delay) for step in log[j:]])

    # Closing again after the restart sees a later clock; nothing else differs.
    assert without_closed_seen_at(after.states) == without_closed_seen_at(driver.states)
    for sid, state in after.states.items():
        original = closed_seen_at(driver.states[sid])
        assert closed_seen_at(state) in (original, None if original is None else original + delay)
    published = published_before + after.closures()
    assert closure_set(published) == closure_set(driver.closures())
    for position, entry in enumerate(after.log):
        original = driver.log[j + position].outputs
        if j + position < m:
            assert same_verdict(original, entry.outputs)
        else:
            assert entry.outputs == original  # applied again to the same state: the same outputs


def without_resends(history: History) -> History:
    kept = [s for s in history.sent if s.resend_of is None]
    counters: dict[int, int] = defaultdict(int)
    offsets = []
    for sent in kept:
        offsets.append(counters[sent.partition])
        counters[sent.partition] += 1
    return History(tuple(kept), tuple(offsets), history.sessions)


@SETTINGS
@given(history=histories())
def test_gateway_resends_change_no_totals(history: History) -> None:
    plain = without_resends(history)
    assume(len(plain.sent) < len(history.sent))
    with_resends, per_event = run_history(history)
    finish(with_resends)
    without, _ = run_history(plain)
    finish(without)
    assert closures_by_session(with_resends) == closures_by_session(without)
    for logged, sent in per_event:
        if sent.resend_of is not None:
            assert outcome_of(logged.outputs).result is not Result.APPLIED, sent.kind


# --------------------------------------------------------------------------
# Determinism


@SETTINGS
@given(data=st.data(), history=histories())
def test_closures_do_not_depend_on_processing_times(data: st.DataObject, history: History) -> None:
    first = data.draw(lags(len(history.sent)), label="first lags")
    second = data.draw(lags(len(history.sent)), label="second lags")
    one, _ = run_history(history, first)
    finish(one)
    two, _ = run_history(history, second)
    finish(two)
    assert closures_by_session(one) == closures_by_session(two)


# --------------------------------------------------------------------------
# Round trips and robustness

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=8), children, max_size=4),
    max_leaves=12,
)
MIN_MICROS = rules.parse_timestamp("0001-01-01T00:00:00Z")
MAX_MICROS = rules.parse_timestamp("9999-12-31T23:59:59.999999Z")
micros = st.integers(MIN_MICROS, MAX_MICROS)
counts = st.integers(0, MAX_COUNT)
ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=128)


@st.composite
def records(draw: st.DrawFn) -> SessionRecord:
    return SessionRecord(
        session_id=draw(ids), tenant_id=draw(ids), provider_id=draw(ids), model=draw(ids),
        created_at=draw(micros), activated_at=draw(st.none() | micros), closed_at=draw(st.none() | micros),
        ttl_secs=draw(st.integers(1, rules.MAX_TTL_SECS)), round_count=draw(counts),
        initial_token_count=draw(counts), delta_token_count=draw(counts), metadata=draw(json_values),
    )


@settings(max_examples=300, deadline=None)
@given(record=records(), data=st.data())
def test_record_and_session_round_trip(record: SessionRecord, data: st.DataObject) -> None:
    wire = orjson.loads(orjson.dumps(record.to_json()))
    assert SessionRecord.from_json(wire) == record
    for name in ("created_at", "activated_at", "closed_at"):
        assert wire[name] is None or wire[name].endswith("Z")
    reason = data.draw(st.none() | st.sampled_from(list(rules.CloseReason)))
    if reason is not None and record.closed_at is None:
        record = replace(record, closed_at=record.created_at)
    bounds = sorted(data.draw(st.sets(st.integers(1, MAX_COUNT), max_size=8)))
    missing = rules.MissingRounds(tuple(bounds[:len(bounds) // 2 * 2]), data.draw(st.integers(0, MAX_COUNT)))
    session = rules.Session(
        record=record, created_ttl_secs=data.draw(st.integers(1, rules.MAX_TTL_SECS)), close_reason=reason,
        closed_seen_at=None if reason is None else data.draw(micros),
        partition=data.draw(st.integers(0, 1000)), created_offset=data.draw(st.integers(0, 2**40)),
        last_offset=data.draw(st.integers(0, 2**40)), extended_at=data.draw(st.none() | micros),
        missing=data.draw(st.sampled_from([missing, rules.NO_MISSING_ROUNDS])),
    )
    assert decode_state(encode_state(session)) == session
    tombstone = rules.Tombstone(session.creation_digest(), session.partition, session.created_offset,
                                session.last_offset, data.draw(micros))
    assert decode_state(encode_state(tombstone)) == tombstone


# Values that are wrong or at the edge for any field.
ODD_TIMESTAMPS = [
    "2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2024-05-01T12:00:00Z\n", "2024-02-30T12:00:00Z",
    "2024-05-01T24:00:00Z", "2024-05-01T12:00:60Z", "2024-05-01T12:00:00.\u0661Z", "2024-05-01T12:00:00+23:59",
]
odd_values = st.sampled_from([
    None, True, False, 0, 1, -1, 2**32, 2**32 + 1, MAX_COUNT, MAX_COUNT + 1, 2**64 - 1, 1.0, 1.5, "", "x",
    "x" * 129, [], {}, *ODD_TIMESTAMPS,
    "session.created", "session.activated", "round.completed", "session.extended", "session.closed",
])
FIELDS = ("event_id", "type", "session_id", "tenant_id", "occurred_at", "provider_id", "model", "ttl_secs",
          "metadata", "initial_token_count", "round", "delta_token_count", "reason")


VALID = [
    created("x", at=T0), activated("x", at=T0), round_("x", n=3, delta=1, at=T0), extended("x", ttl=60, at=T0),
    closed("x", at=T0),
]


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(VALID), changes=st.dictionaries(st.sampled_from(FIELDS), odd_values, max_size=3),
       dropped=st.sets(st.sampled_from(FIELDS), max_size=2), occurred=st.sampled_from(ODD_TIMESTAMPS),
       key=st.sampled_from([None, b"x", b"\xff"]), raw=st.binary(max_size=40))
def test_no_bytes_stop_the_worker(base: dict, changes: dict, dropped: set, occurred: str, key: bytes | None,
                                  raw: bytes) -> None:
    """decode_event and apply never raise, whatever arrives: a valid event at
    an odd time, with a few fields changed to odd values or dropped, or random
    bytes."""
    body = {k: v for k, v in (base | {"occurred_at": occurred} | changes).items() if k not in dropped}
    existing = rules.Session(
        record=SessionRecord("x", "x", "p", "x", T0, T0, None, 3600, 2, 10, 20, {}),
        created_ttl_secs=3600, close_reason=None, closed_seen_at=None,
        partition=0, created_offset=5, last_offset=9, missing=rules.MissingRounds((1, 2), 0),
    )
    tombstone = rules.Tombstone(existing.creation_digest(), 0, 5, 9, T0 + 3600 * SECOND)
    for value in (orjson.dumps(body), raw):
        message = decode_event(key, value)
        for state in (None, existing, tombstone):
            for offset in (3, 7, 12):
                delivery = rules.Delivery(rules.Source("session-events", 0, offset), message)
                _, outputs = rules.apply(state, delivery, T0 + 60 * SECOND)
                assert outcome_of(outputs).result in GATEWAY_RESULTS | {Result.REDELIVERED}
                for rejection in rejections_in(outputs):
                    orjson.dumps(rejection.to_json(T0))  # publishable
                for closure in closures_in(outputs):
                    orjson.dumps(closure.to_json(T0))
