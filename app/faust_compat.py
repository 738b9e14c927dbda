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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
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
    """What one fetch brought of one input partition: every offset from
    `start` up to `position`.

    `start` is the consumer's position when the records were drained: aiokafka
    hands over a partition's records only when they begin exactly there
    (aiokafka consumer/fetcher.py `FetchResult.check_assignment`). `position`
    is the position after the drain, the next offset to read. Both pass
    transaction markers and aborted records, which take offsets but are never
    delivered, so the records may cover less than the span. `seek_epoch`
    counts the seeks of this partition when the fetch was drained: records
    drained before a seek are stale once it happened.
    """

    partition: int
    records: list[ConsumerRecord]
    start: int
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
    epoch that seek began: both set in one step, in the consumer thread, with
    no await between the seek and the epoch (`BatchConsumerThread._seek_from`)."""

    offset: int
    seek_epoch: int


@dataclass(frozen=True, slots=True)
class InputGap:
    """Offsets of an input partition that can no longer be read: the log
    start (retention, a deleted record range) passed them before the group
    accounted them. Reported, never passed in silence."""

    topic: str
    partition: int
    #: The first offset the group had not accounted.
    expected: int
    #: The first offset the broker still holds.
    log_start: int


class FetchedRecords(dict[TP, list[ConsumerRecord]]):
    """A fetch's records by partition (what Faust's consumer returns), plus,
    for every marked-topic partition the drain passed (the batch topics'
    among them), its `PartitionFetch` and stable end, read in the consumer
    thread in the same step as the records."""

    def __init__(self, records: Mapping[TP, list[ConsumerRecord]], fetches: dict[TP, PartitionFetch],
                 stable_ends: dict[TP, int]) -> None:
        super().__init__(records)
        self.fetches = fetches
        self.stable_ends = stable_ends


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer's thread: reads `read_committed`, seeks the batch
    topics' partitions itself, and reports with each fetch where every one of
    their drains began and ended."""

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Seeks per partition, bumped in the consumer thread (see `PartitionFetch`).
        self.seek_epochs: dict[TP, int] = {}
        #: Per partition of the other topics (changelogs), where the last
        #: drain left it: (the position after it, the offset of the last
        #: record drained since the last seek, if any). One tuple, replaced
        #: whole after the drain, so another thread reads both or neither
        #: (`MarkerAwareRecovery`).
        self.drained_to: dict[TP, tuple[int, int | None]] = {}

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
        """Faust's `_fetch_records` (one `Fetcher.fetched_records`), with the
        drain itself kept free of awaits: each batch-topic partition's position
        is read just before and just after it, so a fetch carries the exact
        span it covers, whatever seeked or reset the position while the
        thread waited for data."""
        if not self.consumer.flow_active:
            return FetchedRecords({}, {}, {})
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        subscriptions = fetcher._subscriptions
        batch_topics = cast(BatchConsumer, self.consumer).batch_topics
        spanned = batch_topics | cast(BatchConsumer, self.consumer).marked_topics
        deadline = time.monotonic() + (timeout or 0.0)
        with subscriptions.fetch_context():
            while True:
                if subscriptions.reassignment_in_progress:
                    await subscriptions.wait_for_assignment()
                if not self.consumer.flow_active:
                    # The flow stopped while this thread waited for data (a
                    # rebalance began): what it drained now would be dropped.
                    return FetchedRecords({}, {}, {})
                states = _partition_states(consumer, active_partitions)
                starts = {tp: state.position for tp, state in states.items() if state.has_valid_position}
                # With no timeout, fetched_records only drains what is there:
                # it runs to its end without suspending, so no seek, reset or
                # other drain can fall between `starts` and the records.
                records = await fetcher.fetched_records(active_partitions, timeout=0, max_records=max_records)
                fetches, stable_ends = self._spans(
                    {tp: state for tp, state in states.items() if tp.topic in spanned}, starts, records)
                self._note_drained(states, starts, records, batch_topics)
                remaining = deadline - time.monotonic()
                if records or fetches or remaining <= 0:
                    return FetchedRecords(records, fetches, stable_ends)
                waiter = fetcher._create_fetch_waiter()
                done, pending = await asyncio.wait([waiter], timeout=remaining)
                for future in pending:
                    future.cancel()
                if fetcher._closed:
                    return FetchedRecords({}, {}, {})
                if done:
                    waiter.result()  # raises what the fetch raised (authorization errors)
                # Drain once more: at the deadline, it returns the stable ends
                # even without records (TTL closes wait for them).

    def _spans(self, states: Mapping[TP, Any], starts: Mapping[TP, int],
               records: Mapping[Any, list[ConsumerRecord]]) -> tuple[dict[TP, PartitionFetch], dict[TP, int]]:
        fetches: dict[TP, PartitionFetch] = {}
        stable_ends: dict[TP, int] = {}
        for tp, state in states.items():
            stable_end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
            if stable_end is not None:
                stable_ends[tp] = stable_end
            start = starts.get(tp)
            if start is None or not state.has_valid_position:
                continue
            drained = records.get(tp) or []
            if drained or state.position != start:
                fetches[tp] = PartitionFetch(tp.partition, drained, start, state.position,
                                             self.seek_epochs.get(tp, 0))
        return fetches, stable_ends

    def _note_drained(self, states: Mapping[TP, Any], starts: Mapping[TP, int],
                      records: Mapping[Any, list[ConsumerRecord]], batch_topics: frozenset[str]) -> None:
        for tp, state in states.items():
            if tp.topic in batch_topics or not state.has_valid_position:
                continue
            drained = records.get(tp)
            if drained or state.position != starts.get(tp):
                last = drained[-1].offset if drained else self.drained_to.get(tp, (0, None))[1]
                self.drained_to[tp] = (state.position, last)

    def _bump(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            key = TP(tp.topic, tp.partition)
            self.seek_epochs[key] = self.seek_epochs.get(key, 0) + 1
            self.drained_to.pop(key, None)

    def read_past(self, tp: TP) -> tuple[int, int | None] | None:
        """Where the last drain of `tp` since its last seek left the position,
        and the last record it drained since that seek; None before the
        first drain after a seek. Read from another thread: never the live
        position, which a drain moves before this thread has noted the
        records it drained (recovery then ended with those records still on
        their way, and applied them late over newer state: the tenant table
        lost usage in the long rebalance storm)."""
        return self.drained_to.get(tp)

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        self._bump(partitions)
        await super()._seek_wait(consumer, partitions)

    async def seek_counted(self, partition: TP, offset: int) -> None:
        """Seek in the consumer thread (Faust seeks from the caller's thread)."""
        await self.call_thread(self._seek_counted, partition, offset)

    async def _seek_counted(self, partition: TP, offset: int) -> None:
        self._bump([partition])
        self._ensure_consumer().seek(*_aiokafka_tps([partition]), offset)

    async def seek_back(self, partition: TP, offset: int, seek_epoch: int) -> bool:
        """Read `partition` again from `offset`, where records drained at
        `seek_epoch` were not handed over; only if no seek came since (a
        later seek decides where the partition is read from) and it is
        still assigned."""
        return cast(bool, await self.call_thread(self._seek_back, partition, offset, seek_epoch))

    async def _seek_back(self, partition: TP, offset: int, seek_epoch: int) -> bool:
        consumer = self._ensure_consumer()
        [aiotp] = _aiokafka_tps([partition])
        if self.seek_epochs.get(partition, 0) != seek_epoch or not consumer._subscription.is_assigned(aiotp):
            return False
        consumer.seek(aiotp, offset)
        self._bump([partition])
        return True

    async def seek_partitions_to_committed(self, tps: Iterable[TP]) -> Mapping[TP, int | None]:
        """aiokafka's `seek_to_committed` of these partitions (Faust's seeks all)."""
        return await self.call_thread(self._seek_partitions_to_committed, list(tps))

    async def _seek_partitions_to_committed(self, tps: list[TP]) -> Mapping[TP, int | None]:
        if not tps:
            return {}
        self._bump(tps)
        return await self._ensure_consumer().seek_to_committed(*_aiokafka_tps(tps))

    async def seek_to_read_starts(self, wanted: Mapping[TP, int | None]) -> tuple[dict[TP, ReadStart], list[InputGap]]:
        """Seek each partition to its wanted offset (None: the group's
        committed offset, or the log start when it never committed), never
        before the log start; a wanted offset the log no longer holds is an
        `InputGap`. Returns where each partition is now read from."""
        return await self.call_thread(self._seek_to_read_starts, dict(wanted))

    async def _seek_to_read_starts(self, wanted: dict[TP, int | None]) -> tuple[dict[TP, ReadStart], list[InputGap]]:
        consumer = self._ensure_consumer()
        aiotps = dict(zip(wanted, _aiokafka_tps(wanted), strict=True))
        unknown = [aiotps[tp] for tp, offset in wanted.items() if offset is None]
        committed = await consumer._coordinator.fetch_committed_offsets(unknown) if unknown else {}
        log_starts = await consumer.beginning_offsets(list(aiotps.values()))
        # From here to the end: no await. Each seek, its epoch and its read
        # start are one step, so every fetch drained afterwards carries the
        # new epoch and begins at the offset recorded here.
        starts: dict[TP, ReadStart] = {}
        gaps: list[InputGap] = []
        for tp, aiotp in aiotps.items():
            offset = wanted[tp]
            if offset is None:
                meta = committed.get(aiotp)
                offset = meta.offset if meta is not None and meta.offset >= 0 else None
            log_start = log_starts[aiotp]
            if offset is None:
                offset = log_start  # the group never read this partition
            elif offset < log_start:
                gaps.append(InputGap(tp.topic, tp.partition, offset, log_start))
                offset = log_start
            if not consumer._subscription.is_assigned(aiotp):
                continue  # revoked while the offsets were fetched
            consumer.seek(aiotp, offset)
            self._bump([tp])
            starts[tp] = ReadStart(offset, self.seek_epochs[tp])
        return starts, gaps


def _partition_states(consumer: Any, active_partitions: set[TP] | None) -> dict[TP, Any]:
    """aiokafka's state (position, stable end) of each active partition."""
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return {}
    states = {}
    for tp in active_partitions or ():
        state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        if state is not None:
            states[tp] = state
    return states


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
        #: The batch topics, and the topics whose agent reports what it has
        #: written with `mark_accounted` (the tenant agent): the consumer
        #: commits those reports, never Faust's acks, which an agent's stream
        #: also gives for events it failed to write.
        self.marked_topics: frozenset[str] = frozenset()
        self._accounted: dict[TP, int] = {}
        self._read_starts: dict[TP, ReadStart] = {}
        self._stable_ends: dict[TP, int] = {}
        #: Input gaps found by a seek and not yet taken by the agent.
        self._gaps: list[InputGap] = []
        #: Batches handed over and not finished. Weak: a batch that Faust drops
        #: on a rebalance (it clears the agent's queue, and its stream skips
        #: batches of an older generation) never reaches the agent, and
        #: leaves this set when it is freed.
        self._batches_out: weakref.WeakSet[InputBatch] = weakref.WeakSet()
        self._batch_in_process: InputBatch | None = None
        self._batch_done = asyncio.Event()
        #: Monotonic time of the last successful offset commit.
        self.last_commit_at: float | None = None
        #: exactly_once: the topics whose offsets the agents commit in their
        #: transactions, never the consumer.
        self.transactional_topics: frozenset[str] = frozenset()
        #: Awaited in turn when partitions are assigned, before Faust recovers
        #: their tables or seeks them (exactly_once: the fences).
        self.assigning_hooks: list[Callable[[set[TP]], Awaitable[None]]] = []
        #: Awaited in turn by `wait_empty` once the agent's batch is done,
        #: before the consumer commits (exactly_once: the agents commit their
        #: transactions).
        self.before_commit_hooks: list[Callable[[], Awaitable[None]]] = []
        #: Faust's count of rebalances begun (`App.rebalancing_count`) when
        #: the partitions were last assigned, and when the recovery of that
        #: assignment last completed (`settled`).
        self._assigned_at_rebalance = -1
        self._settled_at_rebalance = -2

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- what the agent reads and reports ----------------------------------

    @property
    def settled(self) -> bool:
        """No rebalance runs: the recovery of the latest assignment completed
        and no rebalance began since. Faust's `app.rebalancing` is one flag
        that a recovery superseded by the next rebalance still clears
        (faust/tables/recovery.py `on_recovery_completed` checks only the
        generation, which changes only once the next assignment arrives);
        this one cannot be cleared by an older recovery."""
        return self._settled_at_rebalance == self.app.rebalancing_count

    def recovery_completed(self, generation_id: int) -> None:
        """The recovery of assignment `generation_id` completed (flow control
        resumed, so the agents' queues were cleared)."""
        if generation_id == self.app.consumer_generation_id \
                and self._assigned_at_rebalance == self.app.rebalancing_count:
            self._settled_at_rebalance = self._assigned_at_rebalance

    def read_start(self, tp: TP) -> ReadStart | None:
        return self._read_starts.get(tp)

    def mark_accounted(self, tp: TP, offset: int) -> None:
        """Everything of `tp` before `offset` is accounted: commit up to it."""
        self._accounted[tp] = offset

    def stable_end(self, tp: TP) -> int | None:
        """The partition's last stable offset (its end, for read_committed) as
        of the last fetch."""
        return self._stable_ends.get(tp)

    def take_gaps(self) -> list[InputGap]:
        """The input gaps found since the last call."""
        gaps, self._gaps = self._gaps, []
        return gaps

    async def reseek(self, tp: TP, offset: int) -> ReadStart | None:
        """Read `tp` again from `offset` (where the agent's cursor is), or
        from the log start if the broker no longer holds `offset`; None when
        the partition was revoked meanwhile."""
        starts, gaps = await self._thread.seek_to_read_starts({tp: offset})
        self._gaps.extend(gaps)
        self._read_starts.update(starts)
        return starts.get(tp)

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
                # Records drained while the flow is stopped (a rebalance) are
                # dropped: their partitions are sought again when it ends; a
                # batch fetch that does not begin where the agent's cursor is
                # gets refused (agents/cursors.py), and the other marked
                # topics' dropped records are read again (`_read_again`), so
                # none can be passed over.
                if records is not None and not self.should_stop:
                    if self.flow_active and isinstance(records, FetchedRecords):
                        self._stable_ends.update(records.stable_ends)
                        await self._hand_over_batches(records, generation_id)
                    # With the flow stopped it hands nothing over and reports it all.
                    undelivered = await self._deliver_one_by_one(records, active_partitions)
                    if undelivered and isinstance(records, FetchedRecords):
                        await self._read_again(undelivered, records.fetches)
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
        for tp, fetch in fetched.fetches.items():
            if tp.topic in self.batch_topics:
                by_topic.setdefault(tp.topic, []).append(fetch)
        for topic, fetches in by_topic.items():
            batch = InputBatch(topic, fetches)
            if not await self._wait_for_slot():
                return  # a rebalance began: Faust seeks to the committed offsets after it
            self._batches_out.add(batch)
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

    async def _deliver_one_by_one(self, records: Mapping[TP, list[Any]], active_partitions: Any) -> dict[TP, int]:
        """Faust's per-message hand-over, for the topics that are not batched;
        returns, per partition of a marked topic, the first offset it did not
        hand over (an inactive partition's records, and all that is left
        when the flow stops, are dropped).

        A marked topic's records are also held back while a rebalance runs
        (until the consumer is `settled`): its recovery
        resumes the flow for the changelogs, resumes the stream partitions,
        seeks them, and only then resumes flow control, which clears every
        agent's queue (faust/tables/recovery.py `on_recovery_completed`,
        mode/utils/queues.py `FlowControlEvent.resume`; canary
        test_faust_clears_agent_queues_when_the_flow_resumes). Records handed
        over after the seek were dropped there with the position past them:
        the tenant agent lost a run of deltas after a rebalance in the long
        storm. Held records are read again (`_read_again`)."""
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        undelivered: dict[TP, int] = {}
        marked = self.marked_topics - self.batch_topics
        items = [(tp, batch) for tp, batch in records.items() if batch and tp.topic not in self.batch_topics]
        for index, (tp, batch) in enumerate(items):
            if active_partitions is not None and tp not in active_partitions \
                    and tp not in self._buffered_partitions:
                if tp.topic in marked:
                    undelivered[tp] = batch[0].offset
                continue
            for position, record in enumerate(batch):
                if not self.flow_active:
                    left = [(tp, batch[position:]), *items[index + 1:]]
                    undelivered.update({other: rest[0].offset for other, rest in left if other.topic in marked})
                    return undelivered
                if tp.topic in marked and not self.settled:
                    undelivered[tp] = record.offset
                    break
                message = self._to_message(tp, record)
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
        return undelivered

    async def _read_again(self, undelivered: Mapping[TP, int], fetches: Mapping[TP, PartitionFetch]) -> None:
        """A marked topic's records that were drained but not handed over:
        read them again, unless the partition was sought since (the seek
        decides). Faust's own hand-over has no cursor to catch the skip: the
        tenant agent lost deltas drained just after the seek of a rebalance."""
        for tp, offset in undelivered.items():
            fetch = fetches.get(tp)
            if fetch is not None and await self._thread.seek_back(tp, offset, fetch.seek_epoch):
                self._read_offset[tp] = None  # deliver from `offset` again

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
        (or a stop) commits it and never hands its partitions over half-written."""
        while self._batch_in_process is not None and not self.app.crashed:
            self._batch_done.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._batch_done.wait(), timeout=1.0)
        for hook in self.before_commit_hooks:
            await hook()
        await super().wait_empty()

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        committed = await super()._commit(offsets)
        if committed:
            self.last_commit_at = time.monotonic()
        return committed

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp in self._accounted:
            if tp.topic not in self.transactional_topics and tp not in self._acked \
                    and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic in self.batch_topics:  # never acked
            offset = self._accounted.get(tp)
        else:
            # Faust's _new_offset also forgets the acks it passes: called even
            # when its answer is not committed.
            acked = super()._new_offset(tp)
            offset = self._accounted.get(tp) if tp.topic in self.marked_topics else acked
        return None if tp.topic in self.transactional_topics else offset

    def verify_event_path(self, now: float, tp: TP) -> None:
        # Faust's stall check reads per-partition stream times that batches
        # do not update; the agent's own progress gauge covers these topics.
        if tp.topic not in self.batch_topics:
            super().verify_event_path(now, tp)

    # -- seeking --------------------------------------------------------------

    async def _seek(self, partition: TP, offset: int) -> None:
        await self._thread.seek_counted(partition, offset)

    async def perform_seek(self) -> None:
        """Faust's `perform_seek`, with the batch topics' partitions sought by
        `BatchConsumerThread.seek_to_read_starts`: each to its committed
        offset (the log start when the group never committed), and its
        `ReadStart` recorded in the same step as the seek.

        The read start is never read back from the consumer's position: Faust
        resumes the partitions before it seeks (faust tables/recovery.py), so
        a fetch drained meanwhile has already moved the position, and a start
        read from it passed the drained records over (issue 20: 74 to 488
        events lost per partition under group churn)."""
        assigned = [TP(tp.topic, tp.partition) for tp in self.assignment()]
        others = [tp for tp in assigned if tp.topic not in self.marked_topics]
        committed = await self._thread.seek_partitions_to_committed(others)
        self._read_offset.update({tp: offset if offset is not None and offset >= 0 else None
                                  for tp, offset in committed.items()})
        self._committed_offset.update({TP(tp.topic, tp.partition): offset for tp, offset in committed.items()
                                       if offset is not None and offset > 0})
        # The marked topics too: Faust's seek leaves a partition the group
        # never committed where the fetcher got to, past records a rebalance
        # dropped (the tenant agent lost its first deltas that way).
        marked = [tp for tp in assigned if tp.topic in self.marked_topics]
        starts, gaps = await self._thread.seek_to_read_starts(dict.fromkeys(marked))
        self._gaps.extend(gaps)
        for tp, start in starts.items():
            self._accounted.pop(tp, None)
            if tp.topic in self.batch_topics:
                self._read_starts[tp] = start
            else:
                self._read_offset[tp] = None  # Faust's hand-over skips offsets below it
        self.log.info("reading partitions from %s", ", ".join(
            f"{tp.topic}:{tp.partition}@{start.offset}" for tp, start in sorted(starts.items())))

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._assigned_at_rebalance = self.app.rebalancing_count
        for hook in self.assigning_hooks:
            await hook(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust commits while the revocation runs (App._on_partitions_revoked,
        # wait_empty): what was accounted of the revoked partitions is
        # forgotten only after that, or the new owner would account it again.
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._read_starts.pop(tp, None)
            self._accounted.pop(tp, None)
            self._stable_ends.pop(tp, None)


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
    consumer.marked_topics |= consumer.batch_topics
    return consumer


# --------------------------------------------------------------------------
# Tables and stores


class MarkerAwareRecovery(Recovery):
    """Faust's recovery, which also ends for a changelog partition whose last
    offsets are transaction markers.

    Faust counts a partition recovered when it has applied the record at
    its end offset - 1 (`need_recovery`, `_build_highwaters`). A changelog
    written in transactions (exactly_once) ends with a commit marker, which
    holds that offset and is never delivered, so stock recovery waits on
    it; Faust's own way out runs only under its exactly-once mode, after two
    5 s timeouts (`detect_aborted_tx`) (canary:
    test_faust_recovery_waits_on_a_trailing_marker). Here a partition is
    also recovered once the consumer's position passed its end and the last
    record drained before that position has been applied, both as the
    consumer thread noted them after a drain (`BatchConsumerThread.read_past`).
    When a recovery completes, it tells the consumer (`BatchConsumer.settled`)."""

    def active_remaining(self) -> Counter[TP]:
        return self._past_markers(super().active_remaining(), self.active_offsets)

    def standby_remaining(self) -> Counter[TP]:
        return self._past_markers(super().standby_remaining(), self.standby_offsets)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await super().on_recovery_completed(generation_id)
        cast(BatchConsumer, self.app.consumer).recovery_completed(generation_id)

    def _past_markers(self, remaining: Counter[TP], applied: Mapping[TP, int | None]) -> Counter[TP]:
        thread = cast(BatchConsumer, self.app.consumer)._thread
        for tp, left in remaining.items():
            if left <= 0:
                continue
            read = thread.read_past(tp)
            if read is None:
                continue
            position, last_drained = read
            applied_to = applied.get(tp)
            applied_to = -1 if applied_to is None else applied_to
            if position > applied_to + left and (last_drained is None or applied_to >= last_drained):
                remaining[tp] = 0
        return remaining


class MarkerAwareTableManager(TableManager):
    """Faust's table manager with `MarkerAwareRecovery` (the app's `TableManager`)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = MarkerAwareRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


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
