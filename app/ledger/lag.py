"""How far the ledger is behind the closures topic: Kafka's end offsets minus
the offsets stored in the ledger's database. For the worker's dashboard
("ledger caught up", app/web/ledger.py), `accountant simulate --verify` and
the tests that wait for the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.ledger.kafka_options import kafka_client_options
from app.settings import Settings

__all__ = ["LedgerLagReader", "lag_per_partition", "read_ledger_lag", "stored_offsets"]

_STORED_OFFSETS = "SELECT partition, next_offset FROM ledger_offsets WHERE consumer_group = %s AND topic = %s"


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


async def stored_offsets(connection: psycopg.AsyncConnection[Any], group: str,
                         topic: str) -> dict[int, int | None]:
    """partition -> next offset the ledger's consumer group resumes from; empty
    before the ledger created its schema (it has stored nothing)."""
    try:
        cursor = await connection.execute(_STORED_OFFSETS, (group, topic))
    except psycopg.errors.UndefinedTable:
        return {}
    return dict(await cursor.fetchall())


class LedgerLagReader:
    """Reads the ledger's lag per partition of ``topic`` on long-lived clients
    (a Kafka consumer outside any group, read_committed as the ledger reads, and
    one database connection), so that a dashboard polling it costs little.

    An answer is reused for ``max_age`` seconds, and callers arriving together
    share one read. A failed read closes the clients (the next read opens them
    again) and raises: LookupError when the topic does not exist, TimeoutError
    when Kafka and the database together took over ``timeout`` seconds (a
    dashboard should not hang on them), else the client's error.
    """

    def __init__(self, dsn: str, group: str, topic: str, client_options: Mapping[str, Any], *,
                 max_age: float = 1.0, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.group = group
        self.topic = topic
        self._client_options = dict(client_options)
        self._max_age = max_age
        self._timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._last: tuple[float, dict[int, int] | BaseException] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LedgerLagReader:
        return cls(settings.ledger_dsn, settings.ledger_group, settings.closures_topic,
                   kafka_client_options(settings), **options)

    async def __aenter__(self) -> LedgerLagReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def lag(self) -> dict[int, int]:
        """partition -> records of the closures topic not yet in the ledger."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._last[0] >= self._max_age:
                try:
                    result: dict[int, int] | BaseException = await asyncio.wait_for(self._read(), self._timeout)
                except TimeoutError:
                    await self.close()
                    result = TimeoutError(f"no answer from Kafka and the ledger's database in {self._timeout:g} s")
                except Exception as error:  # told to the caller; the next read starts afresh
                    await self.close()
                    result = error
                self._last = (time.monotonic(), result)
            result = self._last[1]
        if isinstance(result, BaseException):
            raise result
        return dict(result)

    async def _read(self) -> dict[int, int]:
        consumer, admin = await self._kafka()
        # Fresh metadata, so a topic created since the last read is seen. (Not
        # consumer.topics() + partitions_for_topic(): the first does not update
        # the metadata the second reads, which then knows no partitions.)
        [description] = await admin.describe_topics([self.topic])
        if description.get("error_code") or not description.get("partitions"):
            raise LookupError(f"topic {self.topic!r} does not exist")
        partitions = [TopicPartition(self.topic, meta["partition"])
                      for meta in sorted(description["partitions"], key=lambda meta: meta["partition"])]
        end = await consumer.end_offsets(partitions)
        beginning = await consumer.beginning_offsets(partitions)
        stored = await stored_offsets(await self._database(), self.group, self.topic)
        return lag_per_partition({tp.partition: offset for tp, offset in end.items()}, stored,
                                 {tp.partition: offset for tp, offset in beginning.items()})

    async def _kafka(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, isolation_level="read_committed",
                                        **self._client_options)
            await consumer.start()
            self._consumer = consumer
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._client_options)
            await admin.start()
            self._admin = admin
        return self._consumer, self._admin

    async def _database(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._connection = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
        return self._connection

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        connection, self._connection = self._connection, None
        if consumer is not None:
            with contextlib.suppress(Exception):  # a broken client is dropped all the same
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                await connection.close()


async def read_ledger_lag(dsn: str, group: str, topic: str, **client_options: Any) -> dict[int, int]:
    """The ledger's lag per partition of ``topic``, read once. ``client_options``
    go to the Kafka client (bootstrap_servers, TLS, SASL ...)."""
    async with LedgerLagReader(dsn, group, topic, client_options) as reader:
        return await reader.lag()
