"""`apply`: one delivery against one session's state (SPEC §5)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.rules.events import (
    EVENT_TYPES,
    Command,
    Delivery,
    Event,
    Expire,
    InvalidEvent,
    RoundCompleted,
    SessionActivated,
    SessionClosed,
    SessionCreated,
    SessionExtended,
    event_to_json,
)
from app.rules.limits import DEFAULT_POLICY, MAX_COUNT, Policy
from app.rules.model import (
    Session,
    Stored,
    Tombstone,
    creation_digest,
    creation_horizon,
)
from app.rules.outputs import Outcome, Output, Reason, Rejection, Result, Source
from app.rules.record import CloseReason, SessionRecord
from app.rules.timestamps import SECOND, Micros

Transition = tuple[Stored | None, tuple[Output | Outcome, ...]]

# Outcomes are values: built once per result and event type, not per delivery.
_APPLIED = {kind: (Outcome(Result.APPLIED, kind),) for kind in EVENT_TYPES}
_DUPLICATE = {kind: (Outcome(Result.DUPLICATE, kind),) for kind in EVENT_TYPES}
_REDELIVERED = {kind: (Outcome(Result.REDELIVERED, kind),) for kind in EVENT_TYPES}


def apply(state: Stored | None, delivery: Delivery | Command, now: Micros,
          policy: Policy = DEFAULT_POLICY) -> Transition:
    """Apply one delivery (a consumed record, or a timer command) to what is
    kept for its session.

    Returns the new state (the same object when nothing changed, None when
    the session is to be deleted) and the outputs: the closures and
    rejections to publish, and exactly one `Outcome` (last).

    The caller must publish ALL outputs, and have the broker acknowledge
    them, before it stores the new state. The state therefore never runs
    ahead of its outputs, and nothing needs to remember which were sent: if
    the worker dies in between, the events are applied again to the older
    state and yield the same outputs (a closure with the same `closure_id`
    and content; only `emitted_at` differs).
    """
    if isinstance(state, Session) and state.owed:
        settled, owed = settle_owed(state)
        new_state, outputs = _apply(settled, delivery, now, policy)
        return new_state, (*owed, *outputs)
    return _apply(state, delivery, now, policy)


def settle_owed(session: Session) -> tuple[Session, tuple[Output, ...]]:
    """The session without the outputs a v1 changelog value still owed, and those outputs.

    Publish them, then store the session returned; `apply` does the same
    for a session it is given, so they go out once either way.
    """
    return replace(session, owed=()), session.owed


def _apply(state: Stored | None, delivery: Delivery | Command, now: Micros, policy: Policy) -> Transition:
    if not isinstance(delivery, Delivery):
        return _apply_command(state, delivery, now, policy)
    message = delivery.message
    source = delivery.source
    if isinstance(message, InvalidEvent):
        # Decided from the bytes alone, so a re-delivery decides the same.
        rejection = Rejection(message.session_key, message.reason, message.detail, message.parsed, message.raw, source)
        return state, (rejection, Outcome(Result.REJECTED, _type_of(message.parsed), message.reason))
    if (state is not None and source.partition == state.partition
            and state.created_offset <= source.offset <= state.last_offset):
        return state, _REDELIVERED[message.type]
    # An offset before the record's creation was consumed when the session did
    # not exist yet: judge it so again, or a re-delivery would change its fate.
    known = state if state is not None and source.offset > state.created_offset else None
    if message.occurred_at > now + policy.max_clock_skew:
        return _reject(known, state, message, source, Reason.CLOCK_SKEW,
                       f"field 'occurred_at' is more than {policy.max_clock_skew // SECOND} s ahead of "
                       "the worker's clock")
    if state is None and isinstance(message, SessionCreated):
        return _create(message, source, now, policy)
    if state is None or (known is None and not isinstance(message, SessionCreated)):
        return _reject(None, state, message, source, Reason.UNKNOWN_SESSION,
                       f"field 'session_id' names no known session ({message.session_id!r})")
    if isinstance(state, Tombstone):
        return _apply_to_tombstone(state, message, source)
    return _apply_to_session(state, message, source, now, policy)


def _type_of(parsed: Any) -> str | None:
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def _apply_command(state: Stored | None, command: Command, now: Micros, policy: Policy) -> Transition:
    outcome = Outcome(Result.COMMAND, type(command).__name__.lower())
    if isinstance(command, Expire):
        if not isinstance(state, Session) or state.close_reason is not None or now < state.due_at(policy):
            return state, (outcome,)
        closed = _close(state, CloseReason.TTL_EXPIRED, state.record.expires_at, now)
        return closed, (closed.closure(), outcome)
    # Purge (SPEC §5.10): a closed record goes after retention, leaving a
    # tombstone while a re-send could still open the session again.
    if state is None or now < state.due_at(policy):
        return state, (outcome,)
    if isinstance(state, Tombstone):
        return None, (outcome,)
    if state.close_reason is None:
        return state, (outcome,)  # open: only Expire closes it
    until = state.tombstone_until(policy)
    if now >= until:
        return None, (outcome,)
    tombstone = Tombstone(state.creation_digest(), state.partition, state.created_offset, state.last_offset, until)
    return tombstone, (outcome,)


def _create(event: SessionCreated, source: Source, now: Micros, policy: Policy) -> Transition:
    if now >= creation_horizon(event.occurred_at, event.ttl_secs, policy):
        # Its record would already have been closed and purged, and its
        # tombstone deleted: this can only be a re-send of a session that is
        # gone, and must not open it again.
        return _reject(None, None, event, source, Reason.SESSION_EXPIRED,
                       "field 'occurred_at' plus 'ttl_secs' lies before the retention horizon")
    record = SessionRecord(
        session_id=event.session_id, tenant_id=event.tenant_id, provider_id=event.provider_id,
        model=event.model, created_at=event.occurred_at, activated_at=None, closed_at=None,
        ttl_secs=event.ttl_secs, round_count=0, initial_token_count=0, delta_token_count=0,
        metadata=event.metadata,
    )
    session = Session(record=record, created_ttl_secs=event.ttl_secs, close_reason=None, closed_seen_at=None,
                      partition=source.partition, created_offset=source.offset, last_offset=source.offset)
    return session, _APPLIED[event.type]


def _same_creation(event: SessionCreated, creation: bytes) -> bool:
    return creation_digest(event.tenant_id, event.provider_id, event.model, event.ttl_secs, event.occurred_at,
                           event.metadata) == creation


def _apply_to_tombstone(tombstone: Tombstone, event: Event, source: Source) -> Transition:
    if isinstance(event, SessionCreated) and _same_creation(event, tombstone.creation):
        return tombstone, _DUPLICATE[event.type]
    return _reject(tombstone, tombstone, event, source, Reason.SESSION_CLOSED,
                   f"field 'session_id' names a closed session ({event.session_id!r})")


def _is_duplicate(session: Session, event: Event) -> bool:
    """Whether the event repeats what the session already holds (SPEC §5)."""
    record = session.record
    if isinstance(event, SessionCreated):
        return _same_creation(event, session.creation_digest())
    if isinstance(event, SessionActivated):
        return record.activated_at is not None and event.initial_token_count == record.initial_token_count
    if isinstance(event, RoundCompleted):
        # Applied already, or given up (SPEC §5.3): never billed again.
        return (record.activated_at is not None and event.round <= record.round_count
                and not session.missing.holds(event.round) and (event.model is None or event.model == record.model))
    if isinstance(event, SessionClosed):
        return record.closed_at is not None
    # An extension: the one in force, or one it superseded (a re-send, or an
    # older extension arriving late): the latest by (occurred_at, ttl_secs)
    # wins whatever the arrival order.
    return session.extended_at is not None and (
        (event.occurred_at, event.ttl_secs) <= (session.extended_at, record.ttl_secs))


def _apply_to_session(session: Session, event: Event, source: Source, now: Micros, policy: Policy) -> Transition:
    record = session.record
    if isinstance(event, SessionCreated):
        # A creation that differs in anything, tenant included, is a clash of
        # ids rather than an event for this session (SPEC §5.1).
        if _is_duplicate(session, event):
            return session, _DUPLICATE[event.type]
        return _reject(session, session, event, source, Reason.SESSION_EXISTS,
                       "a session with this 'session_id' exists with a different creation")
    if event.tenant_id != record.tenant_id:
        return _reject(session, session, event, source, Reason.TENANT_MISMATCH,
                       f"field 'tenant_id' differs from the session's tenant ({record.tenant_id!r})")
    if record.closed_at is not None:
        if _is_duplicate(session, event):
            return session, _DUPLICATE[event.type]
        return _reject(session, session, event, source, Reason.SESSION_CLOSED,
                       f"field 'session_id' names a closed session ({record.session_id!r})")
    if isinstance(event, SessionActivated) and record.activated_at is not None:
        if _is_duplicate(session, event):
            return session, _DUPLICATE[event.type]
        return _reject(session, session, event, source, Reason.INVALID_TRANSITION,
                       "field 'initial_token_count' differs from the activation already applied")
    if event.occurred_at > record.expires_at:
        return _reject(session, session, event, source, Reason.SESSION_EXPIRED,
                       "field 'occurred_at' is after the session's expires_at")
    if isinstance(event, SessionActivated):
        updated = replace(record, activated_at=event.occurred_at, initial_token_count=event.initial_token_count)
        return _applied(session, updated, event, source)
    if isinstance(event, RoundCompleted):
        return _apply_round(session, event, source, policy)
    if isinstance(event, SessionExtended):
        if _is_duplicate(session, event):
            return session, _DUPLICATE[event.type]
        extended_session = replace(session, extended_at=event.occurred_at)
        return _applied(extended_session, replace(record, ttl_secs=event.ttl_secs), event, source)
    closed = _close(session.at_offset(source.offset), CloseReason.CLOSED, event.occurred_at, now)
    return closed, (closed.closure(), *_APPLIED[event.type])


def _apply_round(session: Session, event: RoundCompleted, source: Source, policy: Policy) -> Transition:
    record = session.record
    if record.activated_at is None:
        return _reject(session, session, event, source, Reason.INVALID_TRANSITION,
                       "field 'type' round.completed needs an active session; this one is pending")
    if event.model is not None and event.model != record.model:
        return _reject(session, session, event, source, Reason.MODEL_MISMATCH,
                       f"field 'model' differs from the session's model ({record.model!r})")
    late = event.round <= record.round_count
    if late and not session.missing.holds(event.round):
        return session, _DUPLICATE[event.type]
    delta = record.delta_token_count + event.delta_token_count
    if delta > MAX_COUNT or record.initial_token_count + delta > MAX_COUNT:
        return _reject(session, session, event, source, Reason.OVERFLOW,
                       "field 'delta_token_count' would take the session's token count past 2^63-1")
    if late:
        missing = session.missing.after_late(event.round, policy.max_missing_ranges)
        updated = record.with_rounds(record.round_count, delta)
    else:
        missing = session.missing.after_jump(record.round_count, event.round, policy.max_missing_ranges)
        updated = record.with_rounds(event.round, delta)
    return session.advanced(updated, source.offset, missing), _APPLIED[event.type]


def _applied(session: Session, record: SessionRecord, event: Event, source: Source) -> Transition:
    return session.advanced(record, source.offset, session.missing), _APPLIED[event.type]


def _close(session: Session, reason: CloseReason, closed_at: Micros, now: Micros) -> Session:
    return replace(session, record=replace(session.record, closed_at=closed_at), close_reason=reason,
                   closed_seen_at=now)


def _reject(known: Stored | None, state: Stored | None, event: Event, source: Source, reason: Reason,
            detail: str) -> Transition:
    """Reject against `known`, or, when None, without touching `state`."""
    rejection = Rejection(event.session_id, reason, detail, event_to_json(event), None, source)
    outcome = Outcome(Result.REJECTED, event.type, reason)
    if known is None:
        return state, (rejection, outcome)
    # Remember the offset, so a re-delivery is not judged against a later state.
    return known.at_offset(source.offset), (rejection, outcome)
