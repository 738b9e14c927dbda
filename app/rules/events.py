"""What `apply` consumes: a `Delivery` of a consumed record (a gateway event,
SPEC §3, or bytes that are not one), or a timer `Command`."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from app.rules.outputs import Reason, Source
from app.rules.timestamps import Micros, format_timestamp
from app.rules.values import value


@value
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


@value
class SessionActivated:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    initial_token_count: int
    type = "session.activated"


@value
class RoundCompleted:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    round: int
    delta_token_count: int
    model: str | None = None
    type = "round.completed"


@value
class SessionExtended:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    ttl_secs: int
    type = "session.extended"


@value
class SessionClosed:
    event_id: str
    session_id: str
    tenant_id: str
    occurred_at: Micros
    reason: str | None = None
    type = "session.closed"


Event = SessionCreated | SessionActivated | RoundCompleted | SessionExtended | SessionClosed
EVENT_TYPES = (SessionCreated.type, SessionActivated.type, RoundCompleted.type, SessionExtended.type,
               SessionClosed.type)


@value
class InvalidEvent:
    """Bytes that are not a valid event; `apply` turns it into a rejection."""

    reason: Reason
    detail: str
    parsed: Any  # the decoded JSON when it decoded, else None
    raw: bytes | None
    session_key: str | None


def event_to_json(event: Event) -> dict[str, Any]:
    """The event as the gateway sent it (known fields only), for rejections."""
    data: dict[str, Any] = {"type": event.type}
    for known in fields(event):
        given = getattr(event, known.name)
        data[known.name] = format_timestamp(given) if known.name == "occurred_at" else given
    return data


# What the agent's own timer delivers: TTL expiry and retention are decided in
# `apply` too, so the rules alone say when a session closes or goes.


@value
class Expire:
    """Close the session by TTL if it is due (SPEC §5.6)."""

    session_id: str


@value
class Purge:
    """Delete the session if its retention is over (SPEC §5.10)."""

    session_id: str


Command = Expire | Purge


@value
class Delivery:
    """One record as the agent consumed it: where it came from and what it says."""

    source: Source
    message: Event | InvalidEvent
