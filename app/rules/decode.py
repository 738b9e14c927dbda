"""`decode_event`: one Kafka record checked against SPEC §3, never raising on bad data."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from app.rules.events import (
    Event,
    InvalidEvent,
    RoundCompleted,
    SessionActivated,
    SessionClosed,
    SessionCreated,
    SessionExtended,
)
from app.rules.limits import (
    DEFAULT_POLICY,
    MAX_COUNT,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_TTL_SECS,
    Policy,
)
from app.rules.outputs import Reason
from app.rules.timestamps import parse_timestamp


class _Invalid(Exception):
    def __init__(self, detail: str, reason: Reason = Reason.INVALID_EVENT, session_key: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        #: Whom the rejection is keyed by, when not the record's key.
        self.session_key = session_key


def _identifier(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if type(value) is not str:
        raise _Invalid(f"field '{name}' must be a string")
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise _Invalid(f"field '{name}' must be 1..{MAX_ID_CHARS} characters")
    _refuse_nul(value, name)
    return value


def _refuse_nul(value: str, name: str) -> None:
    # Ids and names are what billing keys on, and PostgreSQL's text holds no U+0000 (SPEC §3).
    if "\x00" in value:
        raise _Invalid(f"field '{name}' must not contain U+0000")


def _integer(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name)
    # `type(...) is int`: JSON true decodes to bool, an int subclass, and is not a count.
    if type(value) is not int or not low <= value <= high:
        raise _Invalid(f"field '{name}' must be an integer in {low}..{high}")
    return value


def _name(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _Invalid(f"field '{name}' must be a string")
    if not value:
        raise _Invalid(f"field '{name}' must be a non-empty string")
    if len(value) > MAX_NAME_CHARS:
        raise _Invalid(f"field '{name}' must be at most {MAX_NAME_CHARS} characters")
    _refuse_nul(value, name)
    return value


def decode_event(key: bytes | None, value: bytes | None, policy: Policy = DEFAULT_POLICY) -> Event | InvalidEvent:
    """Validate one Kafka record against SPEC §3; never raises on bad data."""
    session_key: str | None = None
    if key is not None:
        try:
            session_key = key.decode("utf-8")
        except UnicodeDecodeError:
            return InvalidEvent(Reason.KEY_MISMATCH, "Kafka key is not UTF-8", None, value or b"", None)
    try:
        parsed = orjson.loads(value if value is not None else b"")
    except orjson.JSONDecodeError as error:
        return InvalidEvent(Reason.INVALID_EVENT, f"value is not UTF-8 JSON: {error}", None, value or b"",
                            session_key)
    try:
        return _build_event(parsed, session_key, policy)
    except _Invalid as invalid:
        rejection_key = invalid.session_key or session_key
        if _deeper_than(parsed, MAX_JSON_DEPTH):  # could not be encoded inside the rejection
            return InvalidEvent(invalid.reason, invalid.detail, None, value, rejection_key)
        return InvalidEvent(invalid.reason, invalid.detail, parsed, None, rejection_key)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests more than `limit` objects/arrays deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _build_event(obj: Any, session_key: str | None, policy: Policy) -> Event:
    if type(obj) is not dict:
        raise _Invalid("event must be a JSON object")
    event_id = _identifier(obj, "event_id")
    session_id = _identifier(obj, "session_id")
    tenant_id = _identifier(obj, "tenant_id")
    occurred = obj.get("occurred_at")
    if type(occurred) is not str:
        raise _Invalid("field 'occurred_at' must be an RFC 3339 timestamp string")
    try:
        occurred_at = parse_timestamp(occurred)
    except (ValueError, OverflowError):
        raise _Invalid("field 'occurred_at' must be an RFC 3339 timestamp with offset") from None
    kind = obj.get("type")
    build = _BUILDERS.get(kind) if type(kind) is str else None
    if build is None:
        raise _Invalid("field 'type' must be one of session.created, session.activated, "
                       "round.completed, session.extended, session.closed")
    event = build(obj, event_id, session_id, tenant_id, occurred_at, policy)
    # A keyless record lands on any partition, away from the session's state
    # and its order (SPEC §2): it cannot be accounted.
    if session_key is None:
        # Keyed by its session all the same, as the rejected topic is.
        raise _Invalid("the record has no Kafka key; it must be keyed by field 'session_id'", Reason.KEY_MISMATCH,
                       session_key=session_id)
    if session_key != session_id:
        raise _Invalid("field 'session_id' differs from the Kafka key", Reason.KEY_MISMATCH)
    return event


# One builder per event type: the type-specific fields, checked in this order
# (the first bad one is the one a rejection names).


def _created(obj: dict[str, Any], event_id: str, session_id: str, tenant_id: str, occurred_at: int,
             policy: Policy) -> SessionCreated:
    metadata = obj.get("metadata", {})
    if _deeper_than(metadata, MAX_JSON_DEPTH):
        raise _Invalid(f"field 'metadata' nests deeper than {MAX_JSON_DEPTH} levels")
    if len(orjson.dumps(metadata)) > policy.metadata_max_bytes:
        raise _Invalid(f"field 'metadata' is larger than {policy.metadata_max_bytes} bytes encoded")
    return SessionCreated(event_id, session_id, tenant_id, occurred_at, _name(obj, "provider_id"), _name(obj, "model"),
                          _integer(obj, "ttl_secs", 1, MAX_TTL_SECS), metadata)


def _activated(obj: dict[str, Any], event_id: str, session_id: str, tenant_id: str, occurred_at: int,
               policy: Policy) -> SessionActivated:
    return SessionActivated(event_id, session_id, tenant_id, occurred_at,
                            _integer(obj, "initial_token_count", 0, MAX_COUNT))


def _round(obj: dict[str, Any], event_id: str, session_id: str, tenant_id: str, occurred_at: int,
           policy: Policy) -> RoundCompleted:
    number = _integer(obj, "round", 1, MAX_COUNT)
    delta = _integer(obj, "delta_token_count", 0, MAX_COUNT)
    model = _name(obj, "model") if obj.get("model") is not None else None
    return RoundCompleted(event_id, session_id, tenant_id, occurred_at, number, delta, model)


def _extended(obj: dict[str, Any], event_id: str, session_id: str, tenant_id: str, occurred_at: int,
              policy: Policy) -> SessionExtended:
    return SessionExtended(event_id, session_id, tenant_id, occurred_at, _integer(obj, "ttl_secs", 1, MAX_TTL_SECS))


def _closed(obj: dict[str, Any], event_id: str, session_id: str, tenant_id: str, occurred_at: int,
            policy: Policy) -> SessionClosed:
    # Optional (absent or null), but when given 1..1024 characters like the other names (SPEC §3).
    reason = _name(obj, "reason") if obj.get("reason") is not None else None
    return SessionClosed(event_id, session_id, tenant_id, occurred_at, reason)


_BUILDERS: dict[str, Callable[[dict[str, Any], str, str, str, int, Policy], Event]] = {
    SessionCreated.type: _created,
    SessionActivated.type: _activated,
    RoundCompleted.type: _round,
    SessionExtended.type: _extended,
    SessionClosed.type: _closed,
}
