"""Shared pieces of the benchmarks: worker subprocesses, Kafka helpers, statistics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from app.broker import pick_free_loopback_port

REPO = Path(__file__).resolve().parents[1]

#: Realistic settings (the service defaults): grace 5 s, 8 partitions, 1 s commits.
WORKER_SETTINGS = {
    "ACCOUNTANT_PARTITIONS": "8",
    "ACCOUNTANT_GRACE_SECS": "5",
    "ACCOUNTANT_COMMIT_INTERVAL_SECS": "1",
    "ACCOUNTANT_SESSION_TIMEOUT_SECS": "10",
    "ACCOUNTANT_TIMER_INTERVAL_SECS": "0.5",
    "ACCOUNTANT_LOG_LEVEL": "info",
}
PARTITIONS = 8


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition aiokafka's and the Java client's default partitioner pick."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class Deployment:
    """One app id and topic prefix per benchmark, so runs never see each other's data."""

    bootstrap: str
    workdir: Path
    app_id: str = field(default_factory=lambda: unique("bench"))
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.app_id + "."

    @property
    def events_topic(self) -> str:
        return f"{self.prefix}session-events"

    @property
    def closures_topic(self) -> str:
        return f"{self.prefix}session-closures"

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-sessions-changelog"

    def env(self) -> dict[str, str]:
        return {**WORKER_SETTINGS, "ACCOUNTANT_BROKER": self.bootstrap, "ACCOUNTANT_APP_ID": self.app_id,
                "ACCOUNTANT_TOPIC_PREFIX": self.prefix, **self.settings}

    async def create_topics(self, *, changelog: bool = False) -> None:
        """The topics a worker creates at start, so data can be loaded before it runs."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=30_000)
        await admin.start()
        try:
            topics = [NewTopic(name, PARTITIONS, 1) for name in (
                self.events_topic, self.closures_topic, f"{self.prefix}session-events-rejected")]
            if changelog:
                topics.append(NewTopic(self.changelog_topic, PARTITIONS, 1,
                                       topic_configs={"cleanup.policy": "compact"}))
            await admin.create_topics(topics)
        finally:
            await admin.close()

    def worker(self, name: str = "worker", **settings: str) -> "Worker":
        return Worker(self, name, settings)


class Worker:
    """`python -m app.cli worker` as a subprocess, watched over its HTTP API."""

    def __init__(self, deployment: Deployment, name: str, settings: dict[str, str]) -> None:
        self.deployment = deployment
        self.name = name
        self.settings = settings
        self.port = pick_free_loopback_port()
        self.data_dir = deployment.workdir / deployment.app_id / name
        self.log_path = deployment.workdir / f"{deployment.app_id}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> "Worker":
        env = {**os.environ, **self.deployment.env(), **self.settings, "ACCOUNTANT_WEB_PORT": str(self.port),
               "ACCOUNTANT_DATA_DIR": str(self.data_dir)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            # BENCH_WORKER_LAUNCHER: a script to run instead, e.g. one that instruments the worker.
            launcher = os.environ.get("BENCH_WORKER_LAUNCHER")
            command = [launcher] if launcher else ["-m", "app.cli", "worker"]
            self.process = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, None

    def alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}")

    async def wait_ready(self, timeout: float = 300, interval: float = 0.1) -> float:
        """Seconds from process start to the first 200 from /readyz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                if (await asyncio.to_thread(self.get, "/readyz"))[0] == 200:
                    return time.monotonic() - self.started_at
            except OSError:
                pass
            await asyncio.sleep(interval)
        raise RuntimeError(f"worker {self.name} not ready after {timeout} s; log:\n{self.log_tail()}")

    async def stats(self) -> dict[str, Any]:
        return (await asyncio.to_thread(self.get, "/stats"))[1]

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def stop(self, timeout: float = 60) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def accounted(stats: dict[str, Any]) -> int:
    """Events that ended in applied, duplicate or rejected (SPEC §5)."""
    return stats["applied"] + stats["duplicate"] + stats["rejected_total"]


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Sum over partitions of end offset minus the group's committed offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    ends = await end_offsets(bootstrap, topic)
    done = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    return sum(end - max(done.get(partition, 0), 0) for partition, end in ends.items())


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def summary_ms(values_secs: list[float]) -> dict[str, float]:
    if not values_secs:
        return {"count": 0}
    ms = [value * 1000 for value in values_secs]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 0.50), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1), "min_ms": round(min(ms), 1)}
