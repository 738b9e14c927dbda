"""The accounting rules of SPEC §3-§7, as pure functions.

No I/O, no Faust, no clock: the worker passes `now` in.  Everything the
service decides about money is decided here, so it can be tested directly
and exhaustively; agents, timers and web views are thin adapters around
`apply`.

Times are integers: microseconds since the Unix epoch, UTC (`Micros`).  Integer
time keeps comparisons exact and state cheap to copy; RFC 3339 text exists only
at the wire edges (`parse_timestamp`, `format_timestamp`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Union

import orjson

Micros = int
MAX_COUNT = 2**63 - 1
MAX_TTL_SECS = 2**32
MAX_ID_CHARS = 128
#: provider_id, model and a close reason: the spec sets no bound, but each is
#: copied into the record, the changelog and the closure, and an unbounded one
#: (1 MB) made those exceed Kafka's request size and crashed the worker.
MAX_NAME_CHARS = 1024
# orjson encodes at most 254 levels of nesting, and a creation's metadata ends
# up to 4 levels down (session -> outbox -> rejection -> event -> metadata), so
# deeper metadata is refused, and deeper invalid events are kept as raw bytes.
MAX_JSON_DEPTH = 128
#: A session's outbox keeps the bodies of its rejected events up to this many
#: bytes; later ones are kept without the body (`event_omitted`). Each entry
#: stays until the broker confirms it, and a flood of legal but clashing
#: creations (16 KiB of metadata each) grew one table value past Kafka's
#: ~1 MB record limit and crashed the worker (found by tests/faults). Only a
#: re-publication after a crash or rebalance lacks the body: the first
#: publication always carries it, and `source` locates the event anyway.
OUTBOX_EVENT_BYTES = 64 * 1024
SECOND: Micros = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Reason(StrEnum):
    """Why an event was rejected (SPEC §7)."""

    INVALID_EVENT = "invalid_event"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXISTS = "session_exists"
    INVALID_TRANSITION = "invalid_transition"
    MODEL_MISMATCH = "model_mismatch"
    TENANT_MISMATCH = "tenant_mismatch"
    SESSION_EXPIRED = "session_expired"
    SESSION_CLOSED = "session_closed"
    CLOCK_SKEW = "clock_skew"
    OVERFLOW = "overflow"
    KEY_MISMATCH = "key_mismatch"
    INTERNAL_ERROR = "internal_error"


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    CLOSED = "closed"


class CloseReason(StrEnum):
    CLOSED = "closed"
    TTL_EXPIRED = "ttl_expired"


class Result(StrEnum):
    """How one delivery ended.  Every gateway event ends in exactly one of the
    first three; `redelivered` marks Kafka re-delivering an offset this
    session has already accounted for, and `command` an internal command."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    REDELIVERED = "redelivered"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class Policy:
    """The configurable knobs of the rules (SPEC §5)."""

    grace: Micros = 5 * SECOND
    max_clock_skew: Micros = 300 * SECOND
    retention: Micros = 3600 * SECOND
    metadata_max_bytes: int = 16 * 1024


DEFAULT_POLICY = Policy()


# --------------------------------------------------------------------------
# Timestamps


# ASCII digits only, and `\Z` rather than `$` (which matches before a final newline).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)


def parse_timestamp(text: str) -> Micros:
    """RFC 3339 with a mandatory offset; sub-microsecond digits are truncated."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp with offset")
    day, clock, fraction, offset = match.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    # In UTC, so an instant outside years 1..9999 UTC raises OverflowError here
    # rather than later when it is formatted.
    moment = datetime.fromisoformat(f"{day}T{clock}{offset}").astimezone(timezone.utc)
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + micros


def format_timestamp(micros: Micros) -> str:
    """RFC 3339 in UTC with a `Z` suffix; fraction only when non-zero."""
    moment = _EPOCH + timedelta(microseconds=micros)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# --------------------------------------------------------------------------
# The record (SPEC §4)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """The persisted record and the API's view of a session, field for field."""

    session_id: str
    tenant_id: str
    provider_id: str
    model: str
    created_at: Micros
    activated_at: Micros | None
    closed_at: Micros | None
    ttl_secs: int
    round_count: int
    initial_token_count: int
    delta_token_count: int
    metadata: Any

    @property
    def state(self) -> State:
        if self.closed_at is not None:
            return State.CLOSED
        if self.activated_at is not None:
            return State.ACTIVE
        return State.PENDING

    @property
    def expires_at(self) -> Micros:
        return self.created_at + self.ttl_secs * SECOND

    @property
    def total_token_count(self) -> int:
        return self.initial_token_count + self.delta_token_count

    def to_json(self) -> dict[str, Any]:
        """The exact JSON shape of SPEC §4."""
        return {
            "session_id": self.session_id,
            "tenant_id": self.tenant_id,
            "provider_id": self.provider_id,
            "model": self.model,
            "created_at": format_timestamp(self.created_at),
            "activated_at": _format_optional(self.activated_at),
            "closed_at": _format_optional(self.closed_at),
            "ttl_secs": self.ttl_secs,
            "round_count": self.round_count,
            "initial_token_count": self.initial_token_count,
            "delta_token_count": self.delta_token_count,
            "metadata": self.metadata,
        }

    def to_view(self) -> dict[str, Any]:
        """The record plus the derived fields the API shows (SPEC §4)."""
        view = self.to_json()
        view["state"] = self.state.value
        view["expires_at"] = format_timestamp(self.expires_at)
        view["total_token_count"] = self.total_token_count
        return view

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SessionRecord":
        return cls(
            session_id=data["session_id"],
            tenant_id=data["tenant_id"],
            provider_id=data["provider_id"],
            model=data["model"],
            created_at=parse_timestamp(data["created_at"]),
            activated_at=_parse_optional(data["activated_at"]),
            closed_at=_parse_optional(data["closed_at"]),
            ttl_secs=data["ttl_secs"],
            round_count=data["round_count"],
            initial_token_count=data["initial_token_count"],
            delta_token_count=data["delta_token_count"],
            metadata=data["metadata"],
        )


def _format_optional(micros: Micros | None) -> str | None:
    return None if micros is None else format_timestamp(micros)


def _parse_optional(text: str | None) -> Micros | None:
    return None if text is None else parse_timestamp(text)


# --------------------------------------------------------------------------
# Events (SPEC §3)


@dataclass(frozen=True, slots=True)
class SessionCreated:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    provider_id: str
    model: str
    ttl_secs: int
    metadata: Any = field(default_factory=dict)
    type = "session.created"


@dataclass(frozen=True, slots=True)
class SessionActivated:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    initial_token_count: int
    type = "session.activated"


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    round: int
    delta_token_count: int
    model: str | None = None
    type = "round.completed"


@dataclass(frozen=True, slots=True)
class SessionExtended:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    ttl_secs: int
    type = "session.extended"


@dataclass(frozen=True, slots=True)
class SessionClosed:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    reason: str | None = None
    type = "session.closed"


Event = Union[SessionCreated, SessionActivated, RoundCompleted, SessionExtended, SessionClosed]


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """Bytes that are not a valid event; `apply` turns it into a rejection."""

    reason: Reason
    detail: str
    parsed: Any  # the decoded JSON when it decoded, else None
    raw: bytes | None
    session_key: str | None


class _Invalid(Exception):
    def __init__(self, detail: str, reason: Reason = Reason.INVALID_EVENT) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


def _string(obj: dict, name: str, *, bounded: bool = True, optional: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and optional and name not in obj:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"field '{name}' must be a string")
    if bounded and not 1 <= len(value) <= MAX_ID_CHARS:
        raise _Invalid(f"field '{name}' must be 1..{MAX_ID_CHARS} characters")
    return value


def _integer(obj: dict, name: str, low: int, high: int) -> int:
    value = obj.get(name)
    # bool is an int subclass; JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"field '{name}' must be an integer in {low}..{high}")
    if not low <= value <= high:
        raise _Invalid(f"field '{name}' must be an integer in {low}..{high}")
    return value


def _nonempty(obj: dict, name: str) -> str:
    value = _string(obj, name, bounded=False)
    if not value:
        raise _Invalid(f"field '{name}' must be a non-empty string")
    if len(value) > MAX_NAME_CHARS:
        raise _Invalid(f"field '{name}' must be at most {MAX_NAME_CHARS} characters")
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
        if _deeper_than(parsed, MAX_JSON_DEPTH):  # could not be encoded inside the rejection
            return InvalidEvent(invalid.reason, invalid.detail, None, value, session_key)
        return InvalidEvent(invalid.reason, invalid.detail, parsed, None, session_key)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests more than `limit` objects/arrays deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
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
    if not isinstance(obj, dict):
        raise _Invalid("event must be a JSON object")
    common = {
        "event_id": _string(obj, "event_id"),
        "session_id": _string(obj, "session_id"),
        "tenant_id": _string(obj, "tenant_id"),
    }
    occurred = obj.get("occurred_at")
    if not isinstance(occurred, str):
        raise _Invalid("field 'occurred_at' must be an RFC 3339 timestamp string")
    try:
        common["occurred_at"] = parse_timestamp(occurred)
    except (ValueError, OverflowError):
        raise _Invalid("field 'occurred_at' must be an RFC 3339 timestamp with offset") from None
    kind = obj.get("type")
    if kind == "session.created":
        metadata = obj.get("metadata", {})
        if _deeper_than(metadata, MAX_JSON_DEPTH):
            raise _Invalid(f"field 'metadata' nests deeper than {MAX_JSON_DEPTH} levels")
        if len(orjson.dumps(metadata)) > policy.metadata_max_bytes:
            raise _Invalid(f"field 'metadata' is larger than {policy.metadata_max_bytes} bytes encoded")
        event: Event = SessionCreated(
            **common,
            provider_id=_nonempty(obj, "provider_id"),
            model=_nonempty(obj, "model"),
            ttl_secs=_integer(obj, "ttl_secs", 1, MAX_TTL_SECS),
            metadata=metadata,
        )
    elif kind == "session.activated":
        event = SessionActivated(**common, initial_token_count=_integer(obj, "initial_token_count", 0, MAX_COUNT))
    elif kind == "round.completed":
        event = RoundCompleted(
            **common,
            round=_integer(obj, "round", 1, MAX_COUNT),
            delta_token_count=_integer(obj, "delta_token_count", 0, MAX_COUNT),
            model=_nonempty(obj, "model") if obj.get("model") is not None else None,
        )
    elif kind == "session.extended":
        event = SessionExtended(**common, ttl_secs=_integer(obj, "ttl_secs", 1, MAX_TTL_SECS))
    elif kind == "session.closed":
        reason = obj.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _Invalid("field 'reason' must be a string")
        if reason is not None and len(reason) > MAX_NAME_CHARS:
            raise _Invalid(f"field 'reason' must be at most {MAX_NAME_CHARS} characters")
        event = SessionClosed(**common, reason=reason)
    else:
        raise _Invalid("field 'type' must be one of session.created, session.activated, "
                       "round.completed, session.extended, session.closed")
    if session_key is not None and session_key != event.session_id:
        raise _Invalid("field 'session_id' differs from the Kafka key", Reason.KEY_MISMATCH)
    return event


def event_to_json(event: Event) -> dict[str, Any]:
    """The event as the gateway sent it (known fields only), for rejections."""
    data: dict[str, Any] = {"type": event.type}
    for name in event.__slots__:
        value = getattr(event, name)
        data[name] = format_timestamp(value) if name == "occurred_at" else value
    return data


# --------------------------------------------------------------------------
# Internal commands: what the TTL timer and the output confirmations ask the
# agent to do, so every table write happens in an event's context.


@dataclass(frozen=True, slots=True)
class Expire:
    session_id: str


@dataclass(frozen=True, slots=True)
class Purge:
    session_id: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """The outputs with these ids were acknowledged by the broker."""

    session_id: str
    output_ids: tuple[str, ...]


Command = Union[Expire, Purge, Confirm]


def encode_command(command: Command) -> bytes:
    body: dict[str, Any] = {"command": type(command).__name__.lower(), "session_id": command.session_id}
    if isinstance(command, Confirm):
        body["output_ids"] = list(command.output_ids)
    return orjson.dumps(body)


def decode_command(value: bytes) -> Command:
    body = orjson.loads(value)
    kind = body["command"]
    if kind == "expire":
        return Expire(body["session_id"])
    if kind == "purge":
        return Purge(body["session_id"])
    if kind == "confirm":
        return Confirm(body["session_id"], tuple(body["output_ids"]))
    raise ValueError(f"unknown command {kind!r}")


# --------------------------------------------------------------------------
# Outputs (SPEC §6, §7)


@dataclass(frozen=True, slots=True)
class Closure:
    """A closure without its `emitted_at`, which the sender stamps."""

    record: SessionRecord
    reason: CloseReason
    missing_rounds: int

    output_id = "closure"

    @property
    def session_id(self) -> str:
        return self.record.session_id

    def to_json(self, emitted_at: Micros) -> dict[str, Any]:
        return {
            "closure_id": self.record.session_id,
            "reason": self.reason.value,
            "record": self.record.to_json(),
            "total_token_count": self.record.total_token_count,
            "missing_rounds": self.missing_rounds,
            "emitted_at": format_timestamp(emitted_at),
        }


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejection without its `rejected_at`, which the sender stamps."""

    session_key: str | None
    reason: Reason
    detail: str
    event: Any
    raw: bytes | None
    source: Source
    #: The outbox copy of a rejection dropped `event` (see OUTBOX_EVENT_BYTES).
    event_omitted: bool = False

    @property
    def output_id(self) -> str:
        return f"rejection:{self.source.topic}:{self.source.partition}:{self.source.offset}"

    @property
    def session_id(self) -> str | None:
        return self.session_key

    def to_json(self, rejected_at: Micros) -> dict[str, Any]:
        body: dict[str, Any] = {
            "reason": self.reason.value,
            "detail": self.detail,
            "event": self.event,
            "source": {"topic": self.source.topic, "partition": self.source.partition, "offset": self.source.offset},
            "rejected_at": format_timestamp(rejected_at),
        }
        if self.raw is not None:
            body["raw"] = base64.b64encode(self.raw).decode("ascii")
        if self.event_omitted:
            body["event_omitted"] = True
        return body


Output = Union[Closure, Rejection]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery, for the counters."""

    result: Result
    event_type: str | None
    reason: Reason | None = None


# --------------------------------------------------------------------------
# The stored state of a session: the record plus bookkeeping.


@dataclass(frozen=True, slots=True)
class Session:
    """The table value: the §4 record plus what exactly-once accounting needs.

    `partition`, `created_offset` and `last_offset` locate the events this
    session has accounted for, so Kafka re-delivering them changes nothing.
    `outbox` holds outputs not yet confirmed by the broker; they are re-sent
    after recovery until a `Confirm` command removes them.
    `extended_at` is the `occurred_at` of the extension in force, so a re-sent
    older extension does not roll the TTL back.
    """

    record: SessionRecord
    created_ttl_secs: int
    missing_rounds: int
    close_reason: CloseReason | None
    closed_seen_at: Micros | None
    partition: int
    created_offset: int
    last_offset: int
    outbox: tuple[Output, ...] = ()
    extended_at: Micros | None = None

    @property
    def state(self) -> State:
        return self.record.state

    def closure(self) -> Closure:
        assert self.close_reason is not None, "only a closed session has a closure"
        return Closure(self.record, self.close_reason, self.missing_rounds)

    def due_at(self, policy: Policy) -> Micros:
        """When the timer must look at this session next: TTL close, or purge."""
        if self.closed_seen_at is None:
            return self.record.expires_at + policy.grace
        return self.purge_at(policy)

    def purge_at(self, policy: Policy) -> Micros:
        """Retention after the close, and never before a re-sent creation of this
        session would be refused as too late (`_create`): deleting earlier would
        let such a re-send open the session a second time."""
        return max(self.closed_seen_at or 0, self.record.expires_at + policy.grace) + policy.retention

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record.to_json(),
            "created_ttl_secs": self.created_ttl_secs,
            "missing_rounds": self.missing_rounds,
            "close_reason": None if self.close_reason is None else self.close_reason.value,
            "closed_seen_at": self.closed_seen_at,
            "partition": self.partition,
            "created_offset": self.created_offset,
            "last_offset": self.last_offset,
            "outbox": [_output_to_state(output) for output in self.outbox],
            "extended_at": self.extended_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Session":
        record = SessionRecord.from_json(data["record"])
        close_reason = None if data["close_reason"] is None else CloseReason(data["close_reason"])
        session = cls(
            record=record,
            created_ttl_secs=data["created_ttl_secs"],
            missing_rounds=data["missing_rounds"],
            close_reason=close_reason,
            closed_seen_at=data["closed_seen_at"],
            partition=data["partition"],
            created_offset=data["created_offset"],
            last_offset=data["last_offset"],
            extended_at=data.get("extended_at"),
        )
        outbox = tuple(_output_from_state(item, session) for item in data["outbox"])
        return replace(session, outbox=outbox)


def _output_to_state(output: Output) -> dict[str, Any]:
    if isinstance(output, Closure):
        return {"kind": "closure"}  # rebuilt from the closed record itself
    item = {
        "kind": "rejection",
        "reason": output.reason.value,
        "detail": output.detail,
        "event": output.event,
        "source": [output.source.topic, output.source.partition, output.source.offset],
    }
    if output.event_omitted:
        item["event_omitted"] = True
    return item


def _output_from_state(item: dict[str, Any], session: Session) -> Output:
    if item["kind"] == "closure":
        return session.closure()
    topic, partition, offset = item["source"]
    return Rejection(
        session.record.session_id, Reason(item["reason"]), item["detail"], item["event"], None,
        Source(topic, partition, offset), item.get("event_omitted", False),
    )


def encode_session(session: Session) -> bytes:
    return orjson.dumps(session.to_json())


def decode_session(data: bytes) -> Session:
    return Session.from_json(orjson.loads(data))


# --------------------------------------------------------------------------
# apply


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record as the agent consumed it: where it came from and what it says."""

    source: Source
    message: Event | InvalidEvent | Command


Transition = tuple[Session | None, tuple[Union[Output, Outcome], ...]]


def apply(state: Session | None, delivery: Delivery, now: Micros, policy: Policy = DEFAULT_POLICY) -> Transition:
    """Apply one delivery to a session's state.

    Returns the new state (the same object when nothing changed, None when the
    record is to be deleted) and the outputs: closures and rejections to
    publish, and exactly one `Outcome`.  Outputs that are also in the new
    state's outbox must be confirmed with a `Confirm` command once published;
    the others are derived again if Kafka re-delivers the event.
    """
    message = delivery.message
    source = delivery.source
    if isinstance(message, (Expire, Purge, Confirm)):
        return _apply_command(state, message, now, policy)
    if isinstance(message, InvalidEvent):
        # Decided from the bytes alone, so a re-delivery decides the same.
        rejection = Rejection(message.session_key, message.reason, message.detail, message.parsed, message.raw, source)
        return state, (rejection, Outcome(Result.REJECTED, _type_of(message.parsed), message.reason))
    if (state is not None and source.partition == state.partition
            and state.created_offset <= source.offset <= state.last_offset):
        return state, (Outcome(Result.REDELIVERED, message.type),)
    # An offset before the record's creation was consumed when the session did
    # not exist yet: judge it so again, or a re-delivery would change its fate.
    known = state if state is not None and source.offset > state.created_offset else None
    if message.occurred_at > now + policy.max_clock_skew:
        return _reject(known, state, message, source, Reason.CLOCK_SKEW,
                       f"field 'occurred_at' is more than {policy.max_clock_skew // SECOND} s ahead of the worker's clock")
    if state is None and isinstance(message, SessionCreated):
        return _create(message, source, now, policy)
    if state is None or (known is None and not isinstance(message, SessionCreated)):
        return _reject(None, state, message, source, Reason.UNKNOWN_SESSION,
                       f"field 'session_id' names no known session ({message.session_id!r})")
    return _apply_to_session(state, message, source, now, policy)


def _type_of(parsed: Any) -> str | None:
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def _apply_command(state: Session | None, command: Command, now: Micros, policy: Policy) -> Transition:
    outcome = Outcome(Result.COMMAND, type(command).__name__.lower())
    if state is None:
        return None, (outcome,)
    if isinstance(command, Confirm):
        confirmed = set(command.output_ids)
        outbox = tuple(o for o in state.outbox if o.output_id not in confirmed)
        if len(outbox) == len(state.outbox):
            return state, (outcome,)
        return replace(state, outbox=outbox), (outcome,)
    if isinstance(command, Expire):
        if state.state is State.CLOSED or now < state.record.expires_at + policy.grace:
            return state, (outcome,)
        closed = _close(state, CloseReason.TTL_EXPIRED, state.record.expires_at, now)
        return closed, (closed.closure(), outcome)
    # Purge: delete once retention is over and every output is confirmed; an
    # unconfirmed output is sent again instead, and the purge retried later.
    if state.closed_seen_at is None or now < state.purge_at(policy):
        return state, (outcome,)
    if state.outbox:
        return state, (*state.outbox, outcome)
    return None, (outcome,)


def _create(event: SessionCreated, source: Source, now: Micros, policy: Policy) -> Transition:
    expires_at = event.occurred_at + event.ttl_secs * SECOND
    if expires_at + policy.grace + policy.retention < now:
        # Its record would already have been closed and purged: this can only
        # be a re-send of a session that is gone, and must not open it again.
        return _reject(None, None, event, source, Reason.SESSION_EXPIRED,
                       "field 'occurred_at' plus 'ttl_secs' lies before the retention horizon")
    record = SessionRecord(
        session_id=event.session_id, tenant_id=event.tenant_id, provider_id=event.provider_id,
        model=event.model, created_at=event.occurred_at, activated_at=None, closed_at=None,
        ttl_secs=event.ttl_secs, round_count=0, initial_token_count=0, delta_token_count=0,
        metadata=event.metadata,
    )
    session = Session(record=record, created_ttl_secs=event.ttl_secs, missing_rounds=0, close_reason=None,
                      closed_seen_at=None, partition=source.partition, created_offset=source.offset,
                      last_offset=source.offset)
    return session, (Outcome(Result.APPLIED, event.type),)


def _is_duplicate(session: Session, event: Event) -> bool:
    """Whether the event repeats what the session already holds (SPEC §5)."""
    record = session.record
    if isinstance(event, SessionCreated):
        return (event.tenant_id, event.provider_id, event.model, event.ttl_secs, event.metadata,
                event.occurred_at) == (record.tenant_id, record.provider_id, record.model,
                                       session.created_ttl_secs, record.metadata, record.created_at)
    if isinstance(event, SessionActivated):
        return record.activated_at is not None and event.initial_token_count == record.initial_token_count
    if isinstance(event, RoundCompleted):
        return record.activated_at is not None and event.round <= record.round_count and (
            event.model is None or event.model == record.model)
    if isinstance(event, SessionClosed):
        return record.closed_at is not None
    if isinstance(event, SessionExtended):
        # The extension in force, or one it superseded (a re-send, or an older
        # extension arriving late): the latest by (occurred_at, ttl_secs) wins
        # whatever the arrival order.
        return session.extended_at is not None and (
            (event.occurred_at, event.ttl_secs) <= (session.extended_at, record.ttl_secs))
    return False


def _apply_to_session(session: Session, event: Event, source: Source, now: Micros, policy: Policy) -> Transition:
    record = session.record
    if isinstance(event, SessionCreated):
        # A creation that differs in anything, tenant included, is a clash of
        # ids rather than an event for this session (SPEC §5.1).
        if _is_duplicate(session, event):
            return session, (Outcome(Result.DUPLICATE, event.type),)
        return _reject(session, session, event, source, Reason.SESSION_EXISTS,
                       "a session with this 'session_id' exists with a different creation")
    if event.tenant_id != record.tenant_id:
        return _reject(session, session, event, source, Reason.TENANT_MISMATCH,
                       f"field 'tenant_id' differs from the session's tenant ({record.tenant_id!r})")
    if isinstance(event, SessionActivated) and record.activated_at is not None:
        # SPEC §5.2 names this case, closed sessions included.
        if _is_duplicate(session, event):
            return session, (Outcome(Result.DUPLICATE, event.type),)
        return _reject(session, session, event, source, Reason.INVALID_TRANSITION,
                       "field 'initial_token_count' differs from the activation already applied")
    if record.closed_at is not None:
        if _is_duplicate(session, event):
            return session, (Outcome(Result.DUPLICATE, event.type),)
        return _reject(session, session, event, source, Reason.SESSION_CLOSED,
                       f"field 'session_id' names a closed session ({record.session_id!r})")
    if event.occurred_at > record.expires_at:
        return _reject(session, session, event, source, Reason.SESSION_EXPIRED,
                       "field 'occurred_at' is after the session's expires_at")
    if isinstance(event, SessionActivated):
        updated = replace(record, activated_at=event.occurred_at, initial_token_count=event.initial_token_count)
        return _applied(session, updated, event, source)
    if isinstance(event, RoundCompleted):
        return _apply_round(session, event, source)
    if isinstance(event, SessionExtended):
        if _is_duplicate(session, event):
            return session, (Outcome(Result.DUPLICATE, event.type),)
        extended_session = replace(session, extended_at=event.occurred_at)
        return _applied(extended_session, replace(record, ttl_secs=event.ttl_secs), event, source)
    closed = _close(replace(session, last_offset=source.offset), CloseReason.CLOSED, event.occurred_at, now)
    return closed, (closed.closure(), Outcome(Result.APPLIED, event.type))


def _apply_round(session: Session, event: RoundCompleted, source: Source) -> Transition:
    record = session.record
    if record.activated_at is None:
        return _reject(session, session, event, source, Reason.INVALID_TRANSITION,
                       "field 'type' round.completed needs an active session; this one is pending")
    if event.model is not None and event.model != record.model:
        return _reject(session, session, event, source, Reason.MODEL_MISMATCH,
                       f"field 'model' differs from the session's model ({record.model!r})")
    if event.round <= record.round_count:
        return session, (Outcome(Result.DUPLICATE, event.type),)
    delta = record.delta_token_count + event.delta_token_count
    if delta > MAX_COUNT or record.initial_token_count + delta > MAX_COUNT:
        return _reject(session, session, event, source, Reason.OVERFLOW,
                       "field 'delta_token_count' would take the session's token count past 2^63-1")
    skipped = event.round - record.round_count - 1
    updated = replace(record, round_count=event.round, delta_token_count=delta)
    session = replace(session, missing_rounds=session.missing_rounds + skipped)
    return _applied(session, updated, event, source)


def _applied(session: Session, record: SessionRecord, event: Event, source: Source) -> Transition:
    return replace(session, record=record, last_offset=source.offset), (Outcome(Result.APPLIED, event.type),)


def _close(session: Session, reason: CloseReason, closed_at: Micros, now: Micros) -> Session:
    closed = replace(session, record=replace(session.record, closed_at=closed_at), close_reason=reason,
                     closed_seen_at=now)
    return closed  # TEMPORARY shim until the rules package lands: no outbox


def _reject(session: Session | None, state: Session | None, event: Event, source: Source, reason: Reason,
            detail: str) -> Transition:
    """Reject against `session`, or, when None, without touching `state`."""
    rejection = Rejection(event.session_id, reason, detail, event_to_json(event), None, source)
    outcome = Outcome(Result.REJECTED, event.type, reason)
    if session is None:
        return state, (rejection, outcome)
    # Remember the offset, so a re-delivery is not judged against a later
    # state; and keep the rejection until the broker confirms it.
    updated = replace(session, last_offset=source.offset)  # TEMPORARY shim: no outbox
    return updated, (rejection, outcome)


def _outbox_copy(session: Session, rejection: Rejection) -> Rejection:
    """The rejection as the outbox keeps it: whole while the bodies kept stay
    within OUTBOX_EVENT_BYTES, else without its event."""
    kept = sum(len(orjson.dumps(output.event)) for output in session.outbox
               if isinstance(output, Rejection) and output.event is not None)
    if kept + len(orjson.dumps(rejection.event)) <= OUTBOX_EVENT_BYTES:
        return rejection
    return replace(rejection, event=None, event_omitted=True)



# TEMPORARY shims until the rules package lands (rules helper).
MAX_REJECTION_BYTES = 256 * 1024
RAW_PREFIX_BYTES = 64 * 1024


def encode_output(output: Output, now: Micros, original: bytes | None = None) -> bytes:
    data = orjson.dumps(output.to_json(now))
    if len(data) <= MAX_REJECTION_BYTES or not isinstance(output, Rejection):
        return data
    raw = output.raw if output.raw is not None else original if original is not None else orjson.dumps(output.event)
    return orjson.dumps({**output.to_json(now), "event": None,
                         "raw": base64.b64encode(raw[:RAW_PREFIX_BYTES]).decode("ascii"),
                         "raw_truncated": True, "raw_size": len(raw)})


def settle_owed(state: Session) -> tuple[Session, tuple[Output, ...]]:
    if not state.outbox:
        return state, ()
    return replace(state, outbox=()), state.outbox
