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
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson

from app.rules import MAX_COUNT, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_TTL_SECS, CloseReason, parse_timestamp

#: initial + delta, each at most MAX_COUNT: 2^64 - 2.
MAX_TOTAL = 2 * MAX_COUNT
CLOSE_REASONS = frozenset(reason.value for reason in CloseReason)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UTC = timezone.utc
# A NUL can only reach a JSON string as this escape; PostgreSQL's text and
# jsonb cannot hold it.
_NUL_ESCAPE = b"\\u0000"


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
    content_sha256: bytes
    emitted_at: str
    source: SourceOffset
    #: The record's value bytes, kept should the database refuse the row.
    raw: bytes


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
        if _NUL_ESCAPE in value:
            _refuse_nul(closure, "")
        return _row(closure, source, value)
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


def _row(closure: Any, source: SourceOffset, raw: bytes) -> ClosureRow:
    if not isinstance(closure, dict):
        raise _Invalid("the closure must be a JSON object")
    closure_id = _string(closure, "closure_id", MAX_ID_CHARS)
    reason = _field(closure, "reason")
    if reason not in CLOSE_REASONS:
        raise _Invalid(f"reason: must be one of {', '.join(sorted(CLOSE_REASONS))}")
    record = _field(closure, "record")
    if not isinstance(record, dict):
        raise _Invalid("record: must be a JSON object")
    session_id = _string(record, "session_id", MAX_ID_CHARS, "record.")
    if session_id != closure_id:
        raise _Invalid("record.session_id: must equal closure_id")
    tenant_id = _string(record, "tenant_id", MAX_ID_CHARS, "record.")
    provider_id = _string(record, "provider_id", MAX_NAME_CHARS, "record.")
    model = _string(record, "model", MAX_NAME_CHARS, "record.")
    created_at = _timestamp(record, "created_at", "record.")
    activated_at = _timestamp(record, "activated_at", "record.", optional=True)
    closed_at = _timestamp(record, "closed_at", "record.")
    ttl_secs = _integer(record, "ttl_secs", 1, MAX_TTL_SECS, "record.")
    round_count = _integer(record, "round_count", 0, MAX_COUNT, "record.")
    initial = _integer(record, "initial_token_count", 0, MAX_COUNT, "record.")
    delta = _integer(record, "delta_token_count", 0, MAX_COUNT, "record.")
    if "metadata" not in record:
        raise _Invalid("record.metadata: missing")
    total = _integer(closure, "total_token_count", 0, MAX_TOTAL)
    if total != initial + delta:
        raise _Invalid("total_token_count: must equal record.initial_token_count + record.delta_token_count "
                       f"({initial + delta}), not {total}")
    missing_rounds = _integer(closure, "missing_rounds", 0, round_count)
    emitted_at = _timestamp(closure, "emitted_at")
    content = (closure_id, reason, total, missing_rounds, session_id, tenant_id, provider_id, model,
               created_at[0], activated_at and activated_at[0], closed_at[0], ttl_secs, round_count, initial, delta,
               record["metadata"])
    return ClosureRow(
        closure_id=closure_id,
        reason=reason,
        session_id=session_id,
        tenant_id=tenant_id,
        provider_id=provider_id,
        model=model,
        created_at=created_at[1],
        activated_at=activated_at and activated_at[1],
        closed_at=closed_at[1],
        ttl_secs=ttl_secs,
        round_count=round_count,
        missing_rounds=missing_rounds,
        initial_token_count=initial,
        delta_token_count=delta,
        total_token_count=total,
        record=record,
        content_sha256=hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest(),
        emitted_at=emitted_at[1],
        source=source,
        raw=raw,
    )


def _field(obj: dict, name: str, prefix: str = "") -> Any:
    try:
        return obj[name]
    except KeyError:
        raise _Invalid(f"{prefix}{name}: missing") from None


def _string(obj: dict, name: str, max_chars: int, prefix: str = "") -> str:
    value = _field(obj, name, prefix)
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise _Invalid(f"{prefix}{name}: must be a string of 1..{max_chars} characters")
    return value


def _integer(obj: dict, name: str, low: int, high: int, prefix: str = "") -> int:
    value = _field(obj, name, prefix)
    # bool is an int in Python, but true is not a number in JSON.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Invalid(f"{prefix}{name}: must be an integer in {low}..{high}")
    return value


def _timestamp(obj: dict, name: str, prefix: str = "", *, optional: bool = False) -> tuple[datetime, str] | None:
    value = _field(obj, name, prefix)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{prefix}{name}: must be an RFC 3339 timestamp" + (" or null" if optional else ""))
    try:
        return _instant_and_text(value)
    except (ValueError, OverflowError):
        raise _Invalid(f"{prefix}{name}: must be an RFC 3339 timestamp with offset, in years 1..9999") from None


def _refuse_nul(value: Any, path: str) -> None:
    """PostgreSQL stores no U+0000 in text or jsonb: such a closure is rejected, naming where."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _Invalid(f"{path or 'closure'}: contains U+0000, which PostgreSQL cannot store")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if "\x00" in key:
                raise _Invalid(f"{path or 'closure'}: a key contains U+0000, which PostgreSQL cannot store")
            _refuse_nul(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nul(item, f"{path}[{index}]")
