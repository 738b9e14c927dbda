"""What the rules keep per session: the §4 record and its bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.rules.limits import Policy
from app.rules.outputs import Closure, Output
from app.rules.timestamps import SECOND, Micros, format_optional, format_timestamp, parse_optional, parse_timestamp


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    CLOSED = "closed"


class CloseReason(StrEnum):
    CLOSED = "closed"
    TTL_EXPIRED = "ttl_expired"


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


@dataclass(frozen=True, slots=True)
class Session:
    """The table value: the §4 record plus what exactly-once accounting needs.

    `partition`, `created_offset` and `last_offset` locate the events this
    session has accounted for, so Kafka re-delivering them changes nothing.
    `extended_at` is the `occurred_at` of the extension in force, so a re-sent
    older extension does not roll the TTL back.
    `owed` is only ever non-empty for a value read from a v1 changelog: the
    outputs its outbox still waited to have confirmed. `apply` and
    `settle_owed` hand them out once, and a stored state never holds them.
    """

    record: SessionRecord
    created_ttl_secs: int
    missing_rounds: int
    close_reason: CloseReason | None
    closed_seen_at: Micros | None
    partition: int
    created_offset: int
    last_offset: int
    extended_at: Micros | None = None
    owed: tuple[Output, ...] = ()

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
