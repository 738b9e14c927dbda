"""Gateway events for hand-written scenarios (the simulator writes whole fleets)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.support.clock import now_rfc3339

__all__ = ["event", "session_events"]


def event(kind: str, session_id: str, n: int, tenant_id: str = "tenant-a", **fields: Any) -> dict[str, Any]:
    """A gateway event with the common fields filled in."""
    return {"event_id": f"{session_id}-{n}", "type": kind, "session_id": session_id, "tenant_id": tenant_id,
            "occurred_at": fields.pop("occurred_at", None) or now_rfc3339(), **fields}


def session_events(session_id: str, rounds: Iterable[int], *, ttl_secs: int = 60, initial: int = 100,
                   close: bool = True, tenant_id: str = "tenant-a") -> list[dict[str, Any]]:
    """created, activated, one round per delta, and closed."""
    events = [event("session.created", session_id, 0, tenant_id, provider_id="prov", model="model-x",
                    ttl_secs=ttl_secs, metadata={"team": "t1"}),
              event("session.activated", session_id, 1, tenant_id, initial_token_count=initial)]
    for number, delta in enumerate(rounds, start=1):
        events.append(event("round.completed", session_id, 1 + number, tenant_id, round=number,
                            delta_token_count=delta))
    if close:
        events.append(event("session.closed", session_id, len(events), tenant_id, reason="done"))
    return events
