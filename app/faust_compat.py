"""Every use of a private part of Faust, mode or aiokafka, in one place.

The service runs on faust-streaming, mode-streaming and aiokafka at the exact
versions in `PINNED`; `check_pinned_versions` refuses any other at start-up,
because each piece below relies on how those versions work inside. Each one
says why it exists, and tests/compat/ has a canary per reason: a test that
shows, on the installed version, the behaviour that makes the piece
necessary. When a canary fails after an upgrade, the piece may be obsolete.

What is here:
- `BatchTransport` (registered as the broker URL scheme `accountant://`), whose
  consumer hands the agent every record of one fetch of the input topic as one
  `InputBatch`, reads `read_committed`, and commits the offsets the agent
  reports as accounted instead of Faust's per-message acks;
- access to the stores' partition maps, for the stores in tables/.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT
from faust.types.tuples import ConsumerMessage

#: The versions this module was written against; others are refused.
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
#: The broker URL scheme of `BatchTransport`.
TRANSPORT_SCHEME = "accountant"
#: How long the broker may hold a fetch for data to come (see
#: `BatchConsumerThread._create_worker_consumer`).
READ_COMMITTED_FETCH_WAIT_MS = 20
#: Appended to the input topic's name in an `InputBatchMessage`.
BATCH_TOPIC_SUFFIX = ".batch"
#: Input batches handed over and not yet finished by the agent, at most.
#: Two keep the agent busy while the next fetch is decoded, and bound memory.
BATCHES_IN_FLIGHT = 2


class IncompatibleVersions(SystemExit):
    """Start-up refused: an installed library is not the pinned version."""


def check_pinned_versions() -> None:
    wrong = []
    for package, pinned in PINNED.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            wrong.append(f"{package} {installed} (needs {pinned})")
    if wrong:
        raise IncompatibleVersions(
            "usage-accountant runs only on the library versions app/faust_compat.py was checked against: "
            + "; ".join(wrong) + ". Install them with scripts/setup (requirements.lock).")


# --------------------------------------------------------------------------
# Input batches


@dataclass(slots=True)
class PartitionFetch:
    """What one fetch brought of one input partition.

    `position` is the consumer's position after the fetch: the next offset to
    read. It passes transaction markers and aborted records, which take
    offsets but are never delivered, so it can be past the last record.
    `seek_epoch` counts the seeks of this partition when the fetch was
    drained: records drained before a seek are stale once it happened.
    """

    partition: int
    records: list[ConsumerRecord]
    position: int
    seek_epoch: int


@dataclass(slots=True, weakref_slot=True, eq=False)
class InputBatch:
    """Every record of one fetch of one input topic, per partition."""

    topic: str
    fetches: list[PartitionFetch]

    def __len__(self) -> int:
        return sum(len(fetch.records) for fetch in self.fetches)


class InputBatchMessage(ConsumerMessage):
    """The one Faust message an `InputBatch` travels in, through the conductor
    (which routes it by `tp`, a partition of the input) to the agent's stream.

    Its `topic` is not the input topic but `<input>.batch`, which acks are not
    enabled for: Faust's stream then neither tracks nor acks it. The
    compiled stream iterator acks by writing the message's offset straight
    into the consumer's per-offset lists (faust/_cython/streams.pyx `after`),
    past any override of `Consumer.ack`; for a batch that offset means
    nothing (canary: test_faust_stream_acks_past_consumer_ack). The agent
    reports the batch's progress itself (`BatchConsumer.batch_started`,
    `batch_finished`, `mark_accounted`)."""

    __slots__ = ()

    def __init__(self, batch: InputBatch, generation_id: int) -> None:
        first = batch.fetches[0]
        super().__init__(batch.topic + BATCH_TOPIC_SUFFIX, first.partition, first.position, 0.0, 0, None, None,
                         batch,  # type: ignore[arg-type]  # the value: what the agent's stream yields
                         None, 0, 0, tp=TP(batch.topic, first.partition), generation_id=generation_id)


@dataclass(frozen=True, slots=True)
class ReadStart:
    """Where the consumer was sought to read a partition from, and the seek
    epoch that seek began."""

    offset: int
    seek_epoch: int


class FetchedRecords(dict[TP, list[ConsumerRecord]]):
    """A fetch's records by partition (what Faust's consumer returns), plus,
    for every active batch-topic partition, its position and seek epoch,
    read in the consumer thread in the same step as the records."""

    def __init__(self, records: Mapping[TP, list[ConsumerRecord]], positions: dict[TP, tuple[int, int]],
                 stable_ends: dict[TP, int]) -> None:
        super().__init__(records)
        self.positions = positions
        self.stable_ends = stable_ends


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer's thread: reads `read_committed`, counts seeks,
    and reports positions with each fetch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Seeks per partition, bumped in the consumer thread (see `PartitionFetch`).
        self.seek_epochs: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust reads read_committed only under exactly-once
        # (canary: test_faust_reads_uncommitted_outside_exactly_once). SPEC §2
        # says events of an aborted transaction are never accounted. The
        # fetcher takes the level from here when the consumer starts.
        consumer._isolation_level = "read_committed"
        # Faust asks the broker to hold a fetch up to 1.5 s for data to come.
        # Kafka 4.4 answers a read_committed fetch only when that wait ends,
        # even with data waiting: events sat up to 1.5 s before the agent saw
        # them (at 5,000 ev/s, p99 1.9 s). The fetcher asks again at once.
        consumer._fetch_max_wait_ms = READ_COMMITTED_FETCH_WAIT_MS
        return consumer

    async def _fetch_records(self, consumer: Any, active_partitions: set[TP], timeout: float | None = None,
                             max_records: int | None = None) -> FetchedRecords:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        # No await between the drain above and these reads: a seek (which
        # runs in this thread too) cannot fall between them.
        batch_topics = cast(BatchConsumer, self.consumer).batch_topics
        assignment = consumer._subscription.subscription
        states = assignment.assignment if assignment is not None else None
        positions: dict[TP, tuple[int, int]] = {}
        stable_ends: dict[TP, int] = {}
        if states is not None:
            for tp in active_partitions or ():
                if tp.topic not in batch_topics:
                    continue
                state = states.state_value(TopicPartition(tp.topic, tp.partition))
                if state is None or not state.has_valid_position:
                    continue
                positions[tp] = (state.position, self.seek_epochs.get(tp, 0))
                stable_end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
                if stable_end is not None:
                    stable_ends[tp] = stable_end
        return FetchedRecords(records, positions, stable_ends)

    def _bump(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            key = TP(tp.topic, tp.partition)
            self.seek_epochs[key] = self.seek_epochs.get(key, 0) + 1

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_counted)

    async def _seek_to_committed_counted(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        self._bump(consumer.assignment())
        return await consumer.seek_to_committed()

    async def seek_to_beginning(self, *partitions: Any) -> None:
        await self.call_thread(self._seek_to_beginning_counted, *partitions)

    async def _seek_to_beginning_counted(self, *partitions: Any) -> None:
        self._bump(partitions)
        await self._ensure_consumer().seek_to_beginning(*_aiokafka_tps(partitions))

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        self._bump(partitions)
        await super()._seek_wait(consumer, partitions)

    async def seek_counted(self, partition: TP, offset: int) -> None:
        """Seek in the consumer thread (Faust seeks from the caller's thread)."""
        await self.call_thread(self._seek_counted, partition, offset)

    async def _seek_counted(self, partition: TP, offset: int) -> None:
        self._bump([partition])
        self._ensure_consumer().seek(*_aiokafka_tps([partition]), offset)

    async def positions(self, tps: Iterable[TP]) -> dict[TP, ReadStart]:
        return await self.call_thread(self._positions, list(tps))

    async def _positions(self, tps: list[TP]) -> dict[TP, ReadStart]:
        consumer = self._ensure_consumer()
        return {tp: ReadStart(await consumer.position(aiotp), self.seek_epochs.get(tp, 0))
                for tp, aiotp in zip(tps, _aiokafka_tps(tps), strict=True)}


def _aiokafka_tps(tps: Iterable[Any]) -> list[TopicPartition]:
    """aiokafka's seeks refuse Faust's TP tuples (an isinstance check)."""
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing over the input in whole fetches.

    Stock Faust hands the agent one message at a time: two tasks and an
    `asyncio.wait` per message, a stream step with a loop turn, an ack under a
    process-wide lock -- about 100 µs an event in a worker, more than the
    accounting itself (docs/benchmarks.md). Its per-offset commit bookkeeping
    also lets one unacked offset at the head through (canary
    test_faust_commits_past_a_one_offset_head_gap). For the topics in
    `batch_topics` this consumer instead:

    - hands every record of one fetch to the conductor as one
      `InputBatchMessage`; the agent's stream skips it if a rebalance began
      since the fetch (its generation); at most BATCHES_IN_FLIGHT are out,
      and `wait_empty` on a rebalance waits for the one the agent is on;
    - records a `ReadStart` for each partition it seeks to the committed
      offset (or the log start, when the group never committed), and counts
      seeks, so the agent can tell stale records from fresh ones;
    - commits, per partition, the offset the agent last reported with
      `mark_accounted`, and nothing else.

    Other topics (table changelogs during recovery and for standbys) go through
    Faust's path unchanged.
    """

    _thread: BatchConsumerThread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_topics: frozenset[str] = frozenset()
        self._accounted: dict[TP, int] = {}
        self._read_starts: dict[TP, ReadStart] = {}
        self._stable_ends: dict[TP, int] = {}
        self._fetched_to: dict[TP, int] = {}
        #: Batches handed over and not finished. Weak: a batch that Faust drops
        #: on a rebalance (it clears the agent's queue, and its stream skips
        #: batches of an older generation) never reaches the agent, and
        #: leaves this set when it is freed.
        self._batches_out: weakref.WeakSet[InputBatch] = weakref.WeakSet()
        self._batch_in_process: InputBatch | None = None
        self._batch_done = asyncio.Event()
        #: Monotonic time of the last successful offset commit.
        self.last_commit_at: float | None = None

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- what the agent reads and reports ----------------------------------

    def read_start(self, tp: TP) -> ReadStart | None:
        return self._read_starts.get(tp)

    def mark_accounted(self, tp: TP, offset: int) -> None:
        """Everything of `tp` before `offset` is accounted: commit up to it."""
        self._accounted[tp] = offset

    def accounted(self, tp: TP) -> int | None:
        return self._accounted.get(tp)

    def fetched_to(self, tp: TP) -> int | None:
        """The position after the last fetch of `tp` handed over."""
        return self._fetched_to.get(tp)

    def stable_end(self, tp: TP) -> int | None:
        """The partition's last stable offset (its end, for read_committed) as
        of the last fetch."""
        return self._stable_ends.get(tp)

    def committed(self, tp: TP) -> int | None:
        return self._committed_offset.get(tp)

    # -- fetching ------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the consumer's loop
        """Faust's drain loop (faust/transport/consumer.py `_drain_messages`),
        with one hand-over per fetch for the batch topics."""
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active_partitions = await self._wait_next_records(1.0)
                generation_id = self.app.consumer_generation_id
                await self.sleep(0)
                if records is not None and not self.should_stop and self.flow_active:
                    if isinstance(records, FetchedRecords):
                        self._stable_ends.update(records.stable_ends)
                        await self._hand_over_batches(records, generation_id)
                    await self._deliver_one_by_one(records, active_partitions)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over_batches(self, fetched: FetchedRecords, generation_id: int) -> None:
        by_topic: dict[str, list[PartitionFetch]] = {}
        for tp, (position, epoch) in fetched.positions.items():
            records = fetched.get(tp) or []
            if not records and position == self._fetched_to.get(tp):
                continue  # nothing new: not even a marker passed
            by_topic.setdefault(tp.topic, []).append(PartitionFetch(tp.partition, records, position, epoch))
        for topic, fetches in by_topic.items():
            batch = InputBatch(topic, fetches)
            if not await self._wait_for_slot():
                return  # a rebalance began: Faust seeks to the committed offsets after it
            self._batches_out.add(batch)
            for fetch in fetches:
                self._fetched_to[TP(topic, fetch.partition)] = fetch.position
            await self.wait_first(self.callback(InputBatchMessage(batch, generation_id)), self.suspend_flow.wait())

    async def _wait_for_slot(self) -> bool:
        """Wait until fewer than BATCHES_IN_FLIGHT batches are out; False when
        a rebalance began meanwhile."""
        while len(self._batches_out) >= BATCHES_IN_FLIGHT:
            if self.suspend_flow.is_set():
                return False
            self._batch_done.clear()
            await self.wait_first(self._batch_done.wait(), self.suspend_flow.wait())
        return not self.suspend_flow.is_set()

    async def _deliver_one_by_one(self, records: Mapping[TP, list[Any]], active_partitions: Any) -> None:
        """Faust's per-message hand-over, for the topics that are not batched."""
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, batch in records.items():
            if tp.topic in self.batch_topics:
                continue
            if active_partitions is not None and tp not in active_partitions \
                    and tp not in self._buffered_partitions:
                continue
            for record in batch:
                if not self.flow_active:
                    return
                message = self._to_message(tp, record)
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)

    # -- acks and commits ----------------------------------------------------

    def batch_started(self, batch: InputBatch) -> None:
        self._batch_in_process = batch

    def batch_finished(self, batch: InputBatch) -> None:
        """The agent is done with the batch (accounted, or failed and stopping)."""
        self._batch_in_process = None
        self._batches_out.discard(batch)
        self._batch_done.set()

    async def wait_empty(self) -> None:
        """Also wait for the batch the agent is working on, so a rebalance
        commits it and never hands its partitions over half-written."""
        while self._batch_in_process is not None and not self.app.crashed:
            self._batch_done.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._batch_done.wait(), timeout=1.0)
        await super().wait_empty()

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        committed = await super()._commit(offsets)
        if committed:
            self.last_commit_at = time.monotonic()
        return committed

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp in self._accounted:
            if tp not in self._acked and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic in self.batch_topics:
            return self._accounted.get(tp)
        return super()._new_offset(tp)

    def verify_event_path(self, now: float, tp: TP) -> None:
        # Faust's stall check reads per-partition stream times that batches
        # do not update; the agent's own progress gauge covers these topics.
        if tp.topic not in self.batch_topics:
            super().verify_event_path(now, tp)

    # -- seeking --------------------------------------------------------------

    async def _seek(self, partition: TP, offset: int) -> None:
        await self._thread.seek_counted(partition, offset)

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset (Faust's
        `perform_seek`), the batch topics' never-committed partitions to the
        log start, and record where each batch-topic partition is read from.

        Faust leaves a never-committed partition wherever the fetcher got to
        (canary test_faust_seek_leaves_never_committed_partitions_alone); a
        worker that took over from one killed before its first commit then
        sat idle on a full input (docs/faults.md)."""
        committed = await self.seek_to_committed()
        # Faust's perform_seek, minus the per-message read offsets the batch
        # topics do not use.
        self._read_offset.update({tp: offset if offset is not None and offset >= 0 else None
                                  for tp, offset in committed.items()})
        self._committed_offset.update({TP(tp.topic, tp.partition): offset for tp, offset in committed.items()
                                       if offset is not None and offset > 0})
        batch_tps = [TP(tp.topic, tp.partition) for tp in self.assignment() if tp.topic in self.batch_topics]
        never_committed = [tp for tp in batch_tps if (committed.get(tp) is None or committed[tp] < 0)]
        if never_committed:
            await self._thread.seek_to_beginning(*never_committed)
        starts = await self._thread.positions(batch_tps)
        for tp, start in starts.items():
            self._read_starts[tp] = start
            self._accounted.pop(tp, None)
            self._fetched_to[tp] = start.offset
        self.log.info("reading input partitions from %s",
                      ", ".join(f"{tp.partition}@{start.offset}" for tp, start in sorted(starts.items())))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._read_starts.pop(tp, None)
            self._accounted.pop(tp, None)
            self._stable_ends.pop(tp, None)
            self._fetched_to.pop(tp, None)
        await super().on_partitions_revoked(revoked)


class BatchTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with `BatchConsumer`."""

    Consumer = BatchConsumer


drivers.TRANSPORTS.aliases[TRANSPORT_SCHEME] = f"{__name__}:BatchTransport"


def enable_batches(app: AppT, topics: Iterable[str]) -> BatchConsumer:
    """Hand these topics to their agent in whole fetches (the app's broker URL
    must use `TRANSPORT_SCHEME`)."""
    consumer = app.consumer
    if not isinstance(consumer, BatchConsumer):
        raise TypeError(f"the app's broker URLs must use {TRANSPORT_SCHEME}:// (got {type(consumer).__name__})")
    consumer.batch_topics = frozenset(topics)
    return consumer


# --------------------------------------------------------------------------
# Tables and stores


class CodecTable(faust.Table):
    """A Table whose keys and values use the named codecs.

    Faust derives a table's serializers from its key and value *model* types
    in `__init__` (`_serializer_from_type`) and creates the changelog topic,
    which recovery decodes with, right then; so the codecs are chosen here,
    not set afterwards."""

    key_codec: str = "raw"
    value_codec: str = "raw"

    def _serializer_from_type(self, typ: Any) -> str:
        return self.key_codec if typ is str else self.value_codec


def memory_store_partitions(store: MemoryStore) -> MutableMapping[Any, int]:
    """The memory store's key -> partition map: Faust uses it to drop the keys
    of partitions that are no longer active when recovery completes."""
    return store._key_partition


def rocksdb_partition_db(store: RocksDBStore, partition: int) -> Any:
    """The RocksDB database of one partition (opened if need be)."""
    return store._db_for_partition(partition)


def rocksdb_key_index(store: RocksDBStore) -> MutableMapping[bytes, int]:
    """The RocksDB store's key -> partition cache."""
    return store._key_index


def rocksdb_get_any_partition(store: RocksDBStore, key: bytes) -> bytes | None:
    """A key's value from whichever partition database holds it."""
    found = store._get_bucket_for_key(key)
    return None if found is None else found.value


class AnyPartitionRocksDBStore(RocksDBStore):
    """Faust's RocksDB store, reading a key from whichever partition holds it.

    Faust's `_get` reads only the partition of `current_event()`; in a batch
    that is the first partition of the batch, not the key's (canary
    test_faust_rocksdb_store_reads_only_the_current_events_partition)."""

    def _get(self, key: bytes) -> bytes | None:
        return rocksdb_get_any_partition(self, key)
