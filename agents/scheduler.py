"""Deadlines of the sessions a worker owns, per partition, in min-heaps.

The TTL timer asks for what is due instead of scanning the table, so a tick
costs O(k log n) for k due sessions. Entries are replaced lazily: setting a new
deadline pushes a new heap entry and the old one is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass


class DeadlineSchedule:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._deadline: dict[str, tuple[int, int]] = {}  # session_id -> (partition, due_at)

    def __len__(self) -> int:
        return len(self._deadline)

    def set(self, partition: int, session_id: str, due_at: int) -> None:
        if self._deadline.get(session_id) == (partition, due_at):
            return
        self._deadline[session_id] = (partition, due_at)
        heapq.heappush(self._heaps.setdefault(partition, []), (due_at, session_id))

    def discard(self, session_id: str) -> None:
        self._deadline.pop(session_id, None)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for partition in partitions:
            for _, session_id in self._heaps.pop(partition, ()):
                if self._deadline.get(session_id, (None,))[0] == partition:
                    del self._deadline[session_id]

    def pop_due(self, now: int, partition: int) -> list[str]:
        """Remove and return the sessions of `partition` due at or before `now`."""
        heap = self._heaps.get(partition)
        due: list[str] = []
        while heap and heap[0][0] <= now:
            due_at, session_id = heapq.heappop(heap)
            if self._deadline.get(session_id) == (partition, due_at):
                del self._deadline[session_id]
                due.append(session_id)
        return due


@dataclass(frozen=True, slots=True)
class TtlMark:
    """A partition's stable end as a tick past due time saw it, and when."""

    stable_end: int
    noted_at: int


class TtlWatermarks:
    """When a partition's sessions may be closed by TTL.

    Events still waiting before a partition's end may belong to a due
    session, and closing it first would reject them. The first tick notes
    the partition's stable end and the time; sessions due by that time are
    closed once every event up to that end is accounted. Events after it
    came later than the deadline. A partition whose input never stops
    reaches the mark within a batch or two, so its TTL closes never starve
    (the previous rule waited for the partition to be fully caught up, which
    sustained input never allowed: issue 20)."""

    def __init__(self) -> None:
        self._marks: dict[int, TtlMark] = {}

    def due_time(self, partition: int, accounted: int | None, stable_end: int | None, now: int) -> int | None:
        """The time up to which the partition's sessions may be closed now, or None."""
        if accounted is None or stable_end is None:
            return None
        mark = self._marks.get(partition)
        if mark is None:
            mark = self._marks[partition] = TtlMark(stable_end, now)
        if accounted < mark.stable_end:
            return None
        del self._marks[partition]
        return mark.noted_at

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._marks.pop(partition, None)
