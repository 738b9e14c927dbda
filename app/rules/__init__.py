"""The accounting rules of SPEC §3-§7, as pure functions.

No I/O, no Faust, no clock: the worker passes `now` in.  Everything the
service decides about money is decided here, so it can be tested directly
and exhaustively; agents, timers and web views are thin adapters around
`apply`.  Only the standard library and orjson are imported
(tests/rules/test_imports.py holds that).

Read in this order: `values` (how data is declared: immutable values),
`limits` and `timestamps` (units and bounds), `model`
(what is kept per session) with `rounds` (missing round numbers), `events`
and `decode` (what comes in), `outputs` (what goes out), `apply` (the
transitions), `codec` (the changelog bytes); then `usage`, a tenant's
period usage, budgets and threshold alerts (SPEC §9), built on the others.
"""

from app.rules.apply import Transition, apply, settle_owed
from app.rules.codec import decode_state, encode_state
from app.rules.decode import decode_event
from app.rules.events import (
    Command,
    Delivery,
    Event,
    Expire,
    InvalidEvent,
    Purge,
    RoundCompleted,
    SessionActivated,
    SessionClosed,
    SessionCreated,
    SessionExtended,
    event_to_json,
)
from app.rules.limits import (
    DEFAULT_POLICY,
    MAX_COUNT,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_REJECTION_BYTES,
    MAX_TTL_SECS,
    RAW_PREFIX_BYTES,
    Policy,
)
from app.rules.model import (
    Session,
    Stored,
    Tombstone,
    creation_digest,
    creation_horizon,
)
from app.rules.outputs import (
    Closure,
    Outcome,
    Output,
    Reason,
    Rejection,
    Result,
    Source,
    encode_output,
)
from app.rules.record import CloseReason, SessionRecord, State
from app.rules.rounds import NO_MISSING_ROUNDS, MissingRounds
from app.rules.timestamps import SECOND, Micros, format_timestamp, parse_timestamp

__all__ = [
    "DEFAULT_POLICY",
    "MAX_COUNT",
    "MAX_ID_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_REJECTION_BYTES",
    "MAX_TTL_SECS",
    "NO_MISSING_ROUNDS",
    "RAW_PREFIX_BYTES",
    "SECOND",
    "CloseReason",
    "Closure",
    "Command",
    "Delivery",
    "Event",
    "Expire",
    "InvalidEvent",
    "Micros",
    "MissingRounds",
    "Outcome",
    "Output",
    "Policy",
    "Purge",
    "Reason",
    "Rejection",
    "Result",
    "RoundCompleted",
    "Session",
    "SessionActivated",
    "SessionClosed",
    "SessionCreated",
    "SessionExtended",
    "SessionRecord",
    "Source",
    "State",
    "Stored",
    "Tombstone",
    "Transition",
    "apply",
    "creation_digest",
    "creation_horizon",
    "decode_event",
    "decode_state",
    "encode_output",
    "encode_state",
    "event_to_json",
    "format_timestamp",
    "parse_timestamp",
    "settle_owed",
]
