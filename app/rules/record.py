"""The §4 record of a session, and its states: what outputs and the model
both name (its own module, so that `outputs` needs nothing of `model`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from app.rules.timestamps import (
    SECOND,
    Micros,
    format_optional,
    format_timestamp,
    parse_optional,
    parse_timestamp,
)
from app.rules.values import value


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    CLOSED = "closed"


class CloseReason(StrEnum):
    CLOSED = "closed"
    TTL_EXPIRED = "ttl_expired"


@value
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

    def with_rounds(self, round_count: int, delta_token_count: int) -> SessionRecord:
        """This record with new round totals. Positional rather than
        `dataclasses.replace`, which costs several times more, and rounds
        are most of the traffic (tests/rules/test_model.py checks it keeps
        every other field)."""
        return SessionRecord(self.session_id, self.tenant_id, self.provider_id, self.model, self.created_at,
                             self.activated_at, self.closed_at, self.ttl_secs, round_count, self.initial_token_count,
                             delta_token_count, self.metadata)

    def to_json(self) -> dict[str, Any]:
        """The exact JSON shape of SPEC §4."""
        return {
            "session_id": self.session_id,
            "tenant_id": self.tenant_id,
            "provider_id": self.provider_id,
            "model": self.model,
            "created_at": format_timestamp(self.created_at),
            "activated_at": format_optional(self.activated_at),
            "closed_at": format_optional(self.closed_at),
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
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(
            session_id=data["session_id"],
            tenant_id=data["tenant_id"],
            provider_id=data["provider_id"],
            model=data["model"],
            created_at=parse_timestamp(data["created_at"]),
            activated_at=parse_optional(data["activated_at"]),
            closed_at=parse_optional(data["closed_at"]),
            ttl_secs=data["ttl_secs"],
            round_count=data["round_count"],
            initial_token_count=data["initial_token_count"],
            delta_token_count=data["delta_token_count"],
            metadata=data["metadata"],
        )
