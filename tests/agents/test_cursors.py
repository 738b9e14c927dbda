"""Which fetched records the agent accounts for: the seek-epoch guard (agents/cursors.py)."""

from __future__ import annotations

from dataclasses import dataclass

from agents.cursors import InputCursors
from app.faust_compat import PartitionFetch, ReadStart


@dataclass
class Record:
    offset: int


def fetch(offsets: list[int], position: int, epoch: int = 1, partition: int = 0) -> PartitionFetch:
    return PartitionFetch(partition, [Record(offset) for offset in offsets], position, epoch)


def test_a_fetch_drained_before_the_latest_seek_is_stale() -> None:
    """The guard that fires when Faust hands over records fetched before it
    sought the partition back: accounting them would pass a hole."""
    cursors = InputCursors()
    start = ReadStart(offset=100, seek_epoch=2)
    assert cursors.fresh(fetch([150, 151], 152, epoch=1), start) is None
    assert cursors.fresh(fetch([150, 151], 152, epoch=1), None) is None


def test_fresh_fetches_follow_each_other_from_the_read_start() -> None:
    cursors = InputCursors()
    start = ReadStart(offset=100, seek_epoch=2)
    first = fetch([100, 101, 102], 103, epoch=2)
    fresh = cursors.fresh(first, start)
    assert fresh is not None and [r.offset for r in fresh.records] == [100, 101, 102]
    assert fresh.offsets_without_records == 0
    cursors.advance(first)
    assert cursors.offset(0, start) == 103


def test_markers_and_aborted_records_are_counted_not_accounted() -> None:
    """read_committed skips transaction markers and aborted records: their
    offsets pass without a record, and the position moves past them."""
    cursors = InputCursors()
    start = ReadStart(offset=10, seek_epoch=1)
    with_gaps = fetch([10, 13, 14], 16)
    fresh = cursors.fresh(with_gaps, start)
    assert fresh is not None and len(fresh.records) == 3 and fresh.offsets_without_records == 3
    cursors.advance(with_gaps)
    only_a_marker = fetch([], 17)
    fresh = cursors.fresh(only_a_marker, start)
    assert fresh is not None and fresh.records == [] and fresh.offsets_without_records == 1
    cursors.advance(only_a_marker)
    assert cursors.offset(0, start) == 17


def test_records_before_the_cursor_are_not_accounted_twice() -> None:
    cursors = InputCursors()
    start = ReadStart(offset=5, seek_epoch=1)
    first = fetch([5, 6], 7)
    assert cursors.fresh(first, start) is not None
    cursors.advance(first)
    overlapping = fetch([6, 7, 8], 9)
    fresh = cursors.fresh(overlapping, start)
    assert fresh is not None and [r.offset for r in fresh.records] == [7, 8]


def test_a_new_seek_restarts_the_cursor_and_forgetting_drops_it() -> None:
    cursors = InputCursors()
    first = fetch([0, 1], 2, epoch=1)
    assert cursors.fresh(first, ReadStart(0, 1)) is not None
    cursors.advance(first)
    again = ReadStart(offset=1, seek_epoch=2)
    assert cursors.offset(0, again) is None  # the old read ended with the seek
    fresh = cursors.fresh(fetch([1, 2], 3, epoch=2), again)
    assert fresh is not None and [r.offset for r in fresh.records] == [1, 2]
    cursors.forget({0})
    assert cursors.offset(0, again) is None
