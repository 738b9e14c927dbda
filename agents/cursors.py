"""Where the agent is in each input partition, and which fetched records are new.

The consumer (app/faust_compat.py) seeks a partition whenever it is assigned,
and records that `ReadStart` in the same step as the seek; every fetch
carries the seek epoch it was drained in and the exact span of offsets it
covers (`start` up to `position`). A fetch is then one of:

- stale: drained before the latest seek of its partition; the seek moved
  the consumer back, and those records come again;
- a gap: it begins after the cursor, so offsets between them were read by
  no one the agent knows of; it is refused, and the partition is read
  again from the cursor (never committed past);
- fresh: it begins at or before the cursor; records before the cursor were
  accounted already, and offsets of the span without a record hold no event
  the agent may see (transaction markers, aborted transactions).
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


@dataclass(frozen=True, slots=True)
class Stale:
    """A fetch drained before the partition's latest seek."""


@dataclass(frozen=True, slots=True)
class Gap:
    """A fetch that begins after the cursor: offsets `expected` up to
    `fetch_start` reached no one."""

    partition: int
    expected: int
    fetch_start: int


STALE = Stale()


class InputCursors:
    def __init__(self) -> None:
        self._cursors: dict[int, Cursor] = {}

    def fresh(self, fetch: Fetch, start: Start | None) -> FreshRecords | Stale | Gap:
        """What of `fetch` to account for."""
        if start is None or fetch.seek_epoch != start.seek_epoch:
            return STALE
        cursor = self._cursors.get(fetch.partition)
        if cursor is None or cursor.seek_epoch != start.seek_epoch:
            cursor = self._cursors[fetch.partition] = Cursor(start.seek_epoch, start.offset)
        if fetch.start > cursor.offset:
            return Gap(fetch.partition, cursor.offset, fetch.start)
        records = fetch.records
        if fetch.start < cursor.offset and records and records[0].offset < cursor.offset:
            records = [record for record in records if record.offset >= cursor.offset]
        spanned = fetch.position - max(fetch.start, cursor.offset)
        return FreshRecords(records, max(spanned - len(records), 0))

    def advance(self, fetch: Fetch) -> None:
        """Everything of the fetch's partition before its position is accounted."""
        cursor = self._cursors[fetch.partition]
        cursor.offset = max(cursor.offset, fetch.position)

    def offset(self, partition: int, start: Start | None) -> int | None:
        """The next offset to account for in the partition's current read
        (the one `start` began): the read start before its first fresh fetch."""
        if start is None:
            return None
        cursor = self._cursors.get(partition)
        if cursor is None or cursor.seek_epoch != start.seek_epoch:
            return start.offset
        return cursor.offset

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._cursors.pop(partition, None)
