"""The `sessions` table: session_id -> `rules.Session`, backed by a changelog.

Keys are UTF-8 session ids and values are the orjson form of `Session`, so the
changelog is readable with any Kafka tool and recovery rebuilds exactly the
objects the agent wrote.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.serializers import codecs
from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from app.partition_reader import plain_consumer, read_ranges
from app.rules import Session, decode_state, encode_state
from app.settings import Settings

KEY_CODEC = "session_id"
VALUE_CODEC = "session"


class SessionIdCodec(codecs.Codec):
    """session_id <-> UTF-8 bytes (Faust's raw codec would give bytes back)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)

    def _loads(self, data: bytes) -> str:
        return data.decode("utf-8")


class SessionCodec(codecs.Codec):
    """`Session` <-> orjson bytes."""

    def _dumps(self, obj: Session) -> bytes:
        return encode_state(obj)

    def _loads(self, data: bytes) -> Session:
        return decode_state(data)


codecs.register(KEY_CODEC, SessionIdCodec())
codecs.register(VALUE_CODEC, SessionCodec())


log = logging.getLogger(__name__)

#: Bytes per fetch when loading a changelog partition in bulk.
_BULK_FETCH_BYTES = 32 * 1024 * 1024


class SessionMemoryStore(MemoryStore):
    """Faust's memory store, loading newly assigned partitions in bulk.

    Faust replays a changelog record by record through its consumer path,
    about 150 us a record here: 1,000,000 sessions took 193 s to recover
    (docs/benchmarks.md). This store reads a newly assigned active changelog
    partition itself, with a plain aiokafka consumer in large batches, when
    the assignment arrives (`on_rebalance`, before Faust's recovery looks at
    offsets), and then reports the offset it holds the partition up to as
    its persisted offset, so Faust's recovery only reads what was written
    since. Faust's memory store reports none, and so it also replayed every
    kept partition from the start at every rebalance.

    `_complete` holds, per active changelog partition, the offset up to
    which the dict holds every record of it. Only partitions that stayed
    active since their bulk load are in it: a partition's standby data is
    partial (the memory store drops it when recovery completes) and never
    counts as complete.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._complete: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._complete.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        # Faust calls this on commit for the changelog records this worker
        # wrote and acknowledged; the dict has held them since the write.
        if tp in self._complete and offset > self._complete[tp]:
            self._complete[tp] = offset

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            tp = event.message.tp
            if tp in self._complete and event.message.offset > self._complete[tp]:
                self._complete[tp] = event.message.offset

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        changelog = self.table.changelog_topic_name
        actives = {tp for tp in self.app.assignor.assigned_actives() if tp.topic == changelog}
        for tp in set(self._complete) - actives:
            del self._complete[tp]
        missing = actives - self._complete.keys()
        if missing:
            await self._load(missing)

    async def _load(self, changelog_tps: set[TP]) -> None:
        started = time.monotonic()
        tps = [TopicPartition(tp.topic, tp.partition) for tp in changelog_tps]
        consumer = plain_consumer(self.app, fetch_max_bytes=_BULK_FETCH_BYTES,
                                  max_partition_fetch_bytes=_BULK_FETCH_BYTES)
        await consumer.start()
        try:
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            records = 0
            async for tp, batch in read_ranges(consumer, {tp: (starts[tp], ends[tp]) for tp in tps}):
                self._apply_records(tp.partition, batch)
                records += len(batch)
        finally:
            await consumer.stop()
        for tp in tps:
            # What Faust's recovery calls an offset: the last record held (-1: none).
            self._complete[TP(tp.topic, tp.partition)] = ends[tp] - 1
        log.info("loaded changelog partitions %s: %d records in %.1f s", sorted(tp.partition for tp in tps),
                 records, time.monotonic() - started)

    def _apply_records(self, partition: int, records: list[Any]) -> None:
        data = self.data
        key_partition = self._key_partition
        for record in records:
            key = record.key.decode("utf-8")
            if record.value is None:
                data.pop(key, None)
                key_partition.pop(key, None)
            else:
                data[key] = decode_state(record.value)
                key_partition[key] = partition


#: The memory store above, by the URL scheme Faust looks stores up with.
MEMORY_STORE_SCHEME = "sessions-memory"
STORES.aliases[MEMORY_STORE_SCHEME] = f"{__name__}:SessionMemoryStore"


def store_url(settings: Settings) -> str:
    return "rocksdb://" if settings.store == "rocksdb" else f"{MEMORY_STORE_SCHEME}://"


class SessionTable(faust.Table):
    """A Table whose keys and values use the codecs above.

    Faust derives a table's serializers from its key and value *model* types
    in `__init__`, and creates the changelog topic (which recovery decodes
    with) right then; so the codecs must be chosen here, not set afterwards.
    """

    def _serializer_from_type(self, typ: Any) -> str:
        return KEY_CODEC if typ is str else VALUE_CODEC


def define_sessions_table(app: faust.App, settings: Settings) -> faust.Table:
    """The table; its partitions follow the input topic's (one changelog per source partition)."""
    options = {"driver": "rocksdict"} if settings.store == "rocksdb" else None
    table = SessionTable(
        app,
        name=settings.table_name,
        default=None,
        key_type=str,
        value_type=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        store=store_url(settings),
        options=options,
        help="Live sessions and closed ones within retention, by session_id.",
    )
    return app.tables.add(table)
