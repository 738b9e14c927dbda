"""What the rules keep per session: the §4 record and its bookkeeping, or a tombstone."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from app.rules.limits import Policy
from app.rules.outputs import Closure, Output
from app.rules.record import CloseReason, SessionRecord, State
from app.rules.rounds import NO_MISSING_ROUNDS, MissingRounds
from app.rules.timestamps import (
    SECOND,
    Micros,
)
from app.rules.values import value


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
