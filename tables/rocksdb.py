"""The sessions in RocksDB (rocksdict), one database per partition: Faust's
RocksDB store, written per partition and loaded in bulk (tables/changelog.py).

A restarted worker keeps its databases and their persisted offsets, so it
reads only the changelog written since; one with an empty directory loads
whole partitions in large fetches and RocksDB write batches."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import rocksdict
from faust.types import TP

from app.faust_compat import (
    AnyPartitionRocksDBStore,
    rocksdb_get_any_partition,
    rocksdb_key_index,
    rocksdb_partition_db,
)
from app.rules import decode_state
from tables.changelog import load_partitions
from tables.store import StateValue


class SessionRocksDBStore(AnyPartitionRocksDBStore):
    # -- the agent's store (tables/store.py) --------------------------------

    def get(self, session_id: str, default: Any = None) -> StateValue | None:
        value = rocksdb_get_any_partition(self, session_id.encode("utf-8"))
        return default if value is None else decode_state(value)

    def write(self, partition: int, values: Mapping[str, bytes | None]) -> None:
        self._write_raw(partition, {key.encode("utf-8"): value for key, value in values.items()})

    def items_in(self, partitions: Iterable[int]) -> Iterator[tuple[str, StateValue]]:
        for partition in partitions:
            db = rocksdb_partition_db(self, partition)
            for key, value in db.items():
                if key != self.offset_key:
                    yield key.decode("utf-8"), decode_state(value)

    def items_after(self, partitions: Iterable[int], after: bytes | None) -> Iterator[tuple[str, StateValue]]:
        # Each partition's database is sorted by key bytes: merge them.
        ordered = heapq.merge(*(self._keys_after(partition, after) for partition in sorted(set(partitions))))
        for key, value in ordered:
            yield key.decode("utf-8"), decode_state(value)

    def _keys_after(self, partition: int, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for key, value in rocksdb_partition_db(self, partition).items(from_key=after):
            if key != self.offset_key and (after is None or key > after):
                yield key, value

    # -- Faust's store ---------------------------------------------------------

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        changelog = self.table.changelog_topic.get_topic_name()
        fresh = {tp for tp in newly_assigned
                 if tp.topic == changelog and tp in self.app.assignor.assigned_actives()}
        if fresh:
            starts = {}
            for tp in fresh:
                persisted = self.persisted_offset(tp)
                starts[tp] = None if persisted is None else persisted + 1
            for tp, offset in (await load_partitions(self.table, starts, self._apply_records)).items():
                if offset >= 0:
                    self.set_persisted_offset(tp, offset)

    def _apply_records(self, partition: int, records: list[Any]) -> None:
        self._write_raw(partition, {record.key: record.value for record in records})

    def _write_raw(self, partition: int, values: Mapping[bytes, bytes | None]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        index = rocksdb_key_index(self)
        for key, value in values.items():
            if value is None:
                batch.delete(key)
                index.pop(key, None)
            else:
                batch.put(key, value)
                index[key] = partition
        rocksdb_partition_db(self, partition).write(batch)
