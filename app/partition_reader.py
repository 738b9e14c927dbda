"""Reading a partition directly, with an aiokafka consumer outside Faust's.

Faust's consumer belongs to the group and replays a changelog record by
record; loading a changelog partition in bulk (tables/changelog.py) reads a
range of it exactly, in large fetches, with a consumer of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


def plain_consumer(kafka: Mapping[str, Any], **options: Any) -> AIOKafkaConsumer:
    """A consumer that belongs to no group, commits nothing and reads
    `read_committed` (under exactly_once, what an aborted transaction wrote
    is no data). `kafka` is `app.kafka_config.client_options(settings)`: the
    servers and the login the worker's own clients use."""
    return AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                            isolation_level="read_committed", **options)


async def read_ranges(consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, tuple[int, int]],
                      keep_going: Callable[[], bool] = lambda: True,
                      poll_ms: int = 50) -> AsyncIterator[tuple[TopicPartition, list[Any]]]:
    """Yield, in offset order per partition and in batches, the records of
    each partition from its start offset up to its end offset (excluded).

    Goes by the consumer's position, not by the records seen: transaction
    markers and compaction take offsets that no record comes back for. A
    start below the log's start (deleted by retention) reads from the
    earliest offset. Stops early when `keep_going()` turns false, checked
    between polls (a broker that does not answer makes polls return empty).

    Polls are short because a fetch that brings only a commit marker moves
    the position but returns no record, so the poll waits out its timeout:
    at 500 ms a transactional gateway's every marker cost the agent up to
    half a second.
    """
    consumer.assign(list(ranges))
    # Explicit seeks: with `seek_to_beginning` the reset of the assignment
    # could still land after it, and the position then sat at the end with
    # nothing read (caught by test_recovery).
    for tp, (start, _) in ranges.items():
        consumer.seek(tp, start)
    remaining = {tp for tp, (start, end) in ranges.items() if start < end}
    while remaining and keep_going():
        fetched = await consumer.getmany(*remaining, timeout_ms=poll_ms)
        for tp, batch in fetched.items():
            end = ranges[tp][1]
            records = [record for record in batch if record.offset < end]
            if records:
                yield tp, records
        for tp in list(remaining):
            if await consumer.position(tp) >= ranges[tp][1]:
                remaining.discard(tp)
