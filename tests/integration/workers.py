"""Real workers as subprocesses, and Kafka helpers to drive and observe them.

Workers run as `python -m app.cli worker` so a test can SIGKILL one: an
in-process Faust app cannot be crashed, and it runs at-least-once only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.dev.kafka import pick_free_loopback_port
from app.rules import format_timestamp
from app.settings import Settings
from app.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]

#: Settings that make a worker quick to test: short grace, frequent commits,
#: a killed worker evicted after a few seconds.
FAST_SETTINGS = {
    "ACCOUNTANT_PARTITIONS": "4",
    "ACCOUNTANT_GRACE_SECS": "1",
    "ACCOUNTANT_COMMIT_INTERVAL_SECS": "0.5",
    "ACCOUNTANT_SESSION_TIMEOUT_SECS": "6",
    "ACCOUNTANT_TIMER_INTERVAL_SECS": "0.2",
    "ACCOUNTANT_LOG_LEVEL": "info",
}


@dataclass
class Deployment:
    """Names shared by the workers of one test: one app id, one topic prefix."""

    bootstrap: str
    app_id: str
    topic_prefix: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Settings:
        """The settings the workers of this deployment run with (topic names and all)."""
        return Settings(**{key.removeprefix("ACCOUNTANT_").lower(): value for key, value in self.env().items()})

    @property
    def events_topic(self) -> str:
        return self.config.events_topic

    @property
    def closures_topic(self) -> str:
        return self.config.closures_topic

    @property
    def rejected_topic(self) -> str:
        return self.config.rejected_topic

    @property
    def changelog_topic(self) -> str:
        return self.config.changelog_topic

    def env(self) -> dict[str, str]:
        return {
            **FAST_SETTINGS,
            "ACCOUNTANT_BROKER": self.bootstrap,
            "ACCOUNTANT_APP_ID": self.app_id,
            "ACCOUNTANT_TOPIC_PREFIX": self.topic_prefix,
            **self.settings,
        }

    def worker(self, name: str = "worker") -> "WorkerProcess":
        return WorkerProcess(self, name)

    def create_topics(self) -> None:
        """What a worker does at start; for tests that produce before any worker runs."""
        asyncio.run(ensure_topics(self.config))


class WorkerProcess:
    def __init__(self, deployment: Deployment, name: str) -> None:
        self.deployment = deployment
        self.name = name
        self.port = pick_free_loopback_port()
        self.data_dir = deployment.workdir / name
        self.log_path = deployment.workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WorkerProcess":
        env = {**os.environ, **self.deployment.env(), "ACCOUNTANT_WEB_PORT": str(self.port),
               "ACCOUNTANT_DATA_DIR": str(self.data_dir)}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=REPO, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 90) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready after {timeout} s; log:\n{self.log_tail()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, _maybe_json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _maybe_json(error.read())

    def stop(self, timeout: float = 60) -> None:
        """Graceful stop, as on a deploy: SIGTERM, then wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to flush or commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _maybe_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


# -- events ------------------------------------------------------------------


def now_rfc3339(offset_secs: float = 0.0) -> str:
    return format_timestamp(time.time_ns() // 1000 + int(offset_secs * 1_000_000))


def event(kind: str, session_id: str, n: int, tenant_id: str = "tenant-a", **fields: Any) -> dict[str, Any]:
    """A gateway event with the common fields filled in."""
    return {"event_id": f"{session_id}-{n}", "type": kind, "session_id": session_id, "tenant_id": tenant_id,
            "occurred_at": fields.pop("occurred_at", None) or now_rfc3339(), **fields}


def session_events(session_id: str, rounds: Iterable[int], *, ttl_secs: int = 60, initial: int = 100,
                   close: bool = True, tenant_id: str = "tenant-a") -> list[dict[str, Any]]:
    """created, activated, one round per delta, and closed."""
    events = [event("session.created", session_id, 0, tenant_id, provider_id="prov", model="model-x",
                    ttl_secs=ttl_secs, metadata={"team": "t1"}),
              event("session.activated", session_id, 1, tenant_id, initial_token_count=initial)]
    for number, delta in enumerate(rounds, start=1):
        events.append(event("round.completed", session_id, 1 + number, tenant_id, round=number,
                            delta_token_count=delta))
    if close:
        events.append(event("session.closed", session_id, len(events), tenant_id, reason="done"))
    return events


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                  partition_of: Callable[[bytes], int] | None = None, *, transactional_id: str | None = None) -> None:
    """Publish `records`; with `transactional_id`, each in a transaction of its own (a
    commit marker then follows every record, taking an offset of its own)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                transactional_id=transactional_id)
    await producer.start()
    try:
        futures = []
        for key, value in records:
            partition = None if partition_of is None or key is None else partition_of(key)
            if transactional_id is None:
                futures.append(await producer.send(topic, value, key=key, partition=partition))
            else:
                async with producer.transaction():
                    await producer.send_and_wait(topic, value, key=key, partition=partition)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]], *,
                   transactional_id: str | None = None) -> None:
    asyncio.run(produce(bootstrap, topic, ((e["session_id"].encode(), orjson.dumps(e)) for e in events),
                        transactional_id=transactional_id))


async def _consume(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


def committed_offsets(deployment: Deployment, topic: str) -> dict[int, int]:
    """The deployment's consumer group's committed offsets in `topic`, by partition."""

    async def read() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(deployment.app_id)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}

    return asyncio.run(read())


def end_offsets(bootstrap: str, topic: str, partition_count: int) -> dict[int, int]:
    """The end offset of every partition of `topic`, by partition."""

    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(partition_count)]
            return {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def consume(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 60) -> list[Any]:
    """Read `topic` from the start until `done(records)` or the timeout."""
    return asyncio.run(_consume(bootstrap, topic, done, timeout))


def consume_json(bootstrap: str, topic: str, done: Callable[[list[dict]], bool], timeout: float = 60) -> list[dict]:
    values: list[dict] = []

    def parsed_done(records: list[Any]) -> bool:
        values[:] = [orjson.loads(record.value) for record in records]
        return done(values)

    consume(bootstrap, topic, parsed_done, timeout)
    return values


def latest_sessions(bootstrap: str, changelog_topic: str, done: Callable[[dict], bool],
                    timeout: float = 60) -> dict[str, Any]:
    """The table as its changelog tells it: session_id -> stored value (None once deleted)."""
    table: dict[str, Any] = {}

    def fold(records: list[Any]) -> bool:
        table.clear()
        for record in records:
            table[record.key.decode()] = None if record.value is None else orjson.loads(record.value)
        return done(table)

    consume(bootstrap, changelog_topic, fold, timeout)
    return table
