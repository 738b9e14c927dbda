"""Loading changelog partitions in bulk, past Faust's record-by-record replay.

Faust replays a changelog record by record through its consumer path,
about 150 µs a record here: 1,000,000 sessions took 193 s to recover
(docs/benchmarks.md). The stores read a newly assigned active partition
themselves instead, with a plain consumer in large fetches, when the
assignment arrives (`on_rebalance`, before Faust's recovery looks at their
offsets), and then report the offset they hold the partition up to as
persisted, so Faust's recovery reads only what was written since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import TopicPartition
from faust.types import TP, CollectionT

from app.kafka_config import client_options
from app.partition_reader import plain_consumer, read_ranges
from tables.table import table_settings

log = logging.getLogger(__name__)

#: Bytes per fetch when loading a changelog partition in bulk.
FETCH_BYTES = 32 * 1024 * 1024

#: Takes a partition and records of it, in offset order.
ApplyRecords = Callable[[int, list[Any]], None]


async def load_partitions(table: CollectionT, starts: dict[TP, int | None],
                          apply_records: ApplyRecords) -> dict[TP, int]:
    """Read each changelog partition of `table` from its start offset (None:
    the log start) to the end it has now, into `apply_records`; return, per
    partition, the last offset read (-1: none), what Faust calls its offset."""
    started = time.monotonic()
    tps = {TopicPartition(tp.topic, tp.partition): tp for tp in starts}
    # plain_consumer reads read_committed: under exactly_once a worker that
    # died mid-transaction left changelog records that were aborted (its
    # successor fenced it before this runs: agents/transactions.py).
    consumer = plain_consumer(client_options(table_settings(table)), fetch_max_bytes=FETCH_BYTES,
                              max_partition_fetch_bytes=FETCH_BYTES)
    await consumer.start()
    try:
        beginnings = await consumer.beginning_offsets(list(tps))
        ends = await consumer.end_offsets(list(tps))
        ranges = {tp: (max(beginnings[tp], starts[faust_tp] or 0), ends[tp]) for tp, faust_tp in tps.items()}
        records = 0
        async for tp, batch in read_ranges(consumer, ranges):
            apply_records(tp.partition, batch)
            records += len(batch)
    finally:
        await consumer.stop()
    log.info("loaded changelog partitions %s: %d records in %.1f s", _partitions(starts), records,
             time.monotonic() - started)
    return {faust_tp: ends[tp] - 1 for tp, faust_tp in tps.items()}


def _partitions(tps: Iterable[TP]) -> list[int]:
    return sorted(tp.partition for tp in tps)
