"""What the rules keep per session: the §4 record and its bookkeeping, or a tombstone."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

import orjson

from app.rules.limits import Policy
from app.rules.outputs import Closure, Output
from app.rules.rounds import NO_MISSING_ROUNDS, MissingRounds
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


@value
class Session:
    """The table value of a live or recently closed session: the §4 record
    plus what exactly-once accounting needs.

    `partition`, `created_offset` and `last_offset` locate the events this
    session has accounted for, so Kafka re-delivering them changes nothing.
    `extended_at` is the `occurred_at` of the extension in force, so a re-sent
    older extension does not roll the TTL back.
    `missing` holds the round numbers not applied yet (SPEC §5.3).
    `owed` is only ever non-empty for a value read from a v1 changelog: the
    outputs its outbox still waited to have confirmed. `apply` and
    `settle_owed` hand them out once, and a stored state never holds them.
    """

    record: SessionRecord
    created_ttl_secs: int
    close_reason: CloseReason | None
    closed_seen_at: Micros | None
    partition: int
    created_offset: int
    last_offset: int
    extended_at: Micros | None = None
    missing: MissingRounds = NO_MISSING_ROUNDS
    owed: tuple[Output, ...] = ()

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def missing_rounds(self) -> int:
        return self.missing.count

    def closure(self) -> Closure:
        assert self.close_reason is not None, "only a closed session has a closure"
        return Closure(self.record, self.close_reason, self.missing.count)

    def advanced(self, record: SessionRecord, last_offset: int, missing: MissingRounds) -> Session:
        """This session with `record`, accounted up to `last_offset`. Positional,
        as `SessionRecord.with_rounds` is, for the same reason."""
        return Session(record, self.created_ttl_secs, self.close_reason, self.closed_seen_at, self.partition,
                       self.created_offset, last_offset, self.extended_at, missing, self.owed)

    def at_offset(self, last_offset: int) -> Session:
        return self.advanced(self.record, last_offset, self.missing)

    def creation_digest(self) -> bytes:
        record = self.record
        return creation_digest(record.tenant_id, record.provider_id, record.model, self.created_ttl_secs,
                               record.created_at, record.metadata)

    def due_at(self, policy: Policy) -> Micros:
        """When the timer must look at this session next: TTL close, or the
        end of retention (SPEC §5.6, §5.10)."""
        if self.closed_seen_at is None:
            return self.record.expires_at + policy.grace
        return self.closed_seen_at + policy.retention

    def tombstone_until(self, policy: Policy) -> Micros:
        """When nothing of this closed session needs to be kept any more:
        SPEC §5.10 keeps a tombstone up to `expires_at + grace`, and a re-sent
        creation is accepted until its `creation_horizon`, so something must
        call it a duplicate until then or it would open the session again."""
        horizon = creation_horizon(self.record.created_at, self.created_ttl_secs, policy)
        return max(self.record.expires_at + policy.grace, horizon)


@value
class Tombstone:
    """What stays of a closed session after its retention, while it must
    still be recognised (SPEC §5.10): a re-sent creation is a duplicate,
    any other event `session_closed`, and Kafka re-delivering an offset the
    session accounted for is a redelivery.

    `creation` is `creation_digest` of the session's creation: a fixed 16
    bytes whatever the metadata. Deleted from `until` on.
    """

    creation: bytes
    partition: int
    created_offset: int
    last_offset: int
    until: Micros

    def due_at(self, policy: Policy) -> Micros:
        return self.until

    def at_offset(self, last_offset: int) -> Tombstone:
        return Tombstone(self.creation, self.partition, self.created_offset, last_offset, self.until)


#: What the rules keep per session id; None means nothing (deleted).
Stored = Session | Tombstone


def creation_horizon(created_at: Micros, ttl_secs: int, policy: Policy) -> Micros:
    """From when a creation is refused as too late (`session_expired`): its
    session would have expired, and its record and tombstone be gone, by
    then. The creation's own TTL counts, not an extension's: a re-send
    carries the creation's."""
    return created_at + ttl_secs * SECOND + policy.grace + policy.retention


def creation_digest(tenant_id: str, provider_id: str, model: str, ttl_secs: int, occurred_at: Micros,
                    metadata: Any) -> bytes:
    """A fixed-size digest of the fields that make two creations the same
    (SPEC §5.1; the event id is not one: a retry may re-generate it).
    Canonical: object keys sorted at every level, so key order does not
    matter, but 1 and 1.0 differ, as they do on the wire."""
    canonical = orjson.dumps([tenant_id, provider_id, model, ttl_secs, occurred_at, metadata],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()
