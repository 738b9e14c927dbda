"""Changelog bytes of what the rules keep per session, with a format version.

v2 (written now): one orjson array, the version first, then a kind tag and
the fields by position. Times stay integer microseconds, so neither side
formats or parses a timestamp; less than half the size of v1 and several
times faster to decode (bench/rules_micro.py).

    [2, "S", session_id, tenant_id, provider_id, model, created_at,
     activated_at, closed_at, ttl_secs, round_count, initial_token_count,
     delta_token_count, metadata, created_ttl_secs, close_reason,
     closed_seen_at, partition, created_offset, last_offset, extended_at,
     given_up_rounds, [missing round ranges, flat: start, end, ...]]
    [2, "T", partition, created_offset, last_offset, until, creation digest (hex)]

v1 (read only): the orjson object written before the version existed, with
the §4 record as JSON and an `outbox` of outputs that waited for the
broker's confirmation. Those come back as the session's `owed` outputs
(the closure rebuilt from the closed record, rejections as stored); see
`settle_owed`. v1 kept only a count of missing rounds, which rounds unknown:
they come back given up, as they were then (a late one is a duplicate).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from app.rules.model import Session, Stored, Tombstone
from app.rules.outputs import Output, Reason, Rejection, Source
from app.rules.record import CloseReason, SessionRecord
from app.rules.rounds import NO_MISSING_ROUNDS, MissingRounds

VERSION = 2
_SESSION = "S"
_TOMBSTONE = "T"
_CLOSE_REASONS: dict[str | None, CloseReason | None] = {None: None, **{r.value: r for r in CloseReason}}


def encode_state(state: Stored) -> bytes:
    """The v2 bytes of a session or tombstone. A session's `owed` outputs
    must be settled first: they are never written back (ValueError)."""
    if isinstance(state, Tombstone):
        return orjson.dumps([VERSION, _TOMBSTONE, state.partition, state.created_offset, state.last_offset,
                             state.until, state.creation.hex()])
    if state.owed:
        raise ValueError(f"session {state.record.session_id!r} still owes outputs; settle_owed() first")
    record = state.record
    close_reason = None if state.close_reason is None else state.close_reason.value
    return orjson.dumps([
        VERSION, _SESSION, record.session_id, record.tenant_id, record.provider_id, record.model,
        record.created_at, record.activated_at, record.closed_at, record.ttl_secs, record.round_count,
        record.initial_token_count, record.delta_token_count, record.metadata, state.created_ttl_secs,
        close_reason, state.closed_seen_at, state.partition, state.created_offset, state.last_offset,
        state.extended_at, state.missing.given_up, state.missing.ranges,
    ])


def decode_state(data: bytes) -> Stored:
    """A session or tombstone from v2 bytes, or a session from v1 bytes."""
    value = orjson.loads(data)
    if isinstance(value, dict):
        return _session_from_v1(value)
    if not isinstance(value, list) or not value or value[0] != VERSION:
        version = value[0] if isinstance(value, list) and value else None
        raise ValueError(f"changelog value of format version {version!r}; this worker reads 1 and {VERSION}")
    kind = value[1]
    if kind == _TOMBSTONE:
        _, _, partition, created_offset, last_offset, until, creation = value
        return Tombstone(bytes.fromhex(creation), partition, created_offset, last_offset, until)
    if kind != _SESSION:
        raise ValueError(f"changelog value of unknown kind {kind!r}")
    (_, _, session_id, tenant_id, provider_id, model, created_at, activated_at, closed_at, ttl_secs, round_count,
     initial_token_count, delta_token_count, metadata, created_ttl_secs, close_reason, closed_seen_at, partition,
     created_offset, last_offset, extended_at, given_up, ranges) = value
    record = SessionRecord(session_id, tenant_id, provider_id, model, created_at, activated_at, closed_at, ttl_secs,
                           round_count, initial_token_count, delta_token_count, metadata)
    missing = MissingRounds(tuple(ranges), given_up) if ranges or given_up else NO_MISSING_ROUNDS
    return Session(record, created_ttl_secs, _CLOSE_REASONS[close_reason], closed_seen_at, partition,
                   created_offset, last_offset, extended_at, missing)


def _session_from_v1(data: dict[str, Any]) -> Session:
    session = Session(
        record=SessionRecord.from_json(data["record"]),
        created_ttl_secs=data["created_ttl_secs"],
        close_reason=_CLOSE_REASONS[data["close_reason"]],
        closed_seen_at=data["closed_seen_at"],
        partition=data["partition"],
        created_offset=data["created_offset"],
        last_offset=data["last_offset"],
        # Absent in values written before extensions were ordered.
        extended_at=data.get("extended_at"),
        missing=MissingRounds((), data["missing_rounds"]) if data["missing_rounds"] else NO_MISSING_ROUNDS,
    )
    owed = tuple(_owed_from_v1(item, session) for item in data["outbox"])
    return replace(session, owed=owed)


def _owed_from_v1(item: dict[str, Any], session: Session) -> Output:
    if item["kind"] == "closure":
        return session.closure()  # v1 kept only the kind: the closed record is the closure
    topic, partition, offset = item["source"]
    return Rejection(session.record.session_id, Reason(item["reason"]), item["detail"], item["event"], None,
                     Source(topic, partition, offset), item.get("event_omitted", False))
