"""Which fetched records the agent accounts for (agents/cursors.py): the
seek-epoch guard, and the span check that refuses a fetch beginning after the
cursor."""

from __future__ import annotations

from dataclasses import dataclass

from agents.cursors import STALE, FreshRecords, Gap, InputCursors
from app.faust_compat import PartitionFetch, ReadStart


@dataclass
class Record:
    offset: int


def fetch(offsets: list[int], position: int, epoch: int = 1, partition: int = 0,
          start: int | None = None) -> PartitionFetch:
    """A fetch that began at its first record (or `start`)."""
    if start is None:
        start = offsets[0] if offsets else position
    return PartitionFetch(partition, [Record(offset) for offset in offsets], start, position, epoch)


def test_a_fetch_drained_before_the_latest_seek_is_stale() -> None:
    """The guard that fires when Faust hands over records fetched before it
    sought the partition back: accounting them would pass a hole."""
    cursors = InputCursors()
    start = ReadStart(offset=100, seek_epoch=2)
    assert cursors.fresh(fetch([150, 151], 152, epoch=1), start) is STALE
    assert cursors.fresh(fetch([150, 151], 152, epoch=1), None) is STALE


def test_fresh_fetches_follow_each_other_from_the_read_start() -> None:
    cursors = InputCursors()
    start = ReadStart(offset=100, seek_epoch=2)
    first = fetch([100, 101, 102], 103, epoch=2)
    fresh = cursors.fresh(first, start)
    assert isinstance(fresh, FreshRecords) and [r.offset for r in fresh.records] == [100, 101, 102]
    assert fresh.offsets_without_records == 0
    cursors.advance(first)
    assert cursors.offset(0, start) == 103


def test_markers_and_aborted_records_are_counted_not_accounted() -> None:
    """read_committed skips transaction markers and aborted records: their
    offsets pass without a record, and the position moves past them."""
    cursors = InputCursors()
    start = ReadStart(offset=10, seek_epoch=1)
    with_gaps = fetch([13, 14], 16, start=10)
    fresh = cursors.fresh(with_gaps, start)
    assert isinstance(fresh, FreshRecords) and len(fresh.records) == 2 and fresh.offsets_without_records == 4
    cursors.advance(with_gaps)
    only_a_marker = fetch([], 17, start=16)
    fresh = cursors.fresh(only_a_marker, start)
    assert isinstance(fresh, FreshRecords) and fresh.records == [] and fresh.offsets_without_records == 1
    cursors.advance(only_a_marker)
    assert cursors.offset(0, start) == 17


def test_records_before_the_cursor_are_not_accounted_twice() -> None:
    cursors = InputCursors()
    start = ReadStart(offset=5, seek_epoch=1)
    first = fetch([5, 6], 7)
    assert isinstance(cursors.fresh(first, start), FreshRecords)
    cursors.advance(first)
    overlapping = fetch([6, 7, 8], 9)
    fresh = cursors.fresh(overlapping, start)
    assert isinstance(fresh, FreshRecords) and [r.offset for r in fresh.records] == [7, 8]
    assert fresh.offsets_without_records == 0


def test_a_new_seek_restarts_the_cursor_and_forgetting_drops_it() -> None:
    cursors = InputCursors()
    first = fetch([0, 1], 2, epoch=1)
    assert isinstance(cursors.fresh(first, ReadStart(0, 1)), FreshRecords)
    cursors.advance(first)
    again = ReadStart(offset=1, seek_epoch=2)
    assert cursors.offset(0, again) == 1  # the old read ended with the seek
    fresh = cursors.fresh(fetch([1, 2], 3, epoch=2), again)
    assert isinstance(fresh, FreshRecords) and [r.offset for r in fresh.records] == [1, 2]
    cursors.advance(fetch([1, 2], 3, epoch=2))
    assert cursors.offset(0, again) == 3
    cursors.forget({0})
    assert cursors.offset(0, again) == 1
    assert cursors.offset(0, None) is None


def test_a_fetch_that_begins_after_the_cursor_is_refused_as_a_gap() -> None:
    """Issue 20: after an assignment, a fetch drained while the partition was
    being sought began past the committed offset (committed 14302, first
    fetch from 15095), and its records were accounted, passing 793 events
    over. The cursor now refuses it, whatever the records look like."""
    cursors = InputCursors()
    start = ReadStart(offset=14302, seek_epoch=3)
    ahead = fetch([15095, 15096], 15097, epoch=3)
    assert cursors.fresh(ahead, start) == Gap(0, 14302, 15095)
    assert cursors.offset(0, start) == 14302  # nothing passed
    # Markers alone cannot hide a gap: the span, not the first record, is checked.
    after_a_marker = fetch([], 14310, epoch=3, start=14303)
    assert cursors.fresh(after_a_marker, start) == Gap(0, 14302, 14303)
    # The fetch that does begin at the cursor is accounted whole.
    exact = fetch([14303, 14304], 14305, epoch=3, start=14302)
    fresh = cursors.fresh(exact, start)
    assert isinstance(fresh, FreshRecords) and [r.offset for r in fresh.records] == [14303, 14304]
    assert fresh.offsets_without_records == 1
