"""The per-partition deadline heaps behind TTL closes and purges (agents/scheduler.py)."""

from __future__ import annotations

from agents.scheduler import DeadlineSchedule


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
