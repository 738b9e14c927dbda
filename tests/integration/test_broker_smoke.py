"""The real broker the integration suite stands on, checked with plain aiokafka:
keyed records over several partitions, a classic consumer group with a
client-side assignor (what Faust needs), and the LocalKafka launcher's
restart and die-with-parent behaviour."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import TopicPartition

from app.dev.kafka import LocalKafka, create_topics
from tests.support import REPO

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    """Send keyed records in order with acks=all; return each one's partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, value=value, key=key)).partition for key, value in records]
    finally:
        await producer.stop()


async def _read(
    bootstrap: str, topic: str, partitions: int, count: int, timeout: float = 30
) -> list[ConsumerRecord]:
    """Read ``count`` records from the start of every partition (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, partition) for partition in range(partitions)])
        return await _collect([consumer], count, timeout)
    finally:
        await consumer.stop()


async def _collect(consumers: list[AIOKafkaConsumer], count: int, timeout: float) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records in {timeout}s"
        for consumer in consumers:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    return records


async def test_keyed_records_round_trip_through_three_partitions(kafka_bootstrap, unique_name):
    topic = unique_name("smoke")
    await create_topics(kafka_bootstrap, {topic: 3})
    sent = [(f"session-{i % 12}".encode(), f"event-{i}".encode()) for i in range(60)]

    partitions = await _produce(kafka_bootstrap, topic, sent)
    received = await _read(kafka_bootstrap, topic, partitions=3, count=len(sent))

    assert set(partitions) == {0, 1, 2}, "12 keys should spread over all 3 partitions"
    assert sorted((r.key, r.value, r.partition) for r in received) == sorted(
        (key, value, partition) for (key, value), partition in zip(sent, partitions, strict=True)
    )
    # One key -> one partition, and that partition keeps the key's send order.
    values_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for record in sorted(received, key=lambda r: (r.partition, r.offset)):
        values_by_key[record.key].append(record.value)
    assert values_by_key == {key: [v for k, v in sent if k == key] for key, _ in sent}


async def test_classic_consumer_group_with_client_side_assignor(kafka_bootstrap, unique_name):
    """Faust joins with the classic protocol and assigns partitions itself;
    Kafka 4 must still serve that, and accept a 3 s session timeout
    (group.min.session.timeout.ms is lowered for tests)."""
    topic, group = unique_name("group-smoke"), unique_name("group")
    await create_topics(kafka_bootstrap, {topic: 3})
    members = [
        AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=3000,
            heartbeat_interval_ms=500,
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
        )
        for _ in range(2)
    ]
    for member in members:
        await member.start()
    try:
        # Once the rebalance settles, each member owns a disjoint share of the three partitions.
        deadline = time.monotonic() + 30
        while True:
            first, second = (member.assignment() for member in members)
            all_partitions = {TopicPartition(topic, p) for p in range(3)}
            if first and second and not first & second and first | second == all_partitions:
                break
            assert time.monotonic() < deadline, f"group never split the partitions: {first}, {second}"
            await asyncio.gather(*(member.getmany(timeout_ms=200) for member in members))

        sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(12)]
        await _produce(kafka_bootstrap, topic, sent)
        received = await _collect(members, len(sent), timeout=30)
        assert sorted((r.key, r.value) for r in received) == sorted(sent)

        for member in members:
            await member.commit()
        committed = [await member.committed(tp) or 0 for member in members for tp in member.assignment()]
        assert sum(committed) == len(sent)
    finally:
        for member in members:
            await member.stop()


async def test_local_kafka_restarts_on_the_same_port_with_its_data(tmp_path, unique_name):
    kafka = LocalKafka(workdir=tmp_path / "kafka")
    try:
        kafka.start()
        bootstrap = kafka.bootstrap
        topic = unique_name("restart")
        await _produce(bootstrap, topic, [(b"k", b"before-stop")])

        kafka.stop()
        assert not kafka.is_running()
        kafka.start()
        assert kafka.bootstrap == bootstrap
        await _produce(bootstrap, topic, [(b"k", b"before-kill")])

        kafka.kill()  # a crash: acked records are still on disk
        kafka.start()
        assert kafka.bootstrap == bootstrap
        records = await _read(bootstrap, topic, partitions=1, count=2)
        assert [r.value for r in records] == [b"before-stop", b"before-kill"]
    finally:
        kafka.close()


def test_local_kafka_dies_with_the_process_that_started_it(tmp_path):
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from app.dev.kafka import LocalKafka\n"
            "kafka = LocalKafka(workdir=__import__('pathlib').Path(sys.argv[1])).start()\n"
            "print(kafka.process.pid, flush=True)\n"
            "time.sleep(600)\n",
            str(tmp_path / "kafka"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    java_pid = None
    try:
        java_pid = int(starter.stdout.readline())  # the starter prints once the broker is ready
        assert _is_alive(java_pid)
        starter.kill()  # no atexit, no cleanup: only PR_SET_PDEATHSIG can stop the broker now
        starter.wait()
        deadline = time.monotonic() + 10
        while _is_alive(java_pid):
            assert time.monotonic() < deadline, "broker outlived the process that started it"
            time.sleep(0.1)
    finally:
        starter.kill()
        starter.wait()
        if java_pid is not None and _is_alive(java_pid):
            os.kill(java_pid, signal.SIGKILL)


def _is_alive(pid: int) -> bool:
    """True while the process runs; a zombie (dead, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
