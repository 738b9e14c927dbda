"""Exactly-once: one Kafka transaction per input partition and commit interval.

With `ACCOUNTANT_PROCESSING_GUARANTEE=exactly_once` everything an input
partition causes -- its closures and rejections, its sessions' changelog
records, and its next input offset -- is written through one transactional
producer of that partition, and becomes visible to read_committed readers
(the ledger, recovery, billing) all at once, or never.

Fencing comes from the transactional id alone: `<app id>-<input topic>-<p>`,
the same on every worker. A worker that is assigned partition p starts that
producer and waits for its producer id before it reads p's changelog or
committed offset (`fence`): the broker then bumps the epoch, so a worker
that lost p (a zombie, a worker that has not noticed it was evicted) gets
`ProducerFenced` on its next write, and any transaction it left open is
aborted first. aiokafka 0.14 sends TxnOffsetCommit at v0, without group
metadata (KIP-447), so nothing else could fence it
(../shared/research/exactly-once-notes.md, verified in docs/design.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from agents.sender import AcknowledgedSender, Record
from app.kafka_config import client_options
from app.settings import Settings

log = logging.getLogger(__name__)

#: How long the broker has to answer a produce request (Faust's default is
#: 20 minutes): a worker cut off longer than a rebalance allows stops
#: (agents/sender.py RETRY_FOR_SECS) rather than write late.
PRODUCER_REQUEST_TIMEOUT_SECS = 30.0


def transactional_id(app_id: str, topic: str, partition: int) -> str:
    return f"{app_id}-{topic}-{partition}"


class _FaustOrderSend:
    """aiokafka's producer behind the argument order of Faust's `send`,
    which `AcknowledgedSender` calls."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: None, headers: None) -> Any:
        return await self._producer.send(topic, value=value, key=key, partition=partition)


class PartitionTransaction:
    """The open transaction of one input partition."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        # aiokafka retries retriable errors itself within its delivery
        # timeout; a send that still fails leaves the transaction unusable,
        # so the worker stops at once and the next owner aborts it.
        self.sender = AcknowledgedSender(_FaustOrderSend(producer), retry_for_secs=0.0)
        #: Monotonic time of the transaction's first write; None: nothing to commit.
        self.began_at: float | None = None
        #: The next input offset, committed with the transaction.
        self.next_offset: int | None = None

    def touch(self) -> None:
        if self.began_at is None:
            self.began_at = time.monotonic()


class PartitionTransactions:
    """A transactional producer per owned input partition."""

    def __init__(self, *, app_id: str, input_topic: str, group_id: str, client_options: Mapping[str, Any],
                 transaction_timeout_ms: int, request_timeout_ms: int) -> None:
        self._app_id = app_id
        self._input_topic = input_topic
        self._group_id = group_id
        self._client_options = dict(client_options)
        self._transaction_timeout_ms = transaction_timeout_ms
        self._request_timeout_ms = request_timeout_ms
        self._open: dict[int, PartitionTransaction] = {}

    @classmethod
    def of_topic(cls, settings: Settings, topic: str) -> PartitionTransactions:
        """The transactions of the partitions of `topic`, one of the app's inputs."""
        return cls(app_id=settings.app_id, input_topic=topic, group_id=settings.app_id,
                   client_options=client_options(settings),
                   transaction_timeout_ms=int(settings.transaction_timeout_secs * 1000),
                   request_timeout_ms=int(PRODUCER_REQUEST_TIMEOUT_SECS * 1000))

    def __contains__(self, partition: int) -> bool:
        return partition in self._open

    def of(self, partition: int) -> PartitionTransaction:
        return self._open[partition]

    def partitions(self) -> set[int]:
        return set(self._open)

    async def fence(self, partitions: Iterable[int]) -> None:
        """Own these partitions' transactional ids: start each producer and
        wait until the broker gave it an epoch, which aborts what a previous
        owner left open and fences that owner. Only then may the partition's
        changelog and committed offset be trusted."""
        new = sorted(set(partitions) - set(self._open))
        if new:
            started = time.monotonic()
            transactions = await asyncio.gather(*(self._start(partition) for partition in new))
            self._open.update(zip(new, transactions, strict=True))
            log.info("fenced input partitions %s in %.2f s", new, time.monotonic() - started)

    async def _start(self, partition: int) -> PartitionTransaction:
        producer = AIOKafkaProducer(
            **self._client_options,
            transactional_id=transactional_id(self._app_id, self._input_topic, partition),
            transaction_timeout_ms=self._transaction_timeout_ms,
            request_timeout_ms=self._request_timeout_ms,
            enable_idempotence=True, acks="all", linger_ms=1, max_batch_size=256 * 1024)
        await producer.start()
        try:
            # Waits for the producer id: the fence. The transaction it opens
            # is client-side only until the first write.
            await producer.begin_transaction()
        except BaseException:
            await producer.stop()
            raise
        return PartitionTransaction(producer)

    async def send(self, records_by_partition: Mapping[int, Sequence[Record]]) -> dict[int, list[Any]]:
        """Send each partition's records in its transaction; the broker's
        acknowledgement of each, once all are acknowledged."""
        partitions = list(records_by_partition)
        for partition in partitions:
            self._open[partition].touch()
        acknowledged = await asyncio.gather(
            *(self._open[partition].sender.send_all(records_by_partition[partition]) for partition in partitions))
        return dict(zip(partitions, acknowledged, strict=True))

    def advance(self, partition: int, next_offset: int) -> None:
        """Commit `next_offset` as the partition's input offset with its transaction."""
        transaction = self._open[partition]
        transaction.touch()
        transaction.next_offset = next_offset

    def due(self, interval_secs: float, now: float | None = None) -> list[int]:
        """The partitions whose transaction has been open for `interval_secs`."""
        now = time.monotonic() if now is None else now
        return [partition for partition, transaction in self._open.items()
                if transaction.began_at is not None and now - transaction.began_at >= interval_secs]

    def pending(self) -> list[int]:
        """The partitions whose transaction holds anything."""
        return [partition for partition, transaction in self._open.items() if transaction.began_at is not None]

    async def commit(self, partitions: Iterable[int]) -> None:
        """Commit these partitions' transactions (with their input offsets)
        and open the next ones."""
        await asyncio.gather(*(self._commit(partition) for partition in partitions))

    async def _commit(self, partition: int) -> None:
        transaction = self._open[partition]
        if transaction.began_at is None:
            return
        producer = transaction.producer
        if transaction.next_offset is not None:
            await producer.send_offsets_to_transaction(
                {TopicPartition(self._input_topic, partition): transaction.next_offset}, self._group_id)
        await producer.commit_transaction()
        transaction.began_at = None
        transaction.next_offset = None
        await producer.begin_transaction()

    async def close(self, partitions: Iterable[int]) -> None:
        """Stop these partitions' producers; what they left uncommitted is
        aborted by the next owner's fence (or the transaction timeout)."""
        closing = [self._open.pop(partition) for partition in list(partitions) if partition in self._open]
        await asyncio.gather(*(transaction.producer.stop() for transaction in closing), return_exceptions=True)
