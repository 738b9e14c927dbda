"""What `apply` produces: closures (SPEC §6), rejections (§7) and one `Outcome`
per delivery for the counters."""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Any

import orjson

from app.rules.limits import MAX_REJECTION_BYTES, RAW_PREFIX_BYTES
from app.rules.record import CloseReason, SessionRecord
from app.rules.timestamps import Micros, format_timestamp
from app.rules.values import value


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


class Result(StrEnum):
    """How one delivery ended.  Every gateway event ends in exactly one of the
    first three; `redelivered` marks Kafka re-delivering an offset this
    session has already accounted for, and `command` an internal command."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    REDELIVERED = "redelivered"
    COMMAND = "command"


@value
class Source:
    """Where a consumed record came from."""

    topic: str
    partition: int
    offset: int


@value
class Closure:
    """A closure without its `emitted_at`, which the sender stamps."""

    record: SessionRecord
    reason: CloseReason
    missing_rounds: int

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


@value
class Rejection:
    """A rejection without its `rejected_at`, which the sender stamps."""

    session_key: str | None
    reason: Reason
    detail: str
    event: Any
    raw: bytes | None
    source: Source
    #: Owed by a v1 changelog value whose outbox had dropped `event` to stay
    #: small; published with `"event_omitted": true` so readers know.
    event_omitted: bool = False

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


Output = Closure | Rejection


@value
class Outcome:
    """What happened to one delivery, for the counters."""

    result: Result
    event_type: str | None
    reason: Reason | None = None


def encode_output(output: Output, stamped_at: Micros, original: bytes | None = None) -> bytes:
    """The bytes to publish: a closure with `emitted_at`, or a rejection with
    `rejected_at`, both `stamped_at`.

    A rejection whose JSON passes MAX_REJECTION_BYTES carries, instead of
    its event, the first RAW_PREFIX_BYTES of the original record in `raw`,
    with `raw_truncated` and `raw_size` (SPEC §7). The original is the
    rejection's own `raw`, else `original` (the consumed record's value),
    else the event re-encoded (a rejection owed by a v1 changelog value).
    """
    body = output.to_json(stamped_at)
    data = orjson.dumps(body)
    if len(data) <= MAX_REJECTION_BYTES or isinstance(output, Closure):
        return data
    raw = output.raw if output.raw is not None else original if original is not None else orjson.dumps(output.event)
    return orjson.dumps({**body, "event": None, "raw": base64.b64encode(raw[:RAW_PREFIX_BYTES]).decode("ascii"),
                         "raw_truncated": True, "raw_size": len(raw)})
