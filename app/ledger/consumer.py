"""The ledger's consume-and-write loop: one database transaction per fetched batch.

Exactly once into the database, across crashes and rebalances:

- Offsets live in the database, written in the same transaction as the
  closures read before them. On assignment the consumer seeks to those, never
  to Kafka's committed offsets (it commits none).
- Each batch carries, per partition, the offset the database must hold for
  the batch to follow on from it (``expected``). The write locks the
  partition's offset row and leaves out any partition whose stored offset
  differs: another process wrote it since (a rebalance moved it while this
  batch was in flight). Those records are not written twice; this process
  reads the partition again from the stored offset if it still owns it.
- A revocation waits (bounded) for the write in flight, so fencing is the
  exception rather than the rule.
- Writes are retried until they commit (app/ledger/writer.py). Nothing is skipped.
- Nor is anything skipped silently: at every assignment, and whenever Kafka
  says an offset is out of range, the stored offset is compared with the
  partition's start and end offsets (app/ledger/gaps.py). A partition at a
  gap nobody accepted is paused, told of in the log, /healthz and a metric.

Batches are written one at a time and in order; while one is written the next
is read and decoded, so ``expected`` is what the previous batch will have
stored (``_planned``), and ``_stored`` is what the database is known to hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, NoOffsetForPartitionError, OffsetOutOfRangeError

from app.ledger.batch import BatchOutcome, LedgerBatch, OffsetAdvance, Partition
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.gaps import Gap, find_gap
from app.ledger.metrics import LedgerMetrics
from app.ledger.retry import DatabaseRetry
from app.ledger.store import LedgerStore
from app.ledger.writer import BatchWriter

log = logging.getLogger(__name__)


class LedgerConsumer:
    """Reads the closures topic with ``consumer`` (subscribed with ``self.listener``)
    and writes it into ``store`` until ``stop`` is set."""

    def __init__(self, consumer: AIOKafkaConsumer, store: LedgerStore, group: str, metrics: LedgerMetrics,
                 retry: DatabaseRetry, stop: asyncio.Event, *, batch_max_records: int,
                 revoke_wait_secs: float, accepted_gaps: Collection[str] = (), accepted_by: str = "") -> None:
        self._consumer = consumer
        self._store = store
        self._group = group
        self._metrics = metrics
        self._retry = retry
        self._stop = stop
        self._batch_max_records = batch_max_records
        self._revoke_wait_secs = revoke_wait_secs
        self._writer = BatchWriter(store, metrics, retry, self._written)
        #: Partitions this process owns and has positioned -> the offset the database holds.
        self._stored: dict[Partition, int | None] = {}
        #: ... -> the offset it will hold once the batches read so far are written.
        self._planned: dict[Partition, int | None] = {}
        self._fatal: BaseException | None = None
        #: `--accept-gap` flags (Gap.flag) and who gave them.
        self._accepted_gaps = frozenset(accepted_gaps)
        self._accepted_by = accepted_by
        #: Owned partitions stopped at a gap nobody accepted.
        self._gaps: dict[Partition, Gap] = {}
        #: Since when closures have waited with no batch committed (monotonic); None: caught up.
        self._waiting_since: float | None = None
        self.listener = _DatabaseOffsets(self)
        self.assigned_once = False

    @property
    def stored_offsets(self) -> Mapping[Partition, int | None]:
        return dict(self._stored)

    @property
    def gaps(self) -> list[Gap]:
        """The owned partitions stopped at a gap nobody accepted."""
        return list(self._gaps.values())

    def stalled_secs(self) -> float:
        """Seconds since the last committed batch while closures wait to be written; 0 when caught up."""
        waiting_since = self._waiting_since
        return 0.0 if waiting_since is None else time.monotonic() - waiting_since

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._fatal is not None:
                    raise self._fatal
                try:
                    fetched = await self._consumer.getmany(timeout_ms=500, max_records=self._batch_max_records)
                except OffsetOutOfRangeError as error:  # retention deleted what we were about to read
                    await self._writer.drain()
                    await self._check_gaps([tp for tp in error.args[0] if (tp.topic, tp.partition) in self._stored])
                    continue
                except NoOffsetForPartitionError:  # a new partition, not positioned yet: the listener is at it
                    await asyncio.sleep(0.05)
                    continue
                batch = await self._batch(fetched)
                # The previous write must commit first: it may fence partitions of this batch.
                await self._writer.drain()
                if batch is not None:
                    batch = batch.without({partition for partition in batch.partitions if not self._still_planned(
                        partition, batch)})
                    if batch.advances:
                        await self._writer.submit(batch)
                self._update_lag()
            await self._writer.drain()
        finally:
            await self._writer.close()

    def _still_planned(self, partition: Partition, batch: LedgerBatch) -> bool:
        """Whether this process still owns ``partition`` and the batch still
        follows on from the plan (a fence or a new assignment resets it)."""
        advance = next(advance for advance in batch.advances if advance.key == partition)
        return partition in self._planned and self._planned[partition] == advance.next_offset

    # -- rebalances (called by the listener)

    async def partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if not await self._writer.wait_idle(self._revoke_wait_secs):
            log.warning("partitions revoked while a batch is still being written (database slow or down); "
                        "the write is fenced if another process writes them first")
        for tp in revoked:
            key = (tp.topic, tp.partition)
            self._stored.pop(key, None)
            self._planned.pop(key, None)
            if self._gaps.pop(key, None) is not None:
                self._consumer.resume(tp)
            with contextlib.suppress(KeyError):  # no lag was recorded for it yet
                self._metrics.lag.remove(tp.topic, str(tp.partition))
            with contextlib.suppress(KeyError):
                self._metrics.gap_refused.remove(tp.topic, str(tp.partition))

    async def partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._check_gaps(list(assigned))
        except BaseException as error:  # aiokafka only logs a listener's errors: make the loop raise it
            self._fatal = error
            raise
        self.assigned_once = True

    async def _check_gaps(self, partitions: list[TopicPartition]) -> None:
        """Position ``partitions`` at the offsets the database holds, unless
        those lie outside what Kafka still holds: then pause them at the gap,
        or cross it if it was accepted (--accept-gap)."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        stored = await self._retry(lambda: self._store.claim(self._group, keys), "reading the stored offsets")
        beginning = await self._consumer.beginning_offsets(partitions)
        end = await self._consumer.end_offsets(partitions)
        for tp, key in zip(partitions, keys, strict=True):
            offset = stored.get(key)
            gap = find_gap(tp.topic, tp.partition, offset, beginning[tp], end[tp])
            if gap is not None:
                if not await self._cross(gap, tp):
                    continue
                offset = gap.to_offset
            self._consumer.seek(tp, beginning[tp] if offset is None else offset)
            self._stored[key] = self._planned[key] = offset
            # 0, not absent, for every partition owned without a gap: the alert's series exists.
            self._metrics.gap_refused.labels(tp.topic, str(tp.partition)).set(0)
        log.info("positioned %s at the database's offsets %s", sorted(keys),
                 {f"{topic}/{number}": self._stored.get((topic, number)) for topic, number in sorted(keys)})

    async def _cross(self, gap: Gap, tp: TopicPartition) -> bool:
        """Whether the ledger may resume after ``gap``: it was accepted and is now recorded."""
        key = (tp.topic, tp.partition)
        if gap.flag in self._accepted_gaps and await self._retry(
                lambda: self._store.accept_gap(self._group, gap, self._accepted_by), "recording an accepted gap"):
            log.warning("GAP accepted by %s and recorded in ledger_gaps: %s; resuming at offset %d",
                        self._accepted_by, gap.describe(), gap.to_offset)
            self._metrics.gaps_accepted.inc()
            return True
        log.error("GAP: %s. The partition is stopped. To skip those closures for good, run the ledger with "
                  "--accept-gap %s (recorded in ledger_gaps).", gap.describe(), gap.flag)
        self._stored.pop(key, None)
        self._planned.pop(key, None)
        self._gaps[key] = gap
        self._consumer.pause(tp)
        # Any position will do, paused: one is needed, or each fetch raises NoOffsetForPartitionError.
        self._consumer.seek(tp, gap.to_offset)
        self._metrics.gap_refused.labels(tp.topic, str(tp.partition)).set(1)
        return False

    # -- one batch

    async def _batch(self, fetched: Mapping[TopicPartition, list]) -> LedgerBatch | None:
        """What to write for the records fetched, and how far each owned partition moved."""
        planned = dict(self._planned)
        owned = [(tp, records) for tp, records in fetched.items() if (tp.topic, tp.partition) in planned]
        rows, rejects = await asyncio.to_thread(_decode, owned, planned) if owned else ([], [])
        advances = []
        for key, expected in list(planned.items()):
            if self._planned.get(key, -1) != expected:
                continue  # revoked or fenced meanwhile
            try:
                # Past every record handed to us, and past transaction markers too.
                position = await self._consumer.position(TopicPartition(*key))
            except IllegalStateError:
                continue  # revoked meanwhile
            if position > (expected if expected is not None else 0):
                advances.append(OffsetAdvance(key[0], key[1], expected, position))
                self._planned[key] = position
        if not advances:
            return None
        moved = {advance.key for advance in advances}
        return LedgerBatch(self._group,
                           tuple(row for row in rows if (row.source.topic, row.source.partition) in moved),
                           tuple(item for item in rejects if (item.source.topic, item.source.partition) in moved),
                           tuple(advances))

    async def _written(self, outcome: BatchOutcome) -> None:
        if outcome.committed and self._waiting_since is not None:
            self._waiting_since = time.monotonic()  # progress: the stall clock starts again
        for key, offset in outcome.committed.items():
            if key in self._stored:
                self._stored[key] = offset
                planned = self._planned[key]
                if planned is None or planned < offset:
                    # Re-assigned while this write was in flight, the partition was
                    # positioned at what the database held before it: move on past it.
                    self._planned[key] = offset
                    self._consumer.seek(TopicPartition(*key), offset)
        for key, stored in outcome.fenced.items():
            log.warning("partition %s/%d was written by another ledger process (stored offset %s); "
                        "reading it again from there", key[0], key[1], stored)
            if key in self._stored:
                self._stored[key] = self._planned[key] = stored
                if stored is not None:
                    self._consumer.seek(TopicPartition(*key), stored)
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
        self._update_lag()

    def _update_lag(self) -> None:
        behind = self._writer.busy
        for (topic, number), stored in list(self._stored.items()):
            tp = TopicPartition(topic, number)
            end = self._consumer.last_stable_offset(tp)
            if end is None:
                end = self._consumer.highwater(tp)
            if end is not None:
                lag = max(0, end - (stored or 0))
                self._metrics.lag.labels(topic, str(number)).set(lag)
                behind = behind or lag > 0
        if not behind:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = time.monotonic()


def _decode(fetched: list[tuple[TopicPartition, list]],
            planned: Mapping[Partition, int | None]) -> tuple[list[ClosureRow], list[LedgerReject]]:
    """Rows and rejects of the records past the planned offsets (run in a thread)."""
    rows: list[ClosureRow] = []
    rejects: list[LedgerReject] = []
    for tp, records in fetched:
        expected = planned[(tp.topic, tp.partition)]
        for record in records:
            if expected is not None and record.offset < expected:
                continue  # already in the database, or about to be
            decoded = decode_closure(SourceOffset(tp.topic, tp.partition, record.offset), record.key, record.value)
            if isinstance(decoded, ClosureRow):
                rows.append(decoded)
            else:
                rejects.append(decoded)
    return rows, rejects


class _DatabaseOffsets(ConsumerRebalanceListener):
    def __init__(self, ledger: LedgerConsumer) -> None:
        self._ledger = ledger

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._ledger.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._ledger.partitions_assigned(assigned)
