"""The per-partition deadline heaps behind TTL closes and purges (agents/scheduler.py)."""

from __future__ import annotations

from agents.scheduler import DeadlineSchedule, TtlWatermarks


def test_due_sessions_come_out_in_deadline_order_and_once() -> None:
    schedule = DeadlineSchedule()
    schedule.set(0, "late", 30)
    schedule.set(0, "early", 10)
    schedule.set(1, "other-partition", 5)
    assert schedule.pop_due(20, 0) == ["early"]
    assert schedule.pop_due(20, 0) == []
    assert schedule.pop_due(40, 0) == ["late"]
    assert len(schedule) == 1


def test_a_new_deadline_replaces_the_old_one() -> None:
    schedule = DeadlineSchedule()
    schedule.set(0, "extended", 10)
    schedule.set(0, "extended", 50)
    assert schedule.pop_due(20, 0) == []  # the stale entry is skipped
    assert schedule.pop_due(60, 0) == ["extended"]


def test_discarded_and_dropped_sessions_never_come_due() -> None:
    schedule = DeadlineSchedule()
    schedule.set(0, "deleted", 10)
    schedule.set(1, "revoked", 10)
    schedule.discard("deleted")
    schedule.drop_partitions([1])
    assert schedule.pop_due(100, 0) == [] and schedule.pop_due(100, 1) == []
    assert len(schedule) == 0


def test_a_session_moved_to_another_partition_is_due_only_there() -> None:
    schedule = DeadlineSchedule()
    schedule.set(0, "moved", 10)
    schedule.set(1, "moved", 10)
    schedule.drop_partitions([0])
    assert schedule.pop_due(20, 1) == ["moved"]


def test_ttl_closes_wait_for_the_events_that_were_there_when_due() -> None:
    """The first tick notes the stable end; sessions due by then close once
    every event up to it is accounted, not when the partition is drained."""
    marks = TtlWatermarks()
    assert marks.due_time(0, accounted=100, stable_end=150, now=1_000) is None  # 50 events still waiting
    assert marks.due_time(0, accounted=140, stable_end=400, now=2_000) is None  # the mark stays at 150
    assert marks.due_time(0, accounted=150, stable_end=900, now=3_000) == 1_000  # reached: due as of the mark
    assert marks.due_time(0, accounted=150, stable_end=900, now=4_000) is None  # a new mark at 900


def test_sustained_input_never_starves_ttl_closes() -> None:
    """A worker at 80 % of its throughput: events always wait in the
    partition, so it is never caught up at a tick (the old rule never closed
    anything there), yet every mark is reached a tick or two after it was
    taken."""
    marks = TtlWatermarks()
    accounted, end, closes = 0, 1_000, 0
    for tick in range(100):
        if marks.due_time(0, accounted, end, now=tick) is not None:
            closes += 1
        assert accounted < end  # never caught up
        end += 800  # a tick's new input
        accounted = min(accounted + 1_000, end - 50)  # a tick's batches; some always still waiting
    assert closes >= 20
    assert marks.due_time(1, None, 10, now=0) is None and marks.due_time(1, 10, None, now=0) is None


def test_forgotten_partitions_start_a_new_mark() -> None:
    marks = TtlWatermarks()
    assert marks.due_time(0, accounted=0, stable_end=10, now=1) is None
    marks.forget([0])
    assert marks.due_time(0, accounted=10, stable_end=10, now=5) == 5
