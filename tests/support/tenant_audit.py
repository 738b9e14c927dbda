"""Where tenant usage went: replays the committed usage deltas of the
repartition topic with the pure rules, independently of any worker, and
compares with what the tenant changelog holds. A tenant short in the replay
lost its usage before the owner (a delta never written, or skipped as already
applied); a tenant right in the replay but short in the changelog lost it in
the owner (a state handed over without some deltas)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from app.partition_reader import plain_consumer, read_ranges
from app.rules.usage import TenantUsage, UsageDelta, apply_delta, period_of
from app.settings import Settings
from tests.support.clock import now_micros
from tests.support.kafka import end_offsets


@dataclass
class TenantAudit:
    replayed: TenantUsage
    stored: TenantUsage | None
    #: Entries skipped as applied before: (source partition, input offset) -> whether an entry of that
    #: offset had been applied (a true repeat) or not (usage lost).
    skipped_repeats: int = 0
    skipped_unseen: list[tuple[int, int, int]] = field(default_factory=list)
    #: Deltas skipped whole: (position, source partition, delta_id, reason).
    skipped_deltas: list[tuple[int, int, str, str]] = field(default_factory=list)
    #: The replay's total tokens (closed in any month, and open) after the delta at each position.
    replayed_at: dict[int, int] = field(default_factory=dict)
    #: The first changelog record whose total differs from the replay's at its read_through, and
    #: the records before it: (offset, timestamp ms, read_through, its total, the replay's total).
    diverged: list[tuple[int, int, int, int, int | None]] = field(default_factory=list)


def total_tokens(state: TenantUsage) -> int:
    return state.open_tokens + sum(totals.tokens for totals in state.closed.values())


def _read(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Any]]:
    ends = end_offsets(bootstrap, topic, partitions)

    async def read() -> dict[int, list[Any]]:
        consumer = plain_consumer({"bootstrap_servers": bootstrap})
        await consumer.start()
        try:
            found: dict[int, list[Any]] = {}
            ranges = {TopicPartition(topic, p): (0, end) for p, end in ends.items() if end}
            async for tp, records in read_ranges(consumer, ranges):
                found.setdefault(tp.partition, []).extend(records)
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def audit_tenants(settings: Settings) -> dict[str, TenantAudit]:
    """Each tenant's usage replayed from the committed deltas, beside its last changelog state."""
    now = now_micros()
    deltas = _read(settings.broker, settings.usage_topic, settings.partitions)
    states = _read(settings.broker, settings.tenant_changelog_topic, settings.partitions)
    audits: dict[str, TenantAudit] = {}
    applied: dict[str, set[tuple[int, int]]] = {}
    for records in deltas.values():
        for record in sorted(records, key=lambda r: r.offset):
            delta = UsageDelta.from_json(orjson.loads(record.value))
            audit = audits.setdefault(delta.tenant_id, TenantAudit(TenantUsage(delta.tenant_id), None))
            seen = applied.setdefault(delta.tenant_id, set())
            state = audit.replayed
            source = delta.source_partition
            if record.offset <= state.read_through:
                audit.skipped_deltas.append((record.offset, source, delta.delta_id, "position"))
                continue
            if delta.delta_id and state.last_delta.get(source) == delta.delta_id:
                audit.skipped_deltas.append((record.offset, source, delta.delta_id, "repeated id"))
                continue
            through = state.applied_through.get(source, 0)
            for entry in delta.entries:
                if entry.offset is None:
                    continue
                if entry.offset < through:
                    if (source, entry.offset) in seen:
                        audit.skipped_repeats += 1
                    else:
                        audit.skipped_unseen.append((source, entry.offset, entry.step.open_tokens))
                else:
                    seen.add((source, entry.offset))
            audit.replayed, _ = apply_delta(state, delta, None, now, record.offset)
            audit.replayed_at[record.offset] = total_tokens(audit.replayed)
    for records in states.values():
        history: dict[str, list[tuple[int, int, int, int, int | None]]] = {}
        for record in sorted(records, key=lambda r: r.offset):
            tenant_id = record.key.decode()
            audit = audits.setdefault(tenant_id, TenantAudit(TenantUsage(tenant_id), None))
            audit.stored = None if record.value is None else TenantUsage.from_json(orjson.loads(record.value))
            if audit.stored is None:
                continue
            read_through = audit.stored.read_through
            seen = (record.offset, record.timestamp, read_through, total_tokens(audit.stored),
                    audit.replayed_at.get(read_through, 0 if read_through < 0 else None))
            past = history.setdefault(tenant_id, [])
            past.append(seen)
            if not audit.diverged and seen[3] != seen[4]:
                audit.diverged = past[-4:]
    return audits


def audit_report(settings: Settings, expected: Counter[str]) -> dict[str, Any]:
    """Per tenant: the oracle's month, the replay's, the changelog's, and what the replay skipped."""
    now = now_micros()
    period = period_of(now)
    report: dict[str, Any] = {}
    for tenant_id, audit in sorted(audit_tenants(settings).items()):
        report[tenant_id] = {
            "expected": expected.get(tenant_id),
            "replayed": audit.replayed.usage(period, now),
            "replayed_open_sessions": audit.replayed.open_sessions,
            "stored": None if audit.stored is None else audit.stored.usage(period, now),
            "stored_read_through": None if audit.stored is None else audit.stored.read_through,
            "replayed_read_through": audit.replayed.read_through,
            "skipped_repeats": audit.skipped_repeats,
            "skipped_unseen": audit.skipped_unseen[:20],
            "skipped_deltas": audit.skipped_deltas[:20],
            "first_divergence": audit.diverged,
        }
    return report
