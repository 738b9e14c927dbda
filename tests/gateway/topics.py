"""Reading back what was produced, and accounting it with the pure rules,
for the publisher and ingest tests."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app import rules
from app.rules import Delivery, Source, decode_event

#: Partitions of the topics the gateway tests create.
PARTITIONS = 3


async def read_topic(bootstrap: str, topic: str, partition_count: int, timeout: float = 30) -> list[ConsumerRecord]:
    """Every record of `topic` up to its end offsets as of the call, in
    (partition, offset) order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partition_count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic}: did not read up to {ends} in {timeout} s"
            batches = await consumer.getmany(timeout_ms=500)
            records.extend(record for batch in batches.values() for record in batch)
        return sorted(records, key=lambda record: (record.partition, record.offset))
    finally:
        await consumer.stop()


def account(records: Iterable[ConsumerRecord], now: int) -> tuple[dict[str, Any], list[Any]]:
    """Fold the records through `rules.apply` as the worker would (per
    partition, in offset order): the final sessions and every output."""
    sessions: dict[str, Any] = {}
    outputs: list[Any] = []
    for record in records:
        decoded = decode_event(record.key, record.value)
        key = record.key.decode("utf-8") if record.key is not None else None
        state, produced = rules.apply(sessions.get(key), Delivery(Source(record.topic, record.partition,
                                                                           record.offset), decoded), now)
        sessions[key] = state
        outputs.extend(produced)
    return sessions, outputs
