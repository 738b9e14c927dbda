"""The ledger's consume-and-write loop: one database transaction per fetched batch.

Exactly once into the database, across crashes and rebalances:

- Offsets live in the database, written in the same transaction as the
  closures read before them. On assignment the consumer seeks to those, never
  to Kafka's committed offsets (it commits none).
- Each batch carries, per partition, the offset the database held when this
  process started reading it (``expected``). The write locks the partition's
  offset row and leaves out any partition whose stored offset differs: another
  process wrote it since (a rebalance moved it while this batch was in
  flight). Those records are not written twice; this process reads the
  partition again from the stored offset if it still owns it.
- A revocation waits (bounded) for the batch in flight, so fencing is the
  exception rather than the rule.
- Database errors are retried until they pass (app/ledger/retry.py); a batch
  the database refuses for its data is written row by row, the refused rows
  kept as rejects. Nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError

from app.ledger.batch import BatchOutcome, LedgerBatch, OffsetAdvance, Partition
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.metrics import LedgerMetrics
from app.ledger.retry import DatabaseRetry
from app.ledger.store import LedgerStore

log = logging.getLogger(__name__)


class LedgerConsumer:
    """Reads the closures topic with ``consumer`` (subscribed with ``self.listener``)
    and writes it into ``store`` until ``stop`` is set."""

    def __init__(self, consumer: AIOKafkaConsumer, store: LedgerStore, group: str, metrics: LedgerMetrics,
                 retry: DatabaseRetry, stop: asyncio.Event, *, batch_max_records: int,
                 revoke_wait_secs: float) -> None:
        self._consumer = consumer
        self._store = store
        self._group = group
        self._metrics = metrics
        self._retry = retry
        self._stop = stop
        self._batch_max_records = batch_max_records
        self._revoke_wait_secs = revoke_wait_secs
        #: Partitions this process owns and has positioned -> the offset the database holds.
        self._stored: dict[Partition, int | None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._fatal: BaseException | None = None
        self.listener = _DatabaseOffsets(self)
        self.assigned_once = False

    @property
    def stored_offsets(self) -> Mapping[Partition, int | None]:
        return dict(self._stored)

    async def run(self) -> None:
        while not self._stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            fetched = await self._consumer.getmany(timeout_ms=500, max_records=self._batch_max_records)
            self._idle.clear()
            try:
                batch = await self._batch(fetched)
                if batch is not None:
                    await self._write(batch)
                self._update_lag()
            finally:
                self._idle.set()

    # -- rebalances (called by the listener)

    async def _partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self._revoke_wait_secs)
        except TimeoutError:
            log.warning("partitions revoked while a batch is still being written (database slow or down); "
                        "the write is fenced if another process writes them first")
        for tp in revoked:
            self._stored.pop((tp.topic, tp.partition), None)
            try:
                self._metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass

    async def _partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        keys = [(tp.topic, tp.partition) for tp in assigned]
        try:
            stored = await self._retry(lambda: self._store.claim(self._group, keys), "reading the stored offsets")
            beginning = await self._consumer.beginning_offsets([tp for tp, key in zip(assigned, keys)
                                                                 if stored.get(key) is None])
        except BaseException as error:  # aiokafka only logs a listener's errors: make the loop raise it
            self._fatal = error
            raise
        for tp, key in zip(assigned, keys):
            offset = stored.get(key)
            self._consumer.seek(tp, beginning[tp] if offset is None else offset)
            self._stored[key] = offset
        self.assigned_once = True
        log.info("assigned %s; resuming from the database's offsets %s",
                 sorted(keys), {f"{topic}/{number}": stored.get((topic, number)) for topic, number in sorted(keys)})

    # -- one batch

    async def _batch(self, fetched: Mapping[TopicPartition, list]) -> LedgerBatch | None:
        """What to write for the records fetched, and how far each owned partition moved."""
        rows: list[ClosureRow] = []
        rejects: list[LedgerReject] = []
        for tp, records in fetched.items():
            key = (tp.topic, tp.partition)
            if key not in self._stored:
                continue  # not positioned by us yet: the assignment will seek it to the stored offset
            stored = self._stored[key]
            for record in records:
                if stored is not None and record.offset < stored:
                    continue  # already in the database
                decoded = decode_closure(SourceOffset(tp.topic, tp.partition, record.offset), record.key,
                                         record.value)
                (rows if isinstance(decoded, ClosureRow) else rejects).append(decoded)
        advances = []
        for key, stored in list(self._stored.items()):
            try:
                # Past every record handed to us, and past transaction markers too.
                position = await self._consumer.position(TopicPartition(*key))
            except IllegalStateError:
                continue  # revoked meanwhile
            if position > (stored if stored is not None else 0):
                advances.append(OffsetAdvance(key[0], key[1], stored, position))
        if not (rows or rejects or advances):
            return None
        return LedgerBatch(self._group, tuple(rows), tuple(rejects), tuple(advances))

    async def _write(self, batch: LedgerBatch) -> None:
        started = time.monotonic()
        isolate = False
        while True:
            try:
                outcome = await self._retry(lambda: self._store.write(batch, isolate=isolate), "writing a batch")
                break
            except psycopg.Error as error:  # not transient: about the data, or a fault of ours
                if not isolate:
                    log.warning("the database refused a batch of %d records (%s); writing it row by row",
                                len(batch), error)
                    isolate = True
                else:
                    log.error("writing a batch row by row failed: %s; retrying", error, exc_info=True)
                    self._metrics.database_retries.inc()
                    await self._retry.wait(2.0)
        self._metrics.batch_write_seconds.observe(time.monotonic() - started)
        await self._apply(outcome)

    async def _apply(self, outcome: BatchOutcome) -> None:
        self._metrics.count(outcome)
        for key, offset in outcome.committed.items():
            if key in self._stored:
                self._stored[key] = offset
        for key, offset in outcome.fenced.items():
            log.warning("partition %s/%d was written by another ledger process (stored offset %s); "
                        "reading it again from there", key[0], key[1], offset)
            if key in self._stored:
                self._stored[key] = offset
                if offset is not None:
                    self._consumer.seek(TopicPartition(*key), offset)
                else:  # someone reset the stored offset by hand: start over, as on a first assignment
                    await self._consumer.seek_to_beginning(TopicPartition(*key))
        for conflict in outcome.conflicts:
            row = conflict.row
            log.warning("CONFLICT: closure %r at %s/%d@%d differs from the stored one (total_token_count %d); "
                        "kept in closure_conflicts, the stored row stands", row.closure_id, row.source.topic,
                        row.source.partition, row.source.offset, row.total_token_count)
        for reject in outcome.rejects:
            log.warning("rejected the record at %s/%d@%d: %s", reject.source.topic, reject.source.partition,
                        reject.source.offset, reject.error)

    def _update_lag(self) -> None:
        for (topic, number), stored in list(self._stored.items()):
            tp = TopicPartition(topic, number)
            end = self._consumer.last_stable_offset(tp)
            if end is None:
                end = self._consumer.highwater(tp)
            if end is not None:
                self._metrics.lag.labels(topic, str(number)).set(max(0, end - (stored or 0)))


class _DatabaseOffsets(ConsumerRebalanceListener):
    def __init__(self, ledger: LedgerConsumer) -> None:
        self._ledger = ledger

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._ledger._partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._ledger._partitions_assigned(assigned)
