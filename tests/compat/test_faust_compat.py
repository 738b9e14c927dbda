"""Canaries for app/faust_compat.py: each shows, on the installed versions, the
behaviour of Faust, mode or aiokafka that one of its pieces exists for. No
broker: they run in the fast tier. When one fails after an upgrade, the piece
it guards may be obsolete; read the piece's docstring before removing it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from app import faust_compat
from app.faust_compat import (
    BATCH_TOPIC_SUFFIX,
    PINNED,
    TRANSPORT_SCHEME,
    BatchConsumerThread,
    CodecTable,
    IncompatibleVersions,
    InputBatch,
    InputBatchMessage,
    PartitionFetch,
    ReadStart,
    check_pinned_versions,
    memory_store_partitions,
)

TOPIC = "session-events"


@pytest.fixture
async def apps() -> AsyncIterator[tuple[faust.App, faust.App]]:
    """A stock Faust app and one on the batch transport; neither connects."""
    stock = faust.App("canary-stock", broker="kafka://127.0.0.1:9", autodiscover=False)
    ours = faust.App("canary-batch", broker=f"{TRANSPORT_SCHEME}://127.0.0.1:9", autodiscover=False)
    yield stock, ours


# -- the version guard ----------------------------------------------------------


def test_the_installed_versions_are_the_pinned_ones() -> None:
    check_pinned_versions()


def test_another_version_stops_start_up_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_compat.metadata, "version", lambda name: "0.0.1" if name == "aiokafka" else PINNED[name])
    with pytest.raises(IncompatibleVersions, match=r"aiokafka 0\.0\.1 \(needs 0\.14\.0\)"):
        check_pinned_versions()


def test_the_pins_are_the_project_dependencies() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for package, version in PINNED.items():
        assert f'"{package}=={version}"' in pyproject, package


# -- BatchConsumerThread ----------------------------------------------------------


async def test_faust_reads_uncommitted_outside_exactly_once(apps: tuple[faust.App, faust.App]) -> None:
    """SPEC §2 wants aborted transactions unaccounted: read_committed."""
    stock, ours = apps
    assert type(stock.consumer._thread) is AIOKafkaConsumerThread
    stock_consumer = stock.consumer._thread._create_worker_consumer(stock.transport)
    assert stock_consumer._isolation_level == "read_uncommitted"
    assert isinstance(ours.consumer._thread, BatchConsumerThread)
    our_consumer = ours.consumer._thread._create_worker_consumer(ours.transport)
    assert our_consumer._isolation_level == "read_committed"
    # Kafka holds a read_committed fetch for all of its wait, data or not
    # (bench: latency at 5,000 ev/s, p99 1.9 s with Faust's 1.5 s).
    assert stock_consumer._fetch_max_wait_ms == 1500
    assert our_consumer._fetch_max_wait_ms == faust_compat.READ_COMMITTED_FETCH_WAIT_MS
    await stock_consumer.stop()
    await our_consumer.stop()


async def test_aiokafka_keeps_position_and_stable_offset_per_partition(apps: tuple[faust.App, faust.App]) -> None:
    """`_fetch_records` reads these in the consumer thread, with the records."""
    _, ours = apps
    consumer = ours.consumer._thread._create_worker_consumer(ours.transport)
    consumer.assign([TopicPartition(TOPIC, 0)])
    state = consumer._subscription.subscription.assignment.state_value(TopicPartition(TOPIC, 0))
    assert not state.has_valid_position and state.lso is None and state.highwater is None
    consumer._subscription.seek(TopicPartition(TOPIC, 0), 5)  # what `seek` does (Fetcher.seek_to)
    assert state.has_valid_position and state.position == 5
    state.consumed_to(9)  # what a drain does (aiokafka FetchResult._update_position)
    assert state.position == 9
    await consumer.stop()


class RecordingThread:
    """A consumer thread that records how it is asked to seek."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def seek(self, partition: TP, offset: int) -> None:
        self.calls.append("seek in the caller's thread")

    async def seek_counted(self, partition: TP, offset: int) -> None:
        self.calls.append("seek in the consumer thread")


async def test_faust_seeks_from_the_callers_thread(apps: tuple[faust.App, faust.App]) -> None:
    """Faust's `_seek` calls the consumer thread's sync `seek` from the event
    loop's thread, racing the fetches the consumer thread drains;
    `BatchConsumer._seek` runs it in the consumer thread, where the seek
    epochs are counted in step with the fetches."""
    stock, ours = apps
    for app in (stock, ours):
        app.consumer._thread = RecordingThread()
        await app.consumer._seek(TP(TOPIC, 0), 5)
    assert stock.consumer._thread.calls == ["seek in the caller's thread"]
    assert ours.consumer._thread.calls == ["seek in the consumer thread"]


# -- BatchConsumer: commits -------------------------------------------------------


async def test_faust_commits_past_a_one_offset_head_gap(apps: tuple[faust.App, faust.App]) -> None:
    """Offset 10 was never acked, yet Faust's `_new_offset` commits past it:
    its head-gap check lets one missing offset through, and is skipped while
    nothing was committed. The batch consumer commits only offsets the agent
    reported accounted."""
    stock, _ = apps
    consumer = stock.consumer
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [11, 12]
    consumer._acked_index[tp] = {11, 12}
    assert consumer._new_offset(tp) == 13
    never_committed = TP(TOPIC, 1)
    consumer._acked[never_committed] = [5, 6]
    consumer._acked_index[never_committed] = {5, 6}
    assert consumer._new_offset(never_committed) == 7


async def test_the_batch_consumer_commits_what_the_agent_accounted(apps: tuple[faust.App, faust.App]) -> None:
    _, ours = apps
    consumer = faust_compat.enable_batches(ours, [TOPIC])
    tp = TP(TOPIC, 0)
    assert list(consumer._filter_tps_with_pending_acks()) == []
    consumer.mark_accounted(tp, 42)
    assert list(consumer._filter_tps_with_pending_acks()) == [tp]
    assert consumer._filter_committable_offsets([tp]) == {tp: 42}
    consumer._committed_offset[tp] = 42
    assert consumer._filter_committable_offsets([tp]) == {}


async def test_a_marked_topic_commits_what_its_agent_marked_never_its_acks(
        apps: tuple[faust.App, faust.App]) -> None:
    """The tenant agent's stream acks every event it took, written or not
    (Faust's take_events acks in a `finally`); its topic commits only the
    offsets the agent marked after its write. Under exactly_once nothing of
    a transactional topic is committed by the consumer, and its acks are
    still forgotten (they would grow without end)."""
    _, ours = apps
    consumer = faust_compat.enable_batches(ours, [TOPIC])
    usage = TP("usage", 0)
    consumer.marked_topics |= {"usage"}
    consumer._acked[usage] = list(range(10))
    consumer._acked_index[usage] = set(range(10))
    assert consumer._filter_committable_offsets([usage]) == {}
    consumer.mark_accounted(usage, 4)
    assert consumer._filter_committable_offsets([usage]) == {usage: 4}
    consumer.transactional_topics |= {"usage"}
    consumer._acked[usage] = [10, 11]
    consumer._acked_index[usage] = {10, 11}
    assert consumer._filter_committable_offsets([usage]) == {}
    assert consumer._acked[usage] == []


async def test_a_marked_topic_is_sought_like_the_input_at_every_assignment(
        apps: tuple[faust.App, faust.App]) -> None:
    """Faust seeks a partition to its committed offset only when there is one
    above 0 (canary test_aiokafka_leaves_never_committed_partitions_where_the_fetcher_got_to),
    and its hand-over then skips offsets below the last one it delivered. The
    tenant topic's partitions are therefore sought like the input's (the
    committed offset, else the log start), and delivered again from there."""
    _, ours = apps
    consumer = faust_compat.enable_batches(ours, [TOPIC])
    consumer.marked_topics |= {"usage"}
    usage, changelog = TP("usage", 0), TP("changelog", 0)
    consumer.assignment = lambda: {TP(TOPIC, 0), usage, changelog}  # type: ignore[method-assign]
    sought: dict[str, set[TP]] = {}

    async def to_committed(tps: list[TP]) -> dict[TP, int]:
        sought["committed"] = set(tps)
        return dict.fromkeys(tps, 5)

    async def to_read_starts(wanted: dict[TP, None]) -> tuple[dict[TP, ReadStart], list[Any]]:
        sought["read starts"] = set(wanted)
        return {tp: ReadStart(0, 1) for tp in wanted}, []

    consumer._thread.seek_partitions_to_committed = to_committed  # type: ignore[method-assign]
    consumer._thread.seek_to_read_starts = to_read_starts  # type: ignore[method-assign]
    consumer._read_offset[usage] = 500  # delivered before the rebalance
    await consumer.perform_seek()
    assert sought == {"committed": {changelog}, "read starts": {TP(TOPIC, 0), usage}}
    assert consumer._read_offset[usage] is None
    assert consumer.read_start(TP(TOPIC, 0)) == ReadStart(0, 1) and consumer.read_start(usage) is None


async def test_enable_batches_needs_the_batch_transport(apps: tuple[faust.App, faust.App]) -> None:
    stock, _ = apps
    with pytest.raises(TypeError, match=f"{TRANSPORT_SCHEME}://"):
        faust_compat.enable_batches(stock, [TOPIC])


async def test_aiokafka_leaves_never_committed_partitions_where_the_fetcher_got_to(
        apps: tuple[faust.App, faust.App]) -> None:
    """Faust's `perform_seek` is aiokafka's `seek_to_committed`, which seeks
    only partitions with a committed offset above 0; one the group never
    committed stays wherever the fetcher left it (a worker taking over from
    one killed before its first commit sat idle on a full input). The batch
    consumer seeks every input partition itself (tests/compat/test_batch_reads.py)."""
    _, ours = apps
    consumer = ours.consumer._thread._create_worker_consumer(ours.transport)
    committed, never = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assign([committed, never])
    # The fetcher's seek, without a started fetcher (aiokafka Fetcher.seek_to).
    consumer._fetcher = SimpleNamespace(seek_to=consumer._subscription.seek)
    consumer.seek(never, 40)  # where the fetcher got to
    offsets = {committed: 12, never: None}

    async def committed_offset(tp: TopicPartition) -> int | None:
        return offsets[tp]

    consumer.committed = committed_offset
    assert await consumer.seek_to_committed() == offsets
    assert await consumer.position(committed) == 12
    assert await consumer.position(never) == 40
    consumer._fetcher = None
    await consumer.stop()


# -- InputBatchMessage --------------------------------------------------------------


def test_faust_stream_acks_past_consumer_ack(apps: tuple[faust.App, faust.App]) -> None:
    """The compiled stream iterator acks a message of an acking topic by writing
    its offset into the consumer's lists itself, never through `Consumer.ack`
    (so an override of `ack` cannot see it). A batch therefore travels under
    a topic name acks are not enabled for, and the stream leaves it alone."""
    from faust._cython.streams import StreamIterator

    stock, _ = apps
    topic = stock.topic(TOPIC)
    stock.topics._acking_topics.add(TOPIC)
    calls: list[Any] = []
    consumer = stock.consumer
    consumer.ack = calls.append  # type: ignore[method-assign]
    iterator = StreamIterator(topic.stream())

    def message(topic_name: str, offset: int) -> ConsumerMessage:
        sent = ConsumerMessage(topic_name, 0, offset, 0.0, 0, None, None, b"", None, 0, 0, tp=TP(TOPIC, 0))
        sent.refcount = 1
        return sent

    event = stock.create_event(None, b"", None, message(TOPIC, 7))
    iterator.after(event, True, None)
    assert calls == [] and consumer._acked[TP(TOPIC, 0)] == [7]

    batch = InputBatch(TOPIC, [PartitionFetch(0, [], 9, 9, 1)])
    batch_event = stock.create_event(None, batch, None, InputBatchMessage(batch, 0))
    assert batch_event.message.topic == TOPIC + BATCH_TOPIC_SUFFIX
    iterator.after(batch_event, True, None)
    assert calls == [] and consumer._acked[TP(TOPIC, 0)] == [7]


# -- tables and stores --------------------------------------------------------------


async def test_faust_chooses_a_tables_codecs_when_it_creates_it(apps: tuple[faust.App, faust.App]) -> None:
    """The changelog topic, which recovery decodes with, is made in `__init__`:
    serializers set afterwards never reach it. CodecTable picks them in time."""
    stock, _ = apps
    table = stock.Table("stock", key_type=str)
    table.key_serializer = "session_id"
    assert table.changelog_topic.key_serializer != "session_id"

    class Named(CodecTable):
        key_codec = "raw"
        value_codec = "json"

    named = Named(stock, name="named", key_type=str, value_type=None)
    assert named.changelog_topic.value_serializer == "json"


async def test_faust_memory_store_forgets_keys_by_its_partition_map(apps: tuple[faust.App, faust.App]) -> None:
    """Recovery drops the keys the map puts in partitions no longer active;
    the memory store keeps the map for the keys the agent writes."""
    stock, _ = apps
    table = stock.Table("memory", key_type=str)
    store = MemoryStore("memory://", stock, table)
    store.data.update({"kept": 1, "dropped": 2})
    memory_store_partitions(store).update({"kept": 0, "dropped": 1})
    await store.on_recovery_completed({TP("changelog", 0)}, set())
    assert store.data == {"kept": 1}


def test_faust_rocksdb_store_reads_only_the_current_events_partition(tmp_path: Path) -> None:
    """In a batch the current event is the batch's, whose partition is the
    first of the batch: Faust's `_get` would miss keys of the others."""
    pytest.importorskip("rocksdict")
    from faust.events import Event
    from faust.stores.rocksdb import Store as RocksDBStore
    from faust.streams import _current_event

    app = faust.App("canary-rocks", broker="kafka://127.0.0.1:9", autodiscover=False, datadir=str(tmp_path))
    table = app.Table("rocks", key_type=str)
    store = RocksDBStore("rocksdb://", app, table, options={"driver": "rocksdict"})
    faust_compat.rocksdb_partition_db(store, 1).put(b"key", b"value")
    faust_compat.rocksdb_partition_db(store, 0)
    message = ConsumerMessage("events", 0, 0, 0.0, 0, None, None, b"", None, 0, 0)
    event = Event(app, None, b"", None, message)
    token = _current_event.set(lambda: event)  # what the stream sets: a reference to the event
    try:
        assert store._get(b"key") is None
        assert faust_compat.rocksdb_get_any_partition(store, b"key") == b"value"
    finally:
        _current_event.reset(token)


# -- why every send is awaited -------------------------------------------------------


async def test_faust_only_logs_a_changelog_send_that_failed(apps: tuple[faust.App, faust.App]) -> None:
    """`Topic._on_published` records the failure on the message and returns:
    nothing stops the commit of the input offset. The agent awaits every send
    (agents/sender.py) and commits only once all are acknowledged."""
    stock, _ = apps
    topic = stock.topic("changelog")
    message = topic.as_future_message(key=b"k", value=b"v")
    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("broker gone"))
    topic._on_published(failed, message, stock.producer, None)
    assert isinstance(message.exception(), RuntimeError)


# -- one module ---------------------------------------------------------------------


def test_no_private_faust_mode_or_aiokafka_part_is_used_outside_the_compat_module() -> None:
    from tests.support.faust_privates import uses

    assert list(uses()) == []


async def test_a_revoked_partition_is_committed_before_its_progress_is_forgotten(
        apps: tuple[faust.App, faust.App]) -> None:
    """Faust commits inside the revocation (the app's `_on_partitions_revoked`
    waits for the agent, then commits). The accounted offsets of the revoked
    partitions must still be there then: forgotten before, the new owner
    replayed up to a commit interval (issue 20)."""
    _, ours = apps
    consumer = faust_compat.enable_batches(ours, [TOPIC])
    tp = TP(TOPIC, 3)
    consumer.mark_accounted(tp, 42)
    committable: list[dict[TP, int]] = []

    async def app_revocation(revoked: set[TP]) -> None:
        committable.append(consumer._filter_committable_offsets(list(consumer._filter_tps_with_pending_acks())))

    consumer._on_partitions_revoked = app_revocation  # type: ignore[assignment]
    await consumer.on_partitions_revoked({tp})
    assert committable == [{tp: 42}]
    assert list(consumer._filter_tps_with_pending_acks()) == []  # forgotten afterwards
