"""Gateway load: pre-encoded events and a bulk producer.

Bulk loading builds aiokafka record batches per partition by hand
(`create_batch` / `send_batch`): no per-record future, so one Python process
loads about 200,000 events/s into the local broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator

import orjson
from aiokafka import AIOKafkaProducer

from app.dev.partitioners import partition_for
from bench.common import PARTITIONS
from tests.support.clock import now_rfc3339

TENANTS = [f"tenant-{n}" for n in range(20)]


def lifecycle(session_id: str, step: int, steps: int, occurred_at: str, *, ttl_secs: int = 3600,
              tenant_id: str = "tenant-0") -> dict:
    """Event number `step` of a session of `steps` events: created, activated,
    rounds 1..steps-3, closed."""
    base = {"event_id": f"{session_id}-{step}", "session_id": session_id, "tenant_id": tenant_id,
            "occurred_at": occurred_at}
    if step == 0:
        return {**base, "type": "session.created", "provider_id": "provider-a", "model": "model-x",
                "ttl_secs": ttl_secs, "metadata": {"team": "search", "env": "prod"}}
    if step == 1:
        return {**base, "type": "session.activated", "initial_token_count": 1200}
    if step == steps - 1:
        return {**base, "type": "session.closed", "reason": "done"}
    return {**base, "type": "round.completed", "round": step - 1, "delta_token_count": 300 + step, "model": "model-x"}


def throughput_load(sessions: int, events_per_session: int, *, concurrent: int = 5000,
                    prefix: str = "s") -> Iterator[tuple[bytes, bytes]]:
    """`sessions` full lifecycles, `concurrent` sessions interleaved at a time (as
    many live tool loops would be), per-session order kept."""
    occurred_at = now_rfc3339()
    for first in range(0, sessions, concurrent):
        ids = [f"{prefix}{n:08d}" for n in range(first, min(first + concurrent, sessions))]
        keys = [session_id.encode() for session_id in ids]
        for step in range(events_per_session):
            for index, session_id in enumerate(ids):
                yield keys[index], orjson.dumps(lifecycle(session_id, step, events_per_session, occurred_at,
                                                          tenant_id=TENANTS[index % len(TENANTS)]))


async def bulk_produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], *,
                       partitions: int = PARTITIONS, batch_bytes: int = 512 * 1024) -> tuple[int, float]:
    """Load (key, value) records, partitioned by murmur2 of the key; returns (count, seconds)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=batch_bytes,
                                max_request_size=4 * batch_bytes, compression_type=None)
    await producer.start()
    started = time.monotonic()
    count = 0
    partition_cache: dict[bytes, int] = {}
    batches = [producer.create_batch() for _ in range(partitions)]
    pending: list[asyncio.Future] = []

    async def flush(partition: int) -> None:
        batch = batches[partition]
        batch.close()
        pending.append(await producer.send_batch(batch, topic, partition=partition))
        batches[partition] = producer.create_batch()
        if len(pending) > 64:
            await asyncio.gather(*pending[:32])
            del pending[:32]

    try:
        for key, value in records:
            partition = partition_cache.get(key)
            if partition is None:
                partition = partition_cache[key] = partition_for(key, partitions)
            if batches[partition].append(key=key, value=value, timestamp=None) is None:
                await flush(partition)
                batches[partition].append(key=key, value=value, timestamp=None)
            count += 1
        for partition in range(partitions):
            if batches[partition].record_count():
                await flush(partition)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count, time.monotonic() - started
