"""Valid events of every type, for the gateway-side tests (schemas, publisher,
ingest): one session's life, each event a fresh dict."""

from __future__ import annotations

from typing import Any

SESSION = "s-example"
TENANT = "acme"


def example_events(session_id: str = SESSION, tenant_id: str = TENANT) -> dict[str, dict[str, Any]]:
    """One valid event per type, keyed by type, in lifecycle order."""
    common = {"session_id": session_id, "tenant_id": tenant_id}
    return {
        "session.created": {
            "event_id": f"{session_id}:created", "type": "session.created", **common,
            "occurred_at": "2024-05-01T12:00:00Z", "provider_id": "openai", "model": "gpt-x", "ttl_secs": 600,
            "metadata": {"team": "search", "tags": [1, 2]},
        },
        "session.activated": {
            "event_id": f"{session_id}:activated", "type": "session.activated", **common,
            "occurred_at": "2024-05-01T14:00:01+02:00", "initial_token_count": 1200,
        },
        "round.completed": {
            "event_id": f"{session_id}:round:1", "type": "round.completed", **common,
            "occurred_at": "2024-05-01T12:00:02.5Z", "round": 1, "delta_token_count": 300, "model": "gpt-x",
        },
        "session.extended": {
            "event_id": f"{session_id}:extended:1", "type": "session.extended", **common,
            "occurred_at": "2024-05-01T12:00:03Z", "ttl_secs": 1200,
        },
        "session.closed": {
            "event_id": f"{session_id}:closed", "type": "session.closed", **common,
            "occurred_at": "2024-05-01T12:00:04.123456789Z", "reason": "user",
        },
    }
