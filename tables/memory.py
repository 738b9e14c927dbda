"""The sessions in a dict of changelog bytes: Faust's memory store, loaded in
bulk (tables/changelog.py).

Values are kept encoded, exactly as in the changelog, and decoded when read:
a decoded session takes about 1 KiB of objects, its bytes a fifth of that,
and the agent decodes a session once per batch that touches it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP
from sortedcontainers import SortedList

from app.faust_compat import memory_store_partitions
from app.rules import decode_state
from tables.changelog import load_partitions
from tables.store import StateValue


class SessionMemoryStore(MemoryStore):
    """`_complete` holds, per active changelog partition, the offset up to
    which the dict holds every record of it. Only partitions that stayed
    active since their bulk load are in it: standby data in a memory store is
    partial (Faust drops it when recovery completes) and never counts as
    complete, so a partition that comes back is loaded again in full."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._complete: dict[TP, int] = {}
        #: Every stored session id as UTF-8, sorted: pages read it in order.
        self._ids: SortedList = SortedList()

    # -- the agent's store (tables/store.py) --------------------------------

    def get(self, session_id: str, default: Any = None) -> StateValue | None:
        value = self.data.get(session_id)
        return default if value is None else decode_state(value)

    def write(self, partition: int, values: Mapping[str, bytes | None]) -> None:
        new_ids, gone_ids = self._put(partition, values)
        ids = self._ids
        ids.update(new_ids)
        for gone in gone_ids:
            ids.discard(gone)

    def _put(self, partition: int, values: Mapping[str, bytes | None]) -> tuple[list[bytes], list[bytes]]:
        """Store the values; the ids (UTF-8) they added and removed."""
        data = self.data
        partitions = memory_store_partitions(self)
        new_ids, gone_ids = [], []
        for session_id, value in values.items():
            if value is None:
                if data.pop(session_id, None) is not None:
                    gone_ids.append(session_id.encode("utf-8"))
                partitions.pop(session_id, None)
            else:
                if session_id not in data:
                    new_ids.append(session_id.encode("utf-8"))
                data[session_id] = value
                partitions[session_id] = partition
        return new_ids, gone_ids

    def items_in(self, partitions: Iterable[int]) -> Iterator[tuple[str, StateValue]]:
        wanted = set(partitions)
        data = self.data
        for session_id, partition in list(memory_store_partitions(self).items()):
            value = data.get(session_id)
            if partition in wanted and value is not None:
                yield session_id, decode_state(value)

    def items_after(self, partitions: Iterable[int], after: bytes | None) -> Iterator[tuple[str, StateValue]]:
        wanted = set(partitions)
        data = self.data
        partition_of = memory_store_partitions(self)
        ids = self._ids
        start = 0 if after is None else ids.bisect_right(after)
        for encoded in ids.islice(start):
            session_id = encoded.decode("utf-8")
            value = data.get(session_id)
            if value is not None and partition_of.get(session_id) in wanted:
                yield session_id, decode_state(value)

    # -- Faust's store ---------------------------------------------------------

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Faust drops the keys of partitions no longer active from the dict;
        the sorted ids follow."""
        await super().on_recovery_completed(active_tps, standby_tps)
        if len(self._ids) != len(self.data):
            self._sort_ids()

    def persisted_offset(self, tp: TP) -> int | None:
        return self._complete.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if tp in self._complete and offset > self._complete[tp]:
            self._complete[tp] = offset

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        """Faust's replay of what was written since a bulk load, and of standby
        partitions: kept as bytes, like everything else here."""
        for event in batch:
            message = event.message
            self.write(message.partition, {message.key.decode("utf-8"): message.value})
            self.set_persisted_offset(message.tp, message.offset)

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        changelog = self.table.changelog_topic.get_topic_name()
        actives = {tp for tp in self.app.assignor.assigned_actives() if tp.topic == changelog}
        for tp in set(self._complete) - actives:
            del self._complete[tp]
        missing = actives - self._complete.keys()
        if missing:
            self._complete.update(await load_partitions(self.table, dict.fromkeys(missing), self._apply_records))
            self._sort_ids()

    def _sort_ids(self) -> None:
        """The ids anew, sorted at once (1M in about 0.5 s): a bulk load adds
        them unsorted, which SortedList would take about 4 s to merge."""
        self._ids = SortedList(session_id.encode("utf-8") for session_id in self.data)

    def _apply_records(self, partition: int, records: list[Any]) -> None:
        self._put(partition, {record.key.decode("utf-8"): record.value for record in records})
