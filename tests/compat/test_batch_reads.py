"""Where the batch consumer reads each input partition from, with no broker:
`BatchConsumerThread` over a stand-in for the aiokafka consumer that moves
its positions the way aiokafka's fetcher does (a drain moves a partition's
position to the end of what it handed over; a seek sets it).

These pin the fix of issue 20: a partition's read start was read back from
the consumer's position after the seek, with awaits in between, and a fetch
drained meanwhile had moved that position past records no one accounted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.tables.recovery import Recovery
from faust.types import TP, AppT

from app.faust_compat import (
    TRANSPORT_SCHEME,
    BatchConsumerThread,
    InputGap,
    MarkerAwareRecovery,
    PartitionFetch,
    ReadStart,
)

TOPIC = "session-events"
TP0 = TP(TOPIC, 0)
AIO_TP0 = TopicPartition(TOPIC, 0)
CHANGELOG = TP("tenants-changelog", 0)
AIO_CHANGELOG = TopicPartition(CHANGELOG.topic, 0)


@dataclass
class Record:
    offset: int


@dataclass
class PartitionState:
    position: int | None = None
    lso: int | None = None
    highwater: int | None = None

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None


@dataclass
class Assignment:
    states: dict[TopicPartition, PartitionState]

    def state_value(self, tp: TopicPartition) -> PartitionState | None:
        return self.states.get(tp)


@dataclass
class Subscriptions:
    assignment: Assignment
    reassignment_in_progress: bool = False

    @property
    def subscription(self) -> Subscriptions:
        return self

    def is_assigned(self, tp: TopicPartition) -> bool:
        return tp in self.assignment.states

    @contextlib.contextmanager
    def fetch_context(self) -> Iterator[None]:
        yield


@dataclass
class Chunk:
    """What aiokafka holds of a partition: offsets `start` up to `end`, with
    these records (the rest are transaction markers or aborted records)."""

    start: int
    offsets: list[int]
    end: int


def records(start: int, end: int) -> Chunk:
    return Chunk(start, list(range(start, end)), end)


@dataclass
class Fetcher:
    """aiokafka's fetcher as far as the thread uses it: what it holds for a
    partition begins at that partition's position, and a drain moves it."""

    subscriptions: Subscriptions
    buffered: dict[TopicPartition, Chunk] = field(default_factory=dict)
    #: Set to make a wait for data end; what it runs first stands for
    #: whatever else the consumer thread does while it waits.
    on_wait: Any = None
    #: Called inside the drain once a position moved: stands for another
    #: thread that the interpreter switches to right then.
    during_drain: Any = None
    _closed: bool = False

    @property
    def _subscriptions(self) -> Subscriptions:
        return self.subscriptions

    async def fetched_records(self, partitions: Any, timeout: float = 0, max_records: Any = None) -> dict:
        assert timeout == 0, "the thread drains without waiting inside the drain"
        drained = {}
        for tp, chunk in list(self.buffered.items()):
            state = self.subscriptions.assignment.states[tp]
            if state.position != chunk.start:
                continue  # aiokafka: FetchResult.check_assignment
            if chunk.offsets:
                drained[TP(tp.topic, tp.partition)] = [Record(offset) for offset in chunk.offsets]
            state.position = chunk.end  # aiokafka: FetchResult._update_position
            del self.buffered[tp]
            if self.during_drain is not None:
                self.during_drain()
        return drained

    def _create_fetch_waiter(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()

        async def later() -> None:
            if self.on_wait is not None:
                await self.on_wait()
            waiter.set_result(None)

        asyncio.get_running_loop().create_task(later())
        return waiter


class Coordinator:
    def __init__(self, committed: dict[TopicPartition, int], during_fetch: Any = None) -> None:
        self.committed = committed
        self.during_fetch = during_fetch

    async def fetch_committed_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        if self.during_fetch is not None:
            await self.during_fetch()
        return {tp: OffsetAndMetadata(self.committed[tp], "") for tp in tps if tp in self.committed}


class Consumer:
    """The aiokafka consumer of one partition, 0 of the input topic."""

    def __init__(self, *, committed: dict[TopicPartition, int], log_start: int = 0, position: int | None = None,
                 during_offset_fetch: Any = None) -> None:
        self._subscription = Subscriptions(Assignment({AIO_TP0: PartitionState(position)}))
        self._fetcher = Fetcher(self._subscription)
        self._coordinator = Coordinator(committed, during_offset_fetch)
        self.log_start = log_start
        self.seeks: list[tuple[TopicPartition, int]] = []
        self._closed = False

    def state(self) -> PartitionState:
        return self._subscription.assignment.states[AIO_TP0]

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.log_start)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.state().position = offset
        self._fetcher.buffered.pop(tp, None)  # aiokafka drops what it held


@pytest.fixture
async def thread() -> AsyncIterator[BatchConsumerThread]:
    app = faust.App("reads", broker=f"{TRANSPORT_SCHEME}://127.0.0.1:9", autodiscover=False)
    app.consumer.batch_topics = frozenset({TOPIC})
    yield app.consumer._thread


async def test_the_read_start_is_the_offset_sought_not_a_position_read_afterwards(
        thread: BatchConsumerThread) -> None:
    """Issue 20's deterministic case: the group committed 100, and while the
    committed offset is fetched a drain moves the position to 150. The read
    start is 100, the consumer is sought there after the drain, and the
    drained records carry the old epoch: stale."""
    consumer = Consumer(committed={AIO_TP0: 100}, position=100)
    consumer._fetcher.buffered[AIO_TP0] = records(100, 150)
    drained_meanwhile: list[Any] = []

    async def drain() -> None:
        drained_meanwhile.append(await thread._fetch_records(consumer, {TP0}, timeout=0))

    consumer._coordinator.during_fetch = drain
    thread._consumer = consumer
    epoch_before = thread.seek_epochs.get(TP0, 0)

    starts, gaps = await thread._seek_to_read_starts({TP0: None})

    assert starts == {TP0: ReadStart(100, epoch_before + 1)}
    assert gaps == []
    assert consumer.seeks[-1] == (AIO_TP0, 100) and consumer.state().position == 100
    [fetched] = drained_meanwhile
    assert fetched.fetches[TP0].start == 100 and fetched.fetches[TP0].position == 150
    assert fetched.fetches[TP0].seek_epoch == epoch_before  # older than the read start: stale


async def test_a_partition_the_group_never_committed_is_read_from_the_log_start(thread: BatchConsumerThread) -> None:
    consumer = Consumer(committed={}, log_start=7, position=40)
    thread._consumer = consumer
    starts, gaps = await thread._seek_to_read_starts({TP0: None})
    assert starts[TP0].offset == 7 and gaps == []
    assert consumer.state().position == 7


async def test_a_committed_offset_the_log_no_longer_holds_is_a_gap(thread: BatchConsumerThread) -> None:
    """Retention deleted offsets 100-129 before the group read them: the read
    goes on from 130, and the gap is reported, not passed in silence."""
    consumer = Consumer(committed={AIO_TP0: 100}, log_start=130)
    thread._consumer = consumer
    starts, gaps = await thread._seek_to_read_starts({TP0: None})
    assert starts[TP0].offset == 130
    assert gaps == [InputGap(TOPIC, 0, expected=100, log_start=130)]
    # The agent asks to read again from its cursor: the same check applies.
    starts, gaps = await thread._seek_to_read_starts({TP0: 120})
    assert starts[TP0].offset == 130 and gaps == [InputGap(TOPIC, 0, expected=120, log_start=130)]
    starts, gaps = await thread._seek_to_read_starts({TP0: 135})
    assert starts[TP0].offset == 135 and gaps == []


async def test_a_partition_revoked_while_its_offsets_are_fetched_is_not_sought(thread: BatchConsumerThread) -> None:
    consumer = Consumer(committed={AIO_TP0: 5})

    async def revoke() -> None:
        consumer._subscription.assignment.states.clear()

    consumer._coordinator.during_fetch = revoke
    thread._consumer = consumer
    starts, _ = await thread._seek_to_read_starts({TP0: None})
    assert starts == {} and consumer.seeks == []


async def test_each_fetch_carries_the_span_it_was_drained_from(thread: BatchConsumerThread) -> None:
    """A seek while the thread waits for data moves the position; the fetch
    then begins where the drain began, not where the last one ended."""
    consumer = Consumer(committed={}, position=10)
    thread._consumer = consumer
    consumer._fetcher.buffered[AIO_TP0] = records(10, 13)
    first = await thread._fetch_records(consumer, {TP0}, timeout=0)
    assert first.fetches[TP0] == PartitionFetch(0, first[TP0], 10, 13, 0)
    assert [record.offset for record in first[TP0]] == [10, 11, 12]

    async def seek_elsewhere_then_data() -> None:
        consumer.seek(AIO_TP0, 50)
        consumer._fetcher.buffered[AIO_TP0] = records(50, 52)

    consumer._fetcher.on_wait = seek_elsewhere_then_data
    second = await thread._fetch_records(consumer, {TP0}, timeout=1.0)
    assert (second.fetches[TP0].start, second.fetches[TP0].position) == (50, 52)


async def test_a_drain_of_markers_alone_is_a_fetch_without_records(thread: BatchConsumerThread) -> None:
    """read_committed passes transaction markers and aborted records with no
    record to hand over: the agent must still learn that the position moved
    (a trailing marker), and a drain that moved nothing is no fetch."""
    consumer = Consumer(committed={}, position=20)
    thread._consumer = consumer
    assert (await thread._fetch_records(consumer, {TP0}, timeout=0)).fetches == {}
    consumer._fetcher.buffered[AIO_TP0] = Chunk(20, [], 22)
    fetched = await thread._fetch_records(consumer, {TP0}, timeout=0)
    assert dict(fetched) == {}
    assert fetched.fetches[TP0] == PartitionFetch(0, [], 20, 22, 0)


async def test_records_not_handed_over_are_read_again_unless_sought_since(thread: BatchConsumerThread) -> None:
    """The tenant topic has no cursor: records drained and then dropped (the
    flow stopped) are read again from the first one not handed over, but only
    when no seek came after their drain (the rebalance's seek decides then)."""
    consumer = Consumer(committed={}, position=100)
    thread._consumer = consumer
    epoch = thread.seek_epochs.get(TP0, 0)
    consumer.state().position = 150  # drained 100-149 at `epoch`; 120-149 were not handed over
    assert await thread._seek_back(TP0, 120, epoch) is True
    assert consumer.seeks[-1] == (AIO_TP0, 120) and thread.seek_epochs[TP0] == epoch + 1
    # Drained at the old epoch, then sought (to the committed offset, say): left alone.
    assert await thread._seek_back(TP0, 140, epoch) is False
    assert consumer.seeks[-1] == (AIO_TP0, 120)


def hand_over_to(batch_consumer: Any, after_each: Any = None) -> list[tuple[str, int]]:
    """Faust's hand-over with the agents replaced by a list of (topic, offset)
    handed over; `after_each(handed)` runs after each one."""
    handed: list[tuple[str, int]] = []

    async def callback(message: Any) -> None:
        handed.append((message.topic, message.offset))
        if after_each is not None:
            after_each(handed)

    async def first(*coroutines: Any) -> None:  # mode's wait_first needs a started service
        await coroutines[0]
        for waiting in coroutines[1:]:
            waiting.close()

    batch_consumer.callback = callback
    batch_consumer.wait_first = first
    batch_consumer._to_message = lambda tp, record: SimpleNamespace(topic=tp.topic, offset=record.offset)
    batch_consumer.marked_topics = frozenset({TOPIC, "usage"})
    batch_consumer.resume_flow()
    settle(batch_consumer)
    return handed


def settle(batch_consumer: Any) -> None:
    """An assignment, and its recovery completed, as Faust signals them."""
    app = batch_consumer.app
    app.consumer_generation_id += 1
    batch_consumer._assigned_at_rebalance = app.rebalancing_count
    batch_consumer.recovery_completed(app.consumer_generation_id)
    assert batch_consumer.settled


async def test_what_the_hand_over_drops_when_the_flow_stops_is_reported(thread: BatchConsumerThread) -> None:
    """Faust's per-message hand-over stops when the flow does: for a marked
    topic, the first offset of each partition it did not hand over."""
    batch_consumer = thread.consumer
    usage0, usage1, other = TP("usage", 0), TP("usage", 1), TP("other", 0)

    def a_rebalance_begins_after_two(handed: list[tuple[str, int]]) -> None:
        if len(handed) == 2:
            batch_consumer.stop_flow()

    handed = hand_over_to(batch_consumer, a_rebalance_begins_after_two)
    records = {usage0: [Record(7), Record(8), Record(9)], other: [Record(3)], usage1: [Record(40)]}
    undelivered = await batch_consumer._deliver_one_by_one(records, None)
    assert handed == [("usage", 7), ("usage", 8)]
    assert undelivered == {usage0: 9, usage1: 40}  # not "other": Faust's own topics are sought as Faust does


def test_faust_clears_agent_queues_when_the_flow_resumes() -> None:
    """Canary. What was handed over to an agent's queue and not taken yet is
    dropped when flow control resumes, which Faust's recovery does after it
    sought the stream partitions (faust/tables/recovery.py
    `on_recovery_completed`): the consumer's position is then past it."""
    app = faust.App("canary-clear", broker="kafka://127.0.0.1:9", autodiscover=False)
    queue = app.channel().queue
    queue.put_nowait("a delta handed over after the seek")
    app.flow_control.resume()
    assert queue.empty()


async def test_a_marked_topic_is_held_back_while_a_rebalance_runs(thread: BatchConsumerThread) -> None:
    """From a rebalance's start until the recovery of its assignment
    completed, a marked topic's records are not handed over (Faust would
    clear them from the agent's queue): they are reported, from the first
    one, to be read again. The changelogs' records, which recovery reads
    meanwhile, still are handed over."""
    batch_consumer = thread.consumer
    app = batch_consumer.app
    usage0, usage1, changelog = TP("usage", 0), TP("usage", 1), TP("tenants-changelog", 3)

    def a_rebalance_begins_after_one(handed: list[tuple[str, int]]) -> None:
        if len(handed) == 1:
            app.on_rebalance_start()  # what aiokafka's revocation calls, in the consumer thread

    handed = hand_over_to(batch_consumer, a_rebalance_begins_after_one)
    records = {usage0: [Record(7), Record(8)], changelog: [Record(3)], usage1: [Record(40)]}
    undelivered = await batch_consumer._deliver_one_by_one(records, None)
    assert handed == [("usage", 7), ("tenants-changelog", 3)]
    assert undelivered == {usage0: 8, usage1: 40}
    settle(batch_consumer)
    handed.clear()
    assert await batch_consumer._deliver_one_by_one({usage0: [Record(8)]}, None) == {}
    assert handed == [("usage", 8)]


def test_a_recovery_superseded_by_the_next_rebalance_does_not_settle_it(thread: BatchConsumerThread) -> None:
    """Faust's recovery of one assignment still completes, and clears
    `app.rebalancing`, when the next rebalance began but has not been
    assigned yet (it compares generations only). The consumer stays
    unsettled until the recovery of the latest assignment completes."""
    batch_consumer = thread.consumer
    app = batch_consumer.app
    settle(batch_consumer)
    app.on_rebalance_start()
    app.consumer_generation_id += 1
    batch_consumer._assigned_at_rebalance = app.rebalancing_count  # assignment A
    app.on_rebalance_start()  # rebalance B begins; A's recovery is still running
    batch_consumer.recovery_completed(app.consumer_generation_id)  # A's recovery completes
    app.on_rebalance_end()
    assert not app.rebalancing and not batch_consumer.settled
    settle(batch_consumer)  # B assigned and recovered


# -- where a changelog's drains got to (MarkerAwareRecovery) -------------------


async def test_what_a_drain_reached_is_reported_with_its_records_never_before(thread: BatchConsumerThread) -> None:
    """Recovery, on the event loop's thread, asks how far the consumer
    thread read a changelog partition and which record it drained last. The
    thread can be switched out in the middle of a drain, after aiokafka moved
    the position and before the drained records were noted: a reader of the
    live position then saw the end reached with nothing left to apply, ended
    recovery, and the records were applied afterwards over newer state (the
    long storm's tenants lost usage that way). The answer changes only once
    the drain is noted, both values in one step."""
    consumer = Consumer(committed={})
    consumer._subscription.assignment.states[AIO_CHANGELOG] = PartitionState(40)
    thread._consumer = consumer
    seen_during: list[Any] = []
    consumer._fetcher.during_drain = lambda: seen_during.append(thread.read_past(CHANGELOG))
    consumer._fetcher.buffered[AIO_CHANGELOG] = records(40, 45)
    await thread._fetch_records(consumer, {CHANGELOG}, timeout=0)
    assert seen_during == [None]
    assert thread.read_past(CHANGELOG) == (45, 44)
    # A trailing transaction marker: the position moves, no record comes.
    consumer._fetcher.buffered[AIO_CHANGELOG] = Chunk(45, [], 46)
    await thread._fetch_records(consumer, {CHANGELOG}, timeout=0)
    assert seen_during[-1] == (45, 44)
    assert thread.read_past(CHANGELOG) == (46, 44)
    # A seek forgets both: recovery waits for the next drain.
    await thread._seek_counted(CHANGELOG, 40)
    assert thread.read_past(CHANGELOG) is None


def recovery_of(app: AppT, highwater_end: int, applied: int) -> MarkerAwareRecovery:
    recovery = MarkerAwareRecovery(app, app.tables)
    recovery.active_highwaters[CHANGELOG] = highwater_end - 1  # Faust's `_build_highwaters`
    recovery.active_offsets[CHANGELOG] = applied
    return recovery


async def test_faust_recovery_waits_on_a_trailing_marker(thread: BatchConsumerThread) -> None:
    """Canary. A changelog written in transactions ends with a commit marker:
    records 40-44, the marker at 45, end offset 46. Stock recovery counts the
    marker's offset as a record still to apply, whatever the consumer read,
    so it waits on it; MarkerAwareRecovery ends once the position passed the
    end and every drained record was applied, and not before."""
    app = thread.consumer.app
    consumer = Consumer(committed={})
    consumer._subscription.assignment.states[AIO_CHANGELOG] = PartitionState(40)
    thread._consumer = consumer
    consumer._fetcher.buffered[AIO_CHANGELOG] = records(40, 45)
    await thread._fetch_records(consumer, {CHANGELOG}, timeout=0)
    consumer._fetcher.buffered[AIO_CHANGELOG] = Chunk(45, [], 46)
    await thread._fetch_records(consumer, {CHANGELOG}, timeout=0)

    done = recovery_of(app, 46, applied=44)
    assert Recovery.active_remaining(done)[CHANGELOG] == 1  # stock: one offset (the marker) left, ever
    assert not done.need_recovery()
    # Record 44 drained but not applied yet: still recovering.
    assert recovery_of(app, 46, applied=43).need_recovery()
    # The position short of the end (the marker not read yet): still recovering.
    consumer._fetcher.buffered[AIO_CHANGELOG] = records(40, 45)
    await thread._seek_counted(CHANGELOG, 40)
    await thread._fetch_records(consumer, {CHANGELOG}, timeout=0)
    assert recovery_of(app, 46, applied=44).need_recovery()
