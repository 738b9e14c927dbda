"""The order in which the tenant agent writes, and what it commits, with no
broker: the real tenant agent of an app built in-process, its real memory
store, and stand-ins that record every step.

at_least_once: alerts acknowledged, then the tenant's changelog record, then
the store, then the delta's offset marked for the consumer to commit;
a failed write marks nothing, so the delta is read again.
exactly_once: alerts and changelog record in the repartition partition's
transaction, committed with the next delta offset, and only then stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.tenants import TenantAccountant
from app.rules.usage import Budget, UsageDelta, UsageEntry, UsageStep, period_of
from app.service import build_app
from app.settings import load_settings
from tests.support.clock import now_micros
from tests.support.recording import RecordingConsumer, RecordingSender, RecordingTransactions, record_steps

TENANT = "acme"


def tenant_agent(tmp_path: Path, guarantee: str) -> tuple[TenantAccountant, list[str], RecordingConsumer,
                                                          RecordingSender, list[Exception]]:
    settings = load_settings(broker="127.0.0.1:9", app_id="tenant-steps", partitions=1, data_dir=str(tmp_path),
                             processing_guarantee=guarantee)
    agent = build_app(settings).tenants
    steps: list[str] = []
    store_state = agent.store_state

    def recorded_store(partition: int, tenant_id: str, encoded: bytes | None) -> None:
        steps.append("store written")
        store_state(partition, tenant_id, encoded)

    agent.store_state = recorded_store  # type: ignore[method-assign]
    consumer, sender = record_steps(agent, steps)
    now = now_micros()
    budget = Budget(100, (0.5, 1.0), period_of(now), now)
    agent.budget_of = lambda tenant_id: budget
    stopped: list[Exception] = []
    agent._stop_on = stopped.append
    return agent, steps, consumer, sender, stopped


def delta(tokens: int, offset: int, delta_id: str) -> UsageDelta:
    """One round of `tokens` in an open session, made by input offset `offset` of partition 0."""
    return UsageDelta(TENANT, 0, (UsageEntry(UsageStep(TENANT, 0, tokens), offset, now_micros()),), delta_id)


def alerts_sent(sender: RecordingSender, alerts_topic: str) -> list[str]:
    return [orjson.loads(record.value)["alert_id"] for send in sender.sends for record in send
            if record.topic == alerts_topic]


async def test_at_least_once_acknowledges_alerts_then_changelog_then_stores_then_marks(tmp_path: Path) -> None:
    agent, steps, _consumer, sender, _ = tenant_agent(tmp_path, "at_least_once")
    await agent._apply([(0, 7, delta(60, 3, "d1"))])
    assert steps == ["acknowledged outputs", "acknowledged changelog", "store written", "accounted 8"]
    assert alerts_sent(sender, agent.settings.alerts_topic) == [f"{TENANT}:{period_of(now_micros())}:0.5"]
    state = agent.get(TENANT)
    assert state is not None and state.open_tokens == 60 and state.read_through == 7


async def test_at_least_once_a_failed_write_marks_nothing_and_stores_nothing(tmp_path: Path) -> None:
    agent, steps, consumer, sender, _ = tenant_agent(tmp_path, "at_least_once")

    async def refused(records: list[Any]) -> list[Any]:
        raise RuntimeError("broker refused")

    sender.send_all = refused  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await agent._apply([(0, 7, delta(60, 3, "d1"))])
    assert steps == [] and consumer.accounted == {} and agent.get(TENANT) is None


async def test_exactly_once_commits_alerts_state_and_offset_together_then_stores(tmp_path: Path) -> None:
    agent, steps, _consumer, sender, _ = tenant_agent(tmp_path, "exactly_once")
    transactions = agent.transactions
    assert isinstance(transactions, RecordingTransactions)
    await agent._apply([(0, 7, delta(60, 3, "d1")), (0, 8, delta(50, 4, "d2"))])
    # One send: both alerts and the state, in partition 0's transaction.
    assert steps[:2] == ["acknowledged changelog+outputs", "committed transactions [0]"]
    assert steps[2:] == ["store written", "accounted 9"]
    assert transactions.committed == [{0: 9}]
    period = period_of(now_micros())
    assert alerts_sent(sender, agent.settings.alerts_topic) == [f"{TENANT}:{period}:0.5", f"{TENANT}:{period}:1.0"]
    # The same deltas read again (a crash before the consumer committed): nothing new is sent.
    await agent._apply([(0, 7, delta(60, 3, "d1")), (0, 8, delta(50, 4, "d2"))])
    assert len(alerts_sent(sender, agent.settings.alerts_topic)) == 2


async def test_exactly_once_skips_deltas_of_a_partition_it_does_not_own(tmp_path: Path) -> None:
    agent, _steps, consumer, sender, _ = tenant_agent(tmp_path, "exactly_once")
    assert isinstance(agent.transactions, RecordingTransactions)
    agent.transactions.fenced = set()  # partition 0 went to another worker in a rebalance
    await agent._apply([(0, 7, delta(60, 3, "d1"))])
    assert sender.sends == [] and agent.get(TENANT) is None and consumer.accounted == {}
