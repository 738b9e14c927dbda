"""One record of the closures topic as the ledger stores it (SPEC §6).

`decode_closure` turns the bytes of a Kafka record into a `ClosureRow` (the
columns of the ``closures`` table) or a `LedgerReject` that says which field
is wrong. Pure: no I/O, no clock.

The *content* of a closure is all of it but ``emitted_at``, compared as
values: timestamps as instants, JSON objects whatever their key order.
``content_sha256`` digests exactly that, so two deliveries of one closure
have equal digests and any changed figure gives another.

This runs for every closure the ledger reads, so it is written for speed:
named tuples, and timestamps in the spelling the worker writes read with
``datetime.fromisoformat`` and handed to PostgreSQL as delivered.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from app.rules import MAX_COUNT, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_TTL_SECS, CloseReason, parse_timestamp

#: initial + delta, each at most MAX_COUNT: 2^64 - 2.
MAX_TOTAL = 2 * MAX_COUNT
CLOSE_REASONS = frozenset(reason.value for reason in CloseReason)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UTC = UTC
_MISSING: Any = object()
# A NUL can only reach a JSON string as this escape; PostgreSQL's text and
# jsonb cannot hold it.
_NUL_ESCAPE = b"\\u0000"
#: What a U+0000 of the record becomes in the ``record`` jsonb column (the
#: exact record is kept beside it, in ``record_json``).
NUL_REPLACEMENT = "\ufffd"


class SourceOffset(NamedTuple):
    """Where a record was read: it locates the original in the closures topic."""

    topic: str
    partition: int
    offset: int


class ClosureRow(NamedTuple):
    """A valid closure: one row of the ``closures`` table.

    Timestamps are RFC 3339 text that PostgreSQL reads as the instant the
    closure means: as delivered when in the worker's spelling, else in UTC.
    """

    closure_id: str
    reason: str
    session_id: str
    tenant_id: str
    provider_id: str
    model: str
    created_at: str
    activated_at: str | None
    closed_at: str
    ttl_secs: int
    round_count: int
    missing_rounds: int
    initial_token_count: int
    delta_token_count: int
    total_token_count: int
    #: The record (SPEC §4) as delivered.
    record: dict[str, Any]
    #: The record as JSON text for the ``record`` jsonb column: each U+0000,
    #: which jsonb cannot hold, replaced by U+FFFD.
    record_text: str
    #: The record as delivered, as JSON text (U+0000 escaped), when
    #: ``record_text`` had to replace one; else None.
    record_json: str | None
    content_sha256: bytes
    emitted_at: str
    source: SourceOffset
    #: The first day of the UTC month of ``closed_at``: the period it is billed in, unless closed.
    closed_month: date
    #: The record's value bytes and key, kept should the database refuse the row.
    raw: bytes
    key: bytes | None


class LedgerReject(NamedTuple):
    """A record that is not a valid closure: stored with the error, never dropped."""

    source: SourceOffset
    error: str
    key: bytes | None
    value: bytes | None


class _Invalid(Exception):
    """The closure breaks the schema; the message names the field."""


def decode_closure(source: SourceOffset, key: bytes | None, value: bytes | None) -> ClosureRow | LedgerReject:
    """The row for a closure's bytes, or why they are not a closure.

    The record key is not checked: it only chose the partition, and the
    closure's own ``closure_id`` identifies it.
    """
    if value is None:
        return LedgerReject(source, "no value (a tombstone or an empty record)", key, value)
    try:
        closure = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        return LedgerReject(source, f"not JSON: {error}", key, value)
    try:
        return _row(closure, source, value, key)
    except _Invalid as error:
        return LedgerReject(source, str(error), key, value)
    except (RecursionError, orjson.JSONEncodeError):
        return LedgerReject(source, "record: nested too deeply to store", key, value)
    except Exception as error:  # a bug here must not stop the ledger: keep the record, say why
        return LedgerReject(source, f"internal error while decoding: {error!r}", key, value)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 timestamp with offset as an aware datetime in UTC: the
    instant `app.rules.parse_timestamp` reads (ValueError or OverflowError alike)."""
    return _instant_and_text(text)[0]


def _instant_and_text(text: str) -> tuple[datetime, str]:
    """The instant, and text PostgreSQL reads as that instant."""
    if _in_common_spelling(text):
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo is _UTC else moment.astimezone(_UTC)), text
    moment = micros_to_datetime(parse_timestamp(text))
    return moment, moment.isoformat()


def _in_common_spelling(text: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+hh:mm|-hh:mm)``, the shape in which
    ``fromisoformat`` (which checks the digits) and PostgreSQL read exactly
    what ``parse_timestamp`` reads. Other spellings take the slow path."""
    length = len(text)
    if length < 20 or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[13] != ":" or text[16] != ":":
        return False
    if text[-1] == "Z":
        zone = length - 1
    elif length >= 25 and text[-6] in "+-" and text[-3] == ":":
        zone = length - 6
    else:
        return False
    return zone == 19 or (text[19] == "." and 21 <= zone <= 26)


def micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def datetime_to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _row(closure: Any, source: SourceOffset, raw: bytes, key: bytes | None) -> ClosureRow:
    if type(closure) is not dict:
        raise _Invalid("the closure must be a JSON object")
    get = closure.get
    closure_id = _string(get("closure_id", _MISSING), "closure_id", MAX_ID_CHARS)
    reason = get("reason", _MISSING)
    if reason not in CLOSE_REASONS:
        raise _Invalid("reason: missing" if reason is _MISSING else
                       f"reason: must be one of {', '.join(sorted(CLOSE_REASONS))}")
    record = get("record", _MISSING)
    if type(record) is not dict:
        raise _Invalid("record: missing" if record is _MISSING else "record: must be a JSON object")
    field = record.get
    session_id = _string(field("session_id", _MISSING), "record.session_id", MAX_ID_CHARS)
    if session_id != closure_id:
        raise _Invalid("record.session_id: must equal closure_id")
    tenant_id = _string(field("tenant_id", _MISSING), "record.tenant_id", MAX_ID_CHARS)
    provider_id = _string(field("provider_id", _MISSING), "record.provider_id", MAX_NAME_CHARS)
    model = _string(field("model", _MISSING), "record.model", MAX_NAME_CHARS)
    created_at, created_text = _timestamp(field("created_at", _MISSING), "record.created_at")
    activated = field("activated_at", _MISSING)
    activated_at, activated_text = (None, None) if activated is None else _timestamp(activated,
                                                                                     "record.activated_at", True)
    closed_at, closed_text = _timestamp(field("closed_at", _MISSING), "record.closed_at")
    ttl_secs = _integer(field("ttl_secs", _MISSING), "record.ttl_secs", 1, MAX_TTL_SECS)
    round_count = _integer(field("round_count", _MISSING), "record.round_count", 0, MAX_COUNT)
    initial = _integer(field("initial_token_count", _MISSING), "record.initial_token_count", 0, MAX_COUNT)
    delta = _integer(field("delta_token_count", _MISSING), "record.delta_token_count", 0, MAX_COUNT)
    metadata = field("metadata", _MISSING)
    if metadata is _MISSING:
        raise _Invalid("record.metadata: missing")
    total = _integer(get("total_token_count", _MISSING), "total_token_count", 0, MAX_TOTAL)
    if total != initial + delta:
        raise _Invalid("total_token_count: must equal record.initial_token_count + record.delta_token_count "
                       f"({initial + delta}), not {total}")
    missing_rounds = _integer(get("missing_rounds", _MISSING), "missing_rounds", 0, round_count)
    emitted_text = _timestamp(get("emitted_at", _MISSING), "emitted_at")[1]
    content = (closure_id, reason, total, missing_rounds, session_id, tenant_id, provider_id, model, created_at,
               activated_at, closed_at, ttl_secs, round_count, initial, delta, metadata)
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest()
    record_json = None
    record_text = _json_text(record)
    if _NUL_ESCAPE in raw:
        # The ids and names are columns and what billing keys on: SPEC §3 forbids U+0000 in
        # them. Anywhere else (metadata, unknown fields) it is kept, and the closure billed.
        for name, text in (("closure_id", closure_id), ("record.tenant_id", tenant_id),
                           ("record.provider_id", provider_id), ("record.model", model)):
            if "\x00" in text:
                raise _Invalid(f"{name}: contains U+0000 (SPEC §3 forbids it in ids and names)")
        storable = _without_nul(record)
        if storable != record:
            record_json, record_text = record_text, _json_text(storable)
    # Positional, in field order: the fastest way to build the tuple.
    return ClosureRow(closure_id, reason, session_id, tenant_id, provider_id, model, created_text, activated_text,
                      closed_text, ttl_secs, round_count, missing_rounds, initial, delta, total, record, record_text,
                      record_json, digest, emitted_text, source, date(closed_at.year, closed_at.month, 1), raw, key)


def _string(value: Any, name: str, max_chars: int) -> str:
    if type(value) is not str or not 1 <= len(value) <= max_chars:
        raise _Invalid(f"{name}: missing" if value is _MISSING else
                       f"{name}: must be a string of 1..{max_chars} characters")
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    # type() rather than isinstance(): true and false are no numbers in JSON.
    if type(value) is not int or not low <= value <= high:
        raise _Invalid(f"{name}: missing" if value is _MISSING else f"{name}: must be an integer in {low}..{high}")
    return value


def _timestamp(value: Any, name: str, nullable: bool = False) -> tuple[datetime, str]:
    if type(value) is not str:
        raise _Invalid(f"{name}: missing" if value is _MISSING else
                       f"{name}: must be an RFC 3339 timestamp" + (" or null" if nullable else ""))
    try:
        return _instant_and_text(value)
    except (ValueError, OverflowError):
        raise _Invalid(f"{name}: must be an RFC 3339 timestamp with offset, in years 1..9999") from None


def _json_text(value: Any) -> str:
    """``value`` as JSON text; deeper than orjson writes (254 levels) with the
    stdlib, since PostgreSQL reads it (RecursionError past ~1000 levels)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False)


def _without_nul(value: Any) -> Any:
    """``value`` with each U+0000 of its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, dict):
        return {key.replace("\x00", NUL_REPLACEMENT): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
