"""The sessions in a dict: Faust's memory store, loaded in bulk (tables/changelog.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP

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

    # -- the agent's store (tables/store.py) --------------------------------

    def get(self, session_id: str, default: Any = None) -> StateValue | None:
        return self.data.get(session_id, default)

    def write(self, partition: int, changes: Mapping[str, StateValue | None]) -> None:
        data = self.data
        partitions = memory_store_partitions(self)
        for session_id, state in changes.items():
            if state is None:
                data.pop(session_id, None)
                partitions.pop(session_id, None)
            else:
                data[session_id] = state
                partitions[session_id] = partition

    def items_in(self, partitions: Iterable[int]) -> Iterator[tuple[str, StateValue]]:
        wanted = set(partitions)
        data = self.data
        for session_id, partition in list(memory_store_partitions(self).items()):
            if partition in wanted and session_id in data:
                yield session_id, data[session_id]

    # -- Faust's store ---------------------------------------------------------

    def persisted_offset(self, tp: TP) -> int | None:
        return self._complete.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if tp in self._complete and offset > self._complete[tp]:
            self._complete[tp] = offset

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            self.set_persisted_offset(event.message.tp, event.message.offset)

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        changelog = self.table.changelog_topic.get_topic_name()
        actives = {tp for tp in self.app.assignor.assigned_actives() if tp.topic == changelog}
        for tp in set(self._complete) - actives:
            del self._complete[tp]
        missing = actives - self._complete.keys()
        if missing:
            self._complete.update(await load_partitions(self.app, dict.fromkeys(missing), self._apply_records))

    def _apply_records(self, partition: int, records: list[Any]) -> None:
        changes: dict[str, StateValue | None] = {}
        for record in records:
            changes[record.key.decode("utf-8")] = None if record.value is None else decode_state(record.value)
        self.write(partition, changes)
