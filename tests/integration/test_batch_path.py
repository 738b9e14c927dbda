"""What the batch path promises, on the real broker: aborted transactions are
not accounted, transaction markers hold nothing back, and a send that fails
is never committed past."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.rules import parse_timestamp
from tests.integration.test_accounting import wait_for_closures
from tests.support.deployment import Deployment
from tests.support.events import event, session_events

pytestmark = pytest.mark.integration

#: Every event of these tests goes to one input partition, so the markers and
#: the idle sessions share it.
PARTITION = 0


async def _in_transaction(producer: AIOKafkaProducer, topic: str, events: list[dict], *, commit: bool) -> None:
    await producer.begin_transaction()
    for item in events:
        await producer.send_and_wait(topic, orjson.dumps(item), key=item["session_id"].encode(),
                                     partition=PARTITION)
    if commit:
        await producer.commit_transaction()
    else:
        await producer.abort_transaction()


def test_aborted_transactions_are_not_accounted_and_a_trailing_marker_holds_no_ttl_close(
        deployment: Deployment) -> None:
    """SPEC §2: the input is read read_committed. The abort marker is the last
    offset of the partition: the worker must still see it is caught up and
    close both idle sessions by TTL on time (SPEC §5.6)."""
    deployment.worker().start().wait_ready()
    committed = session_events("s-tx-kept", [10, 20], ttl_secs=3, close=False)
    idle = session_events("s-tx-idle", [5], ttl_secs=3, close=False)
    aborted = [event("round.completed", "s-tx-kept", 9, round=3, delta_token_count=1_000_000),
               event("session.closed", "s-tx-idle", 9)]

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all",
                                    transactional_id=f"{deployment.app_id}-gateway")
        await producer.start()
        try:
            await _in_transaction(producer, deployment.events_topic, committed + idle, commit=True)
            await _in_transaction(producer, deployment.events_topic, aborted, commit=False)
        finally:
            await producer.stop()

    asyncio.run(publish())
    grace = 1_000_000  # FAST_SETTINGS
    closures = wait_for_closures(deployment, {"s-tx-kept", "s-tx-idle"}, timeout=30)
    received = time.time_ns() // 1000
    kept, idle_closure = closures["s-tx-kept"][0], closures["s-tx-idle"][0]
    assert kept["reason"] == idle_closure["reason"] == "ttl_expired"
    assert kept["total_token_count"] == 130 and kept["record"]["round_count"] == 2
    assert idle_closure["total_token_count"] == 105
    latest_expiry = max(parse_timestamp(events[0]["occurred_at"]) + 3_000_000 for events in (committed, idle))
    assert received - (latest_expiry + grace) <= 2_000_000, "TTL closures held back by the trailing marker"


def test_a_send_that_fails_is_never_committed_past(deployment: Deployment) -> None:
    """The closures topic refuses every closure (its max.message.bytes is too
    small): the worker stops with a clear log line, the input offset of the
    close event is not committed, and once the topic is mended a restart
    publishes the exact closure."""
    async def create_closures_topic(max_bytes: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(deployment.closures_topic, 4, 1,
                                                topic_configs={"max.message.bytes": str(max_bytes)})])
        finally:
            await admin.close()

    async def mend_closures_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, deployment.closures_topic,
                                                      configs={"max.message.bytes": "1048588"})])
        finally:
            await admin.close()

    asyncio.run(create_closures_topic(100))
    worker = deployment.worker().start().wait_ready()
    events = session_events("s-refused", [10, 20], initial=100)
    produce_from = _produce_to_partition(deployment, events)
    close_offset = produce_from + len(events) - 1

    assert worker.process is not None
    deadline = time.monotonic() + 60
    while worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.process.returncode not in (None, 0), "the worker did not stop on a send that failed"
    log = worker.log_path.read_text()
    assert "stopping the worker" in log and "not delivered" in log
    assert deployment.committed_offsets(deployment.events_topic).get(PARTITION, 0) <= close_offset

    asyncio.run(mend_closures_topic())
    deployment.worker("restarted").start().wait_ready()
    closure = wait_for_closures(deployment, {"s-refused"})["s-refused"][0]
    assert closure["reason"] == "closed" and closure["total_token_count"] == 130


def _produce_to_partition(deployment: Deployment, events: list[dict]) -> int:
    """Publish the events to PARTITION; the offset of the first."""
    async def publish() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all")
        await producer.start()
        try:
            offsets = [(await producer.send_and_wait(deployment.events_topic, orjson.dumps(item),
                                                     key=item["session_id"].encode(), partition=PARTITION)).offset
                       for item in events]
        finally:
            await producer.stop()
        return offsets[0]

    return asyncio.run(publish())
