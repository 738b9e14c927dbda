"""Session states written in an open transaction, held apart from the store.

Under exactly_once the store takes a partition's writes only once the
partition's transaction has committed: the store (memory, or RocksDB that
outlives the process) then never holds state that Kafka might still abort,
and recovery after a crash starts from committed state only. Until then the
agent reads its own uncommitted writes through this overlay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tables.store import SessionStore


@dataclass(slots=True)
class PartitionWrites:
    #: session id -> (the decoded state for reads, the changelog bytes for the store)
    states: dict[str, tuple[Any, bytes | None]] = field(default_factory=dict)
    #: The last changelog offset written in the transaction.
    changelog_offset: int = -1


class UncommittedStates:
    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._writes: dict[int, PartitionWrites] = {}
        self._partition_of: dict[str, int] = {}

    def get(self, session_id: str) -> Any:
        partition = self._partition_of.get(session_id)
        if partition is not None:
            return self._writes[partition].states[session_id][0]
        return self._store.get(session_id)

    def put(self, partition: int, session_id: str, state: Any, encoded: bytes | None) -> None:
        self._writes.setdefault(partition, PartitionWrites()).states[session_id] = (state, encoded)
        self._partition_of[session_id] = partition

    def written_to(self, partition: int, changelog_offset: int) -> None:
        writes = self._writes.setdefault(partition, PartitionWrites())
        writes.changelog_offset = max(writes.changelog_offset, changelog_offset)

    def committed(self, partition: int) -> PartitionWrites | None:
        """The partition's transaction committed: its writes, to store now."""
        writes = self._writes.pop(partition, None)
        if writes is not None:
            for session_id in writes.states:
                del self._partition_of[session_id]
        return writes

    def forget(self, partitions: set[int]) -> None:
        """Drop what the partitions' transactions wrote (never committed)."""
        for partition in partitions:
            self.committed(partition)
