"""The agent reads a hole Faust left in its input and accounts it first
(agents/sessions.py, `SessionAccountant._in_order`), on the real broker.

The app is built, not started: the test hands `_in_order` the offsets Faust
would, and records what the agent accounts in place of the table writes,
which need a running Faust stream. tests/faults/test_standby_takeover.py and
test_accounting.py's transactional gateway run the same path in workers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from app.faust_app import build_app
from app.topics import ensure_topics
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import produce

pytestmark = pytest.mark.integration


def message(topic: str, offset: int, record: tuple[bytes, bytes] = (b"", b"")) -> SimpleNamespace:
    """What the agent reads of a Faust message of input partition 0."""
    key, value = record
    return SimpleNamespace(topic=topic, partition=0, offset=offset, key=key, value=value)


async def accountant_over(deployment: Deployment, records: list[tuple[bytes, bytes]], *,
                          transactional_id: str | None = None) -> tuple[Any, list[tuple[int, str]]]:
    """A built app whose input partition 0 holds `records`, and the list of
    (offset, session_id) its agent accounts, in order."""
    settings = deployment.config
    await ensure_topics(settings)
    await produce(deployment.bootstrap, settings.events_topic, records, lambda _: 0,
                  transactional_id=transactional_id)
    service = build_app(settings)
    accounted: list[tuple[int, str]] = []

    async def record(message: Any, body: Any, session_id: str | None) -> None:
        accounted.append((message.offset, session_id))

    service.accountant._apply = record  # type: ignore[method-assign]
    return service, accounted


def _records(count: int) -> list[tuple[bytes, bytes]]:
    events = [event for n in range(count // 6 + 1) for event in session_events(f"s-{n}", [10, 20, 30, 40])]
    return [(event["session_id"].encode(), orjson.dumps(event)) for event in events[:count]]


async def test_a_hole_is_read_and_accounted_in_order_before_the_event_after_it(deployment: Deployment) -> None:
    service, accounted = await accountant_over(deployment, _records(20))
    accountant, topic = service.accountant, service.settings.events_topic
    accountant.next_offset[0] = 5  # 0..4 accounted; Faust hands over 12 next
    try:
        assert await accountant._in_order(message(topic, 12))
        assert [offset for offset, _ in accounted] == list(range(5, 12))
        assert accountant.next_offset[0] == 12 and accountant.position[0] == 11
        assert accountant.metrics.input_offset_gaps._value.get() == 1
        # Decoded as Faust's messages are: the session of each event.
        assert {session_id for _, session_id in accounted} == {"s-0", "s-1"}
        # The next one and a redelivery go straight through, with no read.
        assert await accountant._in_order(message(topic, 12))
        assert await accountant._in_order(message(topic, 7))
        assert len(accounted) == 7 and accountant.metrics.input_offset_gaps._value.get() == 1
    finally:
        await accountant._stop_hole_reader(None)


async def test_a_redelivery_does_not_move_the_next_offset_back(deployment: Deployment) -> None:
    records = _records(8)
    service, accounted = await accountant_over(deployment, records)
    accountant, topic = service.accountant, service.settings.events_topic
    accountant.next_offset[0] = 6

    await accountant._account_event(message(topic, 3, records[3]))
    assert accounted == [(3, "s-0")] and accountant.next_offset[0] == 6


async def test_commit_markers_are_holes_with_nothing_in_them(deployment: Deployment) -> None:
    # One transaction per event: data at even offsets, commit markers at odd ones.
    records = _records(4)
    service, accounted = await accountant_over(deployment, records, transactional_id=f"{deployment.app_id}-tx")
    accountant, topic = service.accountant, service.settings.events_topic
    accountant.next_offset[0] = 1  # offset 0 accounted
    try:
        assert await accountant._in_order(message(topic, 2))
        assert accounted == []
        await accountant._account_event(message(topic, 2, records[1]))
        assert await accountant._in_order(message(topic, 4))
        assert [offset for offset, _ in accounted] == [2]
    finally:
        await accountant._stop_hole_reader(None)


async def test_a_hole_read_gives_up_when_a_rebalance_starts(deployment: Deployment) -> None:
    service, accounted = await accountant_over(deployment, _records(10))
    accountant, topic = service.accountant, service.settings.events_topic
    accountant.next_offset[0] = 2
    service.app.rebalancing = True  # Faust seeks to the committed offset afterwards
    try:
        assert not await accountant._in_order(message(topic, 9))
        assert accounted == [] and accountant.next_offset[0] == 2
    finally:
        await accountant._stop_hole_reader(None)


async def test_faust_commits_past_a_hole_the_agent_read(deployment: Deployment) -> None:
    records = _records(20)
    service, accounted = await accountant_over(deployment, records)
    accountant, consumer, topic = service.accountant, service.app.consumer, service.settings.events_topic
    tp = TP(topic, 0)
    consumer._committed_offset[tp] = 5
    accountant.next_offset[0] = 5
    try:
        assert await accountant._in_order(message(topic, 12))
        for offset in (12, 13, 14):  # what Faust then hands over, and acks
            await accountant._account_event(message(topic, offset, records[offset]))
            consumer._acked[tp].append(offset)
            consumer._acked_index[tp].add(offset)
        # Faust alone would not commit: its first acked offset is 7 past the committed one.
        assert consumer._filter_committable_offsets([tp]) == {tp: 15}
    finally:
        await accountant._stop_hole_reader(None)
