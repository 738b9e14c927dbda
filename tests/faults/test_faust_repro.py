"""Minimal reproductions of the Faust 0.15.3 behaviour behind the input holes
the fault suite found, and of the work-around in agents/sessions.py.

The standby fault test (test_standby_takeover.py) saw a worker that took over
a killed worker's partitions account events past a hole in the input: one
offset in some runs, ~1,300 per partition (330 sessions without a closure)
in others, about one run in six, with app/faust_fixes.py's seek fix in place.
Two Faust behaviours make such a hole permanent:

* the drain loop drops a refetched message below its read offset, which a
  batch handed over around a seek can raise (app/faust_fixes.py), and
* the commit then passes the hole: `Consumer._new_offset` checks for a hole
  at the head of the acked offsets only when a committed offset is known and
  non-zero, so a partition nothing was committed for yet (or committed at 0)
  is committed up to the end of the first acked run, wherever it starts.

The second is deterministic, so it is reproduced here without a broker; the
commit clamp of the work-around (`SessionAccountant._clamp_commits`) is
checked the same way. Its other half, the agent reading a hole itself and
accounting it first (`_in_order`), is tested on the broker in
tests/integration/test_input_holes.py.
"""

from __future__ import annotations

import pytest
from faust.types import TP

from app.faust_app import build_app
from app.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = TP("session-events", 0)


@pytest.fixture
def service(tmp_path):
    # No broker is contacted: the app is built, never started.
    return build_app(Settings(broker="127.0.0.1:1", data_dir=str(tmp_path)))


def _acked(consumer, tp: TP, offsets: range) -> None:
    consumer._acked[tp] = list(offsets)
    consumer._acked_index[tp] = set(offsets)


@pytest.mark.parametrize("committed", [None, 0])
def test_faust_commits_past_a_hole_at_the_head_when_nothing_or_zero_was_committed(service, committed) -> None:
    consumer = service.app.consumer
    consumer._committed_offset[EVENTS] = committed
    _acked(consumer, EVENTS, range(160, 171))  # offsets 1..159 were never acked
    # Faust's own computation, without the work-around.
    offset = type(consumer)._new_offset(consumer, EVENTS)
    assert offset == 171, "Faust no longer commits past a head hole; the commit clamp may be dropped"


def test_faust_guards_the_head_once_a_nonzero_offset_is_committed(service) -> None:
    consumer = service.app.consumer
    consumer._committed_offset[EVENTS] = 100
    _acked(consumer, EVENTS, range(160, 171))
    assert type(consumer)._new_offset(consumer, EVENTS) is None


def test_commits_never_pass_the_next_offset_the_agent_needs(service) -> None:
    consumer = service.app.consumer
    accountant = service.accountant
    tp = TP(service.settings.events_topic, 0)
    consumer._committed_offset[tp] = None
    _acked(consumer, tp, range(160, 171))
    accountant.next_offset[0] = 1  # the agent accounted for offset 0 only
    assert consumer._filter_committable_offsets([tp]) == {tp: 1}


def test_commits_are_left_alone_without_a_hole(service) -> None:
    consumer = service.app.consumer
    accountant = service.accountant
    tp = TP(service.settings.events_topic, 0)
    consumer._committed_offset[tp] = 50
    _acked(consumer, tp, range(51, 61))
    accountant.next_offset[0] = 61
    assert consumer._filter_committable_offsets([tp]) == {tp: 61}
