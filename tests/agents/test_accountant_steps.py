"""The order in which the agent writes a batch, and what it commits, with no
broker: the real agent of an app built in-process, its real memory store,
and stand-ins for the consumer and the producers that record every step.

at_least_once: closures and rejections acknowledged, then the changelog
acknowledged, then the store, then the offset marked accounted.
exactly_once: outputs and changelog in the partition's transaction, the
store only once that transaction committed, and the offset committed in it.
A fetch that does not begin at the cursor is refused and the partition is
read again from the cursor, with nothing marked accounted past it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import TP

from agents.accountant import SESSIONS_BETWEEN_YIELDS, SessionAccountant
from app.faust_compat import InputBatch, InputGap, PartitionFetch
from app.service import build_app
from app.settings import load_settings
from tests.support.events import session_events
from tests.support.recording import RecordingConsumer, RecordingSender, RecordingTransactions, record_steps

TOPIC = "session-events"


@dataclass
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def lifecycle(session_id: str) -> list[ConsumerRecord]:
    """created, activated (100), one round (20), closed: offsets 0-3 of partition 0."""
    return [ConsumerRecord(TOPIC, 0, offset, session_id.encode(), orjson.dumps(body))
            for offset, body in enumerate(session_events(session_id, [20], initial=100))]


def accountant(tmp_path: Path, guarantee: str) -> tuple[SessionAccountant, list[str], RecordingConsumer, Any]:
    settings = load_settings(broker="127.0.0.1:9", app_id="steps", partitions=1, data_dir=str(tmp_path),
                             processing_guarantee=guarantee)
    agent = build_app(settings).accountant
    steps: list[str] = []
    store = agent.store
    write = store.write

    def recorded_write(partition: int, values: Any) -> None:
        steps.append("store written")
        write(partition, values)

    store.write = recorded_write  # type: ignore[method-assign]
    consumer, _ = record_steps(agent, steps)
    agent._scheduled_partitions = {0}
    return agent, steps, consumer, store


def batch(records: list[ConsumerRecord], start: int | None = None, epoch: int = 1) -> InputBatch:
    first = records[0].offset if start is None else start
    return InputBatch(TOPIC, [PartitionFetch(0, records, first, records[-1].offset + 1, epoch)])


async def test_at_least_once_acknowledges_outputs_then_changelog_then_stores_then_marks(tmp_path: Path) -> None:
    agent, steps, _, store = accountant(tmp_path, "at_least_once")
    await agent._account_batch(batch(lifecycle("s-1")))
    assert steps == ["acknowledged outputs", "acknowledged changelog", "store written", "accounted 4"]
    closed = store.get("s-1")
    assert closed is not None and closed.record.total_token_count == 120


async def test_exactly_once_stores_only_what_its_transaction_committed(tmp_path: Path) -> None:
    agent, steps, consumer, store = accountant(tmp_path, "exactly_once")
    await agent._account_batch(batch(lifecycle("s-1")))
    # Outputs and changelog in one transaction (one round trip), nothing stored yet.
    assert steps == ["acknowledged changelog+outputs", "accounted 4"]
    assert store.get("s-1") is None
    assert agent.states.get("s-1").record.total_token_count == 120  # the agent reads its own writes
    transactions = agent.transactions
    assert isinstance(transactions, RecordingTransactions)
    await agent._commit(transactions.pending())
    assert steps[-2:] == ["committed transactions [0]", "store written"]
    assert transactions.committed == [{0: 4}]  # the input offset commits in the transaction
    stored = store.get("s-1")
    assert stored is not None and stored.record.total_token_count == 120
    assert consumer.last_commit_at is not None


async def test_a_failed_commit_leaves_the_store_untouched(tmp_path: Path) -> None:
    agent, steps, _, store = accountant(tmp_path, "exactly_once")
    await agent._account_batch(batch(lifecycle("s-1")))
    transactions = agent.transactions
    assert isinstance(transactions, RecordingTransactions)

    async def fenced(partitions: list[int]) -> None:
        raise RuntimeError("ProducerFenced")

    transactions.commit = fenced  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await agent._commit([0])
    assert store.get("s-1") is None and "store written" not in steps


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_batchs_usage_delta_goes_with_its_outputs(tmp_path: Path, guarantee: str) -> None:
    """One delta per (tenant, input partition) and batch, keyed by the tenant,
    sent with the closures: before the changelog (at_least_once) or in the
    partition's transaction (exactly_once); each step carries its event's offset."""
    agent, _, _, _ = accountant(tmp_path, guarantee)
    await agent._account_batch(batch(lifecycle("s-1")))
    sender = agent.sender
    assert isinstance(sender, RecordingSender)
    usage_topic = agent.settings.usage_topic
    first_send = sender.sends[0]
    deltas = [orjson.loads(record.value) for record in first_send if record.topic == usage_topic]
    assert [record.key for record in first_send if record.topic == usage_topic] == [b"tenant-a"]
    assert len(deltas) == 1 and deltas[0]["source_partition"] == 0
    entries = deltas[0]["entries"]
    # [offset, occurred_at, open sessions, open tokens, closed month, closed tokens, reason]
    assert [entry[0] for entry in entries] == [0, 1, 2, 3]
    assert sum(entry[2] for entry in entries) == 0 and sum(entry[3] for entry in entries) == 0
    assert [(entry[5], entry[6]) for entry in entries if entry[4] is not None] == [(120, "closed")]
    if guarantee == "at_least_once":
        assert all(record.topic != agent.table.changelog_topic.get_topic_name() for record in first_send)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_fetch_past_the_cursor_is_refused_and_read_again(tmp_path: Path, guarantee: str) -> None:
    agent, steps, consumer, store = accountant(tmp_path, guarantee)
    records = lifecycle("s-2")
    await agent._account_batch(batch(records[:2]))  # offsets 0-1: the cursor is at 2
    steps.clear()
    await agent._account_batch(batch(records[3:]))  # begins at 3: offset 2 reached no one
    assert consumer.reseeks == [(0, 2)]
    assert steps == []  # nothing applied, sent or marked
    assert agent.metrics.refused_fetches._value.get() == 1
    # Read again from the cursor (a new seek epoch): the whole rest is accounted.
    await agent._account_batch(batch(records[2:], epoch=consumer.start.seek_epoch))
    assert consumer.accounted[0] == 4
    if agent.transactions is not None:
        await agent._commit([0])
    closed = store.get("s-2")
    assert closed is not None and closed.record.total_token_count == 120 and closed.close_reason is not None


async def test_an_input_gap_is_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent, _, consumer, _ = accountant(tmp_path, "at_least_once")
    consumer.gaps.append(InputGap(TOPIC, 0, expected=100, log_start=130))
    await agent._account_batch(batch(lifecycle("s-3")))
    assert agent.metrics.input_gaps._value.get() == 1
    assert agent.metrics.input_gap_offsets._value.get() == 30
    assert any(r.levelname == "ERROR" and "offsets 100 to 129" in r.getMessage() for r in caplog.records)



async def test_the_pass_over_a_new_partitions_sessions_lets_the_event_loop_run(tmp_path: Path) -> None:
    """At an assignment the agent looks at every stored session of the new
    partitions once (deadlines, open counts): a million took 4.8 s of one
    loop turn, with the probes and the dashboard unanswered. It now lets the
    loop run between slices, and still tracks every session."""
    agent, _, _, _ = accountant(tmp_path, "at_least_once")
    sessions = SESSIONS_BETWEEN_YIELDS * 5 // 2
    created = [ConsumerRecord(TOPIC, 0, offset, f"s-{offset}".encode(),
                              orjson.dumps(session_events(f"s-{offset}", [])[0])) for offset in range(sessions)]
    await agent._account_batch(batch(created))
    turns = 0
    passing = True

    async def other_work() -> None:
        nonlocal turns
        while passing:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    turns = 0
    await agent._schedule_partitions({0})
    passing = False
    await other
    assert turns >= sessions // SESSIONS_BETWEEN_YIELDS
    assert len(agent.schedule) == sessions and agent.open_sessions[0] == sessions


async def test_a_revocation_during_the_pass_waits_for_it(tmp_path: Path) -> None:
    """The pass lets the loop run, so a revocation can arrive in the middle:
    it waits for the pass (the agent's lock), then drops the partition's
    tracking whole. It used to drop it midway, and the pass then failed on
    the missing count, leaving the other new partitions untracked."""
    agent, _, _, _ = accountant(tmp_path, "at_least_once")
    sessions = SESSIONS_BETWEEN_YIELDS * 2
    created = [ConsumerRecord(TOPIC, 0, offset, f"s-{offset}".encode(),
                              orjson.dumps(session_events(f"s-{offset}", [])[0])) for offset in range(sessions)]
    await agent._account_batch(batch(created))

    async def schedule() -> None:
        async with agent._lock:  # as `_on_recovered` runs it
            await agent._schedule_partitions({0})

    passing = asyncio.create_task(schedule())
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # inside the pass, at its first yield
    await agent._on_revoked(None, {TP(TOPIC, 0)})
    await passing  # no error
    assert len(agent.schedule) == 0 and 0 not in agent.open_sessions and not agent._scheduled_partitions
