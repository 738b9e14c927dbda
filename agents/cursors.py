"""Where the agent is in each input partition, and which fetched records are new.

The consumer (app/faust_compat.py) seeks a partition to its committed offset
whenever it is assigned, and records that `ReadStart`; every fetch carries
the seek epoch it was drained in and the consumer's position after it. A
fetch drained before the latest seek of its partition is stale: the seek
moved the consumer back, and those records come again. Within one epoch the
fetches of a partition follow each other without gaps, except for offsets
that hold no event the agent may see: transaction markers, records of
aborted transactions (read_committed), or a log start moved by retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.faust_compat import PartitionFetch as Fetch
from app.faust_compat import ReadStart as Start


@dataclass(slots=True)
class Cursor:
    seek_epoch: int
    #: The next offset to account for.
    offset: int


@dataclass(frozen=True, slots=True)
class FreshRecords:
    """The records of a fetch the agent has not accounted for yet."""

    records: Sequence[Any]
    #: Offsets passed over without a record (markers, aborted transactions).
    offsets_without_records: int


class InputCursors:
    def __init__(self) -> None:
        self._cursors: dict[int, Cursor] = {}

    def fresh(self, fetch: Fetch, start: Start | None) -> FreshRecords | None:
        """The records of `fetch` to account for, or None if the fetch is stale
        (drained before the partition's latest seek, or before it has one)."""
        if start is None or fetch.seek_epoch != start.seek_epoch:
            return None
        cursor = self._cursors.get(fetch.partition)
        if cursor is None or cursor.seek_epoch != start.seek_epoch:
            cursor = self._cursors[fetch.partition] = Cursor(start.seek_epoch, start.offset)
        records = fetch.records
        if records and records[0].offset < cursor.offset:
            records = [record for record in records if record.offset >= cursor.offset]
        return FreshRecords(records, max(fetch.position - cursor.offset - len(records), 0))

    def advance(self, fetch: Fetch) -> None:
        """Everything of the fetch's partition before its position is accounted."""
        cursor = self._cursors[fetch.partition]
        cursor.offset = max(cursor.offset, fetch.position)

    def offset(self, partition: int, start: Start | None) -> int | None:
        """The next offset to account for in the partition's current read
        (the one `start` began), None before its first fresh fetch."""
        cursor = self._cursors.get(partition)
        if cursor is None or start is None or cursor.seek_epoch != start.seek_epoch:
            return None
        return cursor.offset

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._cursors.pop(partition, None)
