"""How far the ledger is behind the closures topic: Kafka's end offsets minus
the offsets stored in the ledger's database. For the worker's dashboard
("ledger caught up") and for tests that wait for the ledger."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


def lag_per_partition(end_offsets: Mapping[int, int], stored: Mapping[int, int | None],
                      beginning_offsets: Mapping[int, int]) -> dict[int, int]:
    """Records per partition not yet in the ledger. A partition the ledger has
    not stored anything for lags by everything Kafka still holds of it."""
    lag = {}
    for partition, end in end_offsets.items():
        next_offset = stored.get(partition)
        start = next_offset if next_offset is not None else beginning_offsets.get(partition, 0)
        lag[partition] = max(0, end - start)
    return lag


async def stored_offsets(dsn: str, group: str, topic: str) -> dict[int, int | None]:
    """partition -> next offset the ledger's consumer group resumes from."""
    async with await psycopg.AsyncConnection.connect(dsn) as connection:
        cursor = await connection.execute(
            "SELECT partition, next_offset FROM ledger_offsets WHERE consumer_group = %s AND topic = %s",
            (group, topic))
        return dict(await cursor.fetchall())


async def read_ledger_lag(dsn: str, group: str, topic: str, **client_options: Any) -> dict[int, int]:
    """The ledger's lag per partition of ``topic``. ``client_options`` go to
    short-lived Kafka clients (bootstrap_servers, TLS, SASL ...); end offsets
    are read_committed, as the ledger reads. LookupError if the topic does not exist."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description.get("error_code") or not description.get("partitions"):
        raise LookupError(f"topic {topic!r} not found (error code {description.get('error_code')})")
    tps = [TopicPartition(topic, meta["partition"]) for meta in description["partitions"]]
    consumer = AIOKafkaConsumer(isolation_level="read_committed", enable_auto_commit=False, **client_options)
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
        beginning = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    return lag_per_partition({tp.partition: offset for tp, offset in end.items()},
                             await stored_offsets(dsn, group, topic),
                             {tp.partition: offset for tp, offset in beginning.items()})
