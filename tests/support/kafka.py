"""Producing, consuming, offsets and lag on the real broker, for tests and benchmarks.

Each helper comes as a coroutine and, where synchronous tests use it, as a
plain function that runs it to completion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from app.partition_reader import plain_consumer, read_ranges
from app.rules import decode_state

__all__ = [
    "committed_offsets", "consume", "consume_json", "end_offsets", "fetch_committed_offsets", "fetch_end_offsets",
    "group_lag", "latest_sessions", "partition_count", "produce", "produce_events",
]


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                  partition_of: Callable[[bytes], int] | None = None, *, transactional_id: str | None = None) -> None:
    """Publish `records`; with `transactional_id`, each in a transaction of its own (a
    commit marker then follows every record, taking an offset of its own)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                transactional_id=transactional_id)
    await producer.start()
    try:
        futures = []
        for key, value in records:
            partition = None if partition_of is None or key is None else partition_of(key)
            if transactional_id is None:
                futures.append(await producer.send(topic, value, key=key, partition=partition))
            else:
                async with producer.transaction():
                    await producer.send_and_wait(topic, value, key=key, partition=partition)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]], *,
                   transactional_id: str | None = None) -> None:
    """Publish gateway events as JSON, keyed by session id."""
    asyncio.run(produce(bootstrap, topic, ((e["session_id"].encode(), orjson.dumps(e)) for e in events),
                        transactional_id=transactional_id))


async def _consume(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


def consume(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 60) -> list[Any]:
    """Read `topic` from the start until `done(records)` or the timeout."""
    return asyncio.run(_consume(bootstrap, topic, done, timeout))


def consume_json(bootstrap: str, topic: str, done: Callable[[list[dict]], bool], timeout: float = 60) -> list[dict]:
    values: list[dict] = []

    def parsed_done(records: list[Any]) -> bool:
        values[:] = [orjson.loads(record.value) for record in records]
        return done(values)

    consume(bootstrap, topic, parsed_done, timeout)
    return values


def latest_sessions(bootstrap: str, changelog_topic: str, done: Callable[[dict], bool],
                    timeout: float = 60) -> dict[str, Any]:
    """The table as its changelog tells it: session_id -> stored state (None once deleted)."""
    table: dict[str, Any] = {}

    def fold(records: list[Any]) -> bool:
        table.clear()
        for record in records:
            table[record.key.decode()] = None if record.value is None else decode_state(record.value)
        return done(table)

    consume(bootstrap, changelog_topic, fold, timeout)
    return table


async def fetch_committed_offsets(bootstrap: str, group: str, topic: str,
                                  retry_secs: float = 30) -> dict[int, int]:
    """`group`'s committed offsets in `topic`, by partition (partitions never committed left out).

    Retriable errors are retried for `retry_secs`: a broker just resumed from
    SIGSTOP fences itself for a moment, and its group coordinator answers
    "not available" meanwhile.
    """
    deadline = time.monotonic() + retry_secs
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except KafkaError as error:
                if not error.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    return asyncio.run(fetch_committed_offsets(bootstrap, group, topic))


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has (0 when it does not exist).

    Asks for all topics' metadata: asking for one by name would let the
    broker auto-create it.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        return len((await client.fetch_all_metadata()).partitions_for_topic(topic) or ())
    finally:
        await client.close()


async def fetch_end_offsets(bootstrap: str, topic: str, partitions: int | None = None) -> dict[int, int]:
    """The end offset of every partition of `topic` (`partitions` of them, when known)."""
    if partitions is None:
        partitions = await partition_count(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, number) for number in range(partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, topic: str, partitions: int | None = None) -> dict[int, int]:
    return asyncio.run(fetch_end_offsets(bootstrap, topic, partitions))


async def fetch_record_count(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records `topic` holds for a read_committed reader: its offsets
    less transaction markers and aborted records."""
    consumer = plain_consumer({"bootstrap_servers": bootstrap})
    await consumer.start()
    try:
        tps = [TopicPartition(topic, number) for number in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return sum([len(batch) async for _, batch in read_ranges(consumer, {tp: (0, ends[tp]) for tp in tps})])
    finally:
        await consumer.stop()


def record_count(bootstrap: str, topic: str, partitions: int) -> int:
    return asyncio.run(fetch_record_count(bootstrap, topic, partitions))


async def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Sum over partitions of end offset minus the group's committed offset."""
    done = await fetch_committed_offsets(bootstrap, group, topic)
    ends = await fetch_end_offsets(bootstrap, topic)
    return sum(end - done.get(partition, 0) for partition, end in ends.items())
