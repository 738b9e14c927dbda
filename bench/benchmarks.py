"""The five benchmarks of issue 6. Each takes a `Scale` and returns a dict of figures."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.dev.partitioners import partition_for
from app.dev.processes import pick_free_loopback_port
from app.rules import SECOND, Session, SessionRecord, decode_state, encode_state, parse_timestamp
from bench.common import (
    PARTITIONS,
    new_deployment,
    new_worker,
    summary_ms,
    wait_ready_secs,
    worker_rss,
    worker_stats,
)
from bench.loadgen import TENANTS, bulk_produce, lifecycle, throughput_load
from bench.peer_env import peer_python
from tests.support import REPO
from tests.support.clock import now_rfc3339
from tests.support.deployment import Deployment
from tests.support.kafka import group_lag
from tests.support.workers import WorkerProcess, accounted

GRACE_SECS = 5.0


@dataclass(frozen=True)
class Scale:
    """How big each benchmark is; `quick()` is the --quick run."""

    sessions: int = 50_000
    events_per_session: int = 20
    floor_events: int = 200_000
    latency_rate: int = 5_000
    latency_secs: float = 60.0
    sustainable_rate: int = 1_000
    sustainable_secs: float = 30.0
    ttl_sessions: int = 10_000
    ttl_spread_secs: int = 50
    recovery_sessions: int = 1_000_000

    @property
    def events(self) -> int:
        return self.sessions * self.events_per_session

    @classmethod
    def quick(cls) -> Scale:
        return cls(sessions=5_000, events_per_session=20, floor_events=50_000, latency_secs=10.0,
                   sustainable_secs=10.0, ttl_sessions=1_000, ttl_spread_secs=5, recovery_sessions=50_000)


@dataclass
class Context:
    bootstrap: str
    workdir: Path
    scale: Scale
    log: Callable[[str], None]

    def deployment(self, **settings: str) -> Deployment:
        return new_deployment(self.bootstrap, self.workdir, **settings)


def _cpu_secs(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _subprocess_json(*args: str, timeout: float, python: Path | str = sys.executable) -> dict:
    process = await asyncio.create_subprocess_exec(python, *args, cwd=REPO, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{args[:2]} did not finish in {timeout} s") from None
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{args[:2]} printed no result (exit {process.returncode}):\n"
                           f"{err.decode(errors='replace')[-3000:]}")
    return orjson.loads(lines[-1])


# --------------------------------------------------------------------------
# 1. Throughput


async def throughput(ctx: Context) -> dict[str, Any]:
    scale = ctx.scale
    deployment = ctx.deployment()
    await deployment.create_topics_async()
    ctx.log(f"throughput: loading {scale.events:,} events over {scale.sessions:,} sessions")
    loaded, load_secs = await bulk_produce(deployment.bootstrap, deployment.events_topic,
                                           throughput_load(scale.sessions, scale.events_per_session))
    result: dict[str, Any] = {"events": loaded, "sessions": scale.sessions,
                              "load_events_per_sec": round(loaded / load_secs)}

    ctx.log("throughput: baseline (plain aiokafka loop)")
    result["baseline"] = await _subprocess_json(
        "-m", "bench.baseline", deployment.bootstrap, deployment.events_topic, f"{deployment.topic_prefix}baseline-out",
        str(loaded), timeout=600)

    ctx.log("throughput: peer (Quix Streams)")
    result["peer"] = await _subprocess_json(
        "-m", "bench.peer_quix", deployment.bootstrap, deployment.events_topic,
        f"{deployment.topic_prefix}peer-out", str(loaded), str(ctx.workdir / "peer-state"), timeout=900,
        python=peer_python(ctx.log))

    ctx.log("throughput: peer (Quix Streams), exactly-once")
    result["peer_exactly_once"] = await _subprocess_json(
        "-m", "bench.peer_quix", deployment.bootstrap, deployment.events_topic,
        f"{deployment.topic_prefix}peer-eos-out", str(loaded), str(ctx.workdir / "peer-eos-state"), "exactly-once",
        timeout=900, python=peer_python(ctx.log))

    floor_events = min(scale.floor_events, loaded)
    ctx.log(f"throughput: Faust floor (counting agent, first {floor_events:,} events)")
    result["faust_floor"] = await _subprocess_json(
        "-m", "bench.floor", deployment.bootstrap, deployment.events_topic, str(floor_events),
        str(pick_free_loopback_port()), str(ctx.workdir / "floor"), timeout=600)

    for guarantee, key in (("at_least_once", "worker"), ("exactly_once", "worker_exactly_once")):
        ctx.log(f"throughput: worker, {guarantee}")
        result[key] = await _worker_throughput(deployment.with_group(f"{deployment.app_id}-{guarantee}"),
                                               loaded, guarantee)
    worker_result = result["worker"]
    for name in ("baseline", "peer", "peer_exactly_once", "faust_floor"):
        if "events" in result[name]:
            result[name]["cpu_us_per_event"] = round(result[name]["cpu_secs"] / result[name]["events"] * 1e6, 1)
    result["ratio_to_baseline"] = round(worker_result["events_per_sec"] / result["baseline"]["events_per_sec"], 3)
    if "events_per_sec" in result["peer"]:
        result["ratio_to_peer"] = round(worker_result["events_per_sec"] / result["peer"]["events_per_sec"], 3)
    result["ratio_to_faust_floor"] = round(
        worker_result["events_per_sec"] / result["faust_floor"]["events_per_sec"], 3)
    eos = result["worker_exactly_once"]["events_per_sec"]
    result["exactly_once_ratio_to_at_least_once"] = round(eos / worker_result["events_per_sec"], 3)
    result["exactly_once_ratio_to_baseline"] = round(eos / result["baseline"]["events_per_sec"], 3)
    if "events_per_sec" in result["peer_exactly_once"]:
        result["exactly_once_ratio_to_peer_exactly_once"] = round(
            eos / result["peer_exactly_once"]["events_per_sec"], 3)
    return result


Sample = tuple[float, int, float]


async def drain_samples(worker: WorkerProcess, process: psutil.Process, loaded: int,
                        timeout: float) -> tuple[Sample, Sample, dict[str, Any]]:
    """/stats every 0.25 s while the worker accounts a loaded input: (time,
    events accounted, CPU seconds) at the first poll showing progress and at
    the one showing all `loaded` events, and that poll's stats."""
    first = last = None
    count = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check_alive()
        stats = await worker_stats(worker)
        now, count, cpu = time.monotonic(), accounted(stats), _cpu_secs(process)
        if count and first is None:
            first = (now, count, cpu)
        if count >= loaded:
            last = (now, count, cpu)
            break
        await asyncio.sleep(0.25)
    if first is None or last is None:
        raise RuntimeError(f"{worker.name} accounted {count} of {loaded} events in {timeout:.0f} s")
    return first, last, stats


async def _worker_throughput(deployment: Deployment, loaded: int, guarantee: str) -> dict[str, Any]:
    """One worker of a fresh group accounts the whole loaded input."""
    worker = new_worker(deployment, ACCOUNTANT_PROCESSING_GUARANTEE=guarantee).start()
    process = psutil.Process(worker.pid)
    ready_secs = await wait_ready_secs(worker)
    first, last, stats = await drain_samples(worker, process, loaded, timeout=1800)
    lag_deadline = time.monotonic() + 120
    lag = None
    while time.monotonic() < lag_deadline:
        lag = await group_lag(deployment.bootstrap, deployment.app_id, deployment.events_topic)
        if lag == 0:
            break
        await asyncio.sleep(0.5)
    seconds = last[0] - first[0]
    events = last[1] - first[1]
    worker_result = {
        "guarantee": guarantee,
        "events_per_sec": round(events / seconds),
        "seconds": round(seconds, 2),
        "cpu_secs": round(last[2] - first[2], 2),
        "cpu_us_per_event": round((last[2] - first[2]) / events * 1e6, 1),
        "ready_secs": round(ready_secs, 2),
        "lag_zero_after_secs": round(time.monotonic() - first[0], 2) if lag == 0 else None,
        "final_lag": lag,
        "stats": {key: stats[key] for key in ("applied", "duplicate", "rejected_total", "closures")},
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
    }
    worker.stop()
    return worker_result


# --------------------------------------------------------------------------
# Observing the outputs


class Observer:
    """Reads the closures topic and the changelog as they are written; stamps each arrival."""

    def __init__(self, bootstrap: str, deployment: Deployment) -> None:
        self.bootstrap = bootstrap
        self.deployment = deployment
        #: session_id -> (receive time, closure, CreateTime)
        self.closures: dict[str, tuple[float, dict, float]] = {}
        #: session_id -> (last_offset, receive time, CreateTime) of each changelog
        #: record of it, in arrival order. The agent writes one record per
        #: changed session per batch: an event is in the first record whose
        #: last_offset reaches its offset. CreateTime is when the worker's
        #: producer took the record.
        self.changelog: dict[str, list[tuple[int, float, float]]] = {}
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # read_committed, as billing reads: under exactly_once a closure
        # counts as arrived when its transaction commits.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                    isolation_level="read_committed")
        await consumer.start()
        tps = [TopicPartition(topic, p) for topic in (self.deployment.closures_topic, self.deployment.changelog_topic)
               for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        closures_topic = self.deployment.closures_topic
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            received = time.time()
            for tp, messages in batch.items():
                if tp.topic == closures_topic:
                    for message in messages:
                        session_id = message.key.decode()
                        if session_id not in self.closures:
                            self.closures[session_id] = (received, orjson.loads(message.value),
                                                         message.timestamp / 1000)
                else:
                    for message in messages:
                        if message.value is None:
                            continue
                        state = decode_state(message.value)
                        self.changelog.setdefault(message.key.decode(), []).append(
                            (state.last_offset, received, message.timestamp / 1000))

    def record_seen(self, session_id: str, offset: int) -> tuple[float, float] | None:
        """(receive time, CreateTime) of the first changelog record holding the
        session's event at `offset`."""
        for last_offset, received, written in self.changelog.get(session_id, ()):
            if last_offset >= offset:
                return received, written
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


# --------------------------------------------------------------------------
# 2. Latency at a fixed rate


async def latency_and_ttl(ctx: Context, guarantee: str = "at_least_once",
                          ttl_load_rate: int | None = None) -> dict[str, Any]:
    """Benchmarks 2 and 3 share one worker: TTL closures first (on an idle
    worker), then latency at a rate the worker sustains, then at the target
    rate, then (with `ttl_load_rate`) TTL closures again while events flow
    at that rate. Each phase starts once the worker has accounted everything
    before it, so a backlog of one does not show up in the next."""
    deployment = ctx.deployment(ACCOUNTANT_PROCESSING_GUARANTEE=guarantee)
    await deployment.create_topics_async()
    worker = new_worker(deployment).start()
    await wait_ready_secs(worker)
    observer = Observer(ctx.bootstrap, deployment)
    await observer.start()
    scale = ctx.scale
    produced = 0
    # The observer stamps each arrival: its own collector's pauses (65-85 ms
    # full passes over what it has stored) would be counted as the worker's.
    gc.disable()
    try:
        ttl_result = await _ttl(ctx, deployment, worker, observer)
        produced += 2 * scale.ttl_sessions
        await _caught_up(worker, produced)
        sustainable = await _latency(ctx, deployment, worker, observer, scale.sustainable_rate,
                                     scale.sustainable_secs, "lowrate")
        produced += sustainable.pop("sent")
        await _caught_up(worker, produced)
        latency_result = await _latency(ctx, deployment, worker, observer, scale.latency_rate, scale.latency_secs,
                                        "lat")
        produced += latency_result.pop("sent")
        results = {"guarantee": guarantee, "ttl": ttl_result, "latency_sustainable": sustainable,
                   "latency": latency_result}
        if ttl_load_rate is not None:
            await _caught_up(worker, produced)
            results["ttl_under_load"] = await _ttl_under_load(ctx, deployment, worker, observer, ttl_load_rate)
    finally:
        gc.enable()
        await observer.stop()
        worker.stop()
    return results


async def _ttl_under_load(ctx: Context, deployment: Deployment, worker: WorkerProcess, observer: Observer,
                          rate: int) -> dict[str, Any]:
    """TTL closure lag while the worker accounts `rate` events/s without pause:
    a partition with more input always waiting must still close its idle
    sessions on time (issue 20: they never closed)."""
    duration = ctx.scale.ttl_spread_secs + GRACE_SECS + 15
    ctx.log(f"ttl under load: {rate:,} events/s for {duration:.0f} s")
    stats_at_start = await worker_stats(worker)
    started = time.monotonic()
    pacer = asyncio.create_task(_subprocess_json(
        "-m", "bench.pacer", deployment.bootstrap, deployment.events_topic, str(rate), str(duration), "load", "0",
        timeout=duration + 120))
    await asyncio.sleep(3.0)  # the load is flowing before the idle sessions start
    ttl_result = await _ttl(ctx, deployment, worker, observer, prefix="ttlload")
    paced = await pacer
    stats = await worker_stats(worker)
    return {**ttl_result, "rate": rate, "achieved_rate": paced["achieved_rate"],
            "worker_events_per_sec": round((accounted(stats) - accounted(stats_at_start))
                                           / (time.monotonic() - started), 0)}


async def _caught_up(worker: WorkerProcess, produced: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accounted(await worker_stats(worker)) >= produced:
            return
        await asyncio.sleep(0.25)


async def _latency(ctx: Context, deployment: Deployment, worker: WorkerProcess, observer: Observer, rate: int,
                   duration: float, prefix: str) -> dict[str, Any]:
    warmup = 2.0
    ctx.log(f"latency: {rate:,} events/s for {duration:.0f} s")
    stats_at_start = await worker_stats(worker)
    started = time.monotonic()
    paced = await _subprocess_json("-m", "bench.pacer", deployment.bootstrap, deployment.events_topic, str(rate),
                                   str(duration), prefix, str(warmup), timeout=duration + 120)
    sent = [(partition, offset, session_id, when) for partition, offset, session_id, when, _ in paced["sent"]]
    closed_sent_at = {session_id: when for _, _, session_id, when, closing in paced["sent"] if closing}
    # Let the tail arrive (a saturated worker leaves a backlog: what is still
    # missing after this is counted as `missing`).
    deadline = time.monotonic() + min(10.0, duration)
    while time.monotonic() < deadline:
        if all(observer.record_seen(session_id, offset) for _, offset, session_id, _ in sent) \
                and all(s in observer.closures for s in closed_sent_at):
            break
        await asyncio.sleep(0.2)
    seen = [(when, observer.record_seen(session_id, offset)) for _, offset, session_id, when in sent]
    record_latency = [arrival[0] - when for when, arrival in seen if arrival is not None]
    written_latency = [arrival[1] - when for when, arrival in seen if arrival is not None]
    closures = [(observer.closures[s], when) for s, when in closed_sent_at.items() if s in observer.closures]
    closure_latency = [closure[0] - when for closure, when in closures]
    closure_written_latency = [closure[2] - when for closure, when in closures]
    stats_before = stats_at_start
    stats = await worker_stats(worker)
    return {
        "sent": paced["count"],
        "worker_events_per_sec": round((accounted(stats) - accounted(stats_before))
                                       / (time.monotonic() - started), 0),
        "rate": rate,
        "achieved_rate": paced["achieved_rate"],
        "seconds": duration,
        "warmup_secs": warmup,
        "record": {**summary_ms(record_latency), "missing": len(sent) - len(record_latency)},
        "closure": {**summary_ms(closure_latency), "missing": len(closed_sent_at) - len(closure_latency)},
        # Send time to the changelog record's CreateTime (stamped by the
        # worker's producer, millisecond resolution): the worker's share alone.
        "written": summary_ms(written_latency),
        "closure_written": summary_ms(closure_written_latency),
        "worker_rejected": stats["rejected_total"],
    }


# --------------------------------------------------------------------------
# 3. TTL closure lag


async def _ttl(ctx: Context, deployment: Deployment, worker: WorkerProcess, observer: Observer,
               prefix: str = "ttl") -> dict[str, Any]:
    scale = ctx.scale
    count, spread = scale.ttl_sessions, scale.ttl_spread_secs
    ctx.log(f"ttl: {count:,} sessions expiring over {spread} s (closure due {GRACE_SECS:.0f} s later)")
    rng = random.Random(6)
    records = []
    ids = []
    for n in range(count):
        session_id = f"{prefix}{n:06d}"
        ids.append(session_id)
        ttl_secs = 5 + rng.randrange(spread)
        occurred_at = now_rfc3339(-rng.random())  # sub-second spread within each second
        tenant_id = TENANTS[n % len(TENANTS)]
        records.append((session_id.encode(), orjson.dumps(lifecycle(session_id, 0, 3, occurred_at,
                                                                    ttl_secs=ttl_secs, tenant_id=tenant_id))))
        records.append((session_id.encode(), orjson.dumps(lifecycle(session_id, 1, 3, occurred_at,
                                                                    tenant_id=tenant_id))))
    await bulk_produce(ctx.bootstrap, deployment.events_topic, records)
    deadline = time.monotonic() + 5 + spread + GRACE_SECS + 30
    while time.monotonic() < deadline:
        if all(session_id in observer.closures for session_id in ids):
            break
        await asyncio.sleep(0.5)
    lags = []
    reasons: dict[str, int] = {}
    for session_id in ids:
        if session_id not in observer.closures:
            continue
        received, closure, _ = observer.closures[session_id]
        reasons[closure["reason"]] = reasons.get(closure["reason"], 0) + 1
        record = closure["record"]
        expires_at = parse_timestamp(record["created_at"]) / SECOND + record["ttl_secs"]
        lags.append(received - expires_at - GRACE_SECS)
    return {"sessions": count, "spread_secs": spread, "grace_secs": GRACE_SECS,
            "lag": {**summary_ms(lags), "missing": count - len(lags)}, "reasons": reasons}


# --------------------------------------------------------------------------
# 4 and 5. Recovery and memory


def _session_template() -> bytes:
    """One live, active session as the agent stores it, with placeholders."""
    now = time.time_ns() // 1000
    record = SessionRecord(
        session_id="@SID@", tenant_id="tenant-0", provider_id="provider-a", model="model-x", created_at=now,
        activated_at=now + 1000, closed_at=None, ttl_secs=7200, round_count=12, initial_token_count=1200,
        delta_token_count=3900, metadata={"team": "search", "env": "prod"})
    session = Session(record=record, created_ttl_secs=7200, close_reason=None,
                      closed_seen_at=None, partition=987654321, created_offset=11, last_offset=25)
    return encode_state(session)


def _changelog_records(count: int) -> Any:
    template = _session_template()
    for n in range(count):
        session_id = f"rec{n:08d}"
        key = session_id.encode()
        value = template.replace(b"@SID@", key).replace(b"987654321", str(partition_for(key, PARTITIONS)).encode())
        yield key, value


async def _start_measured(worker: WorkerProcess, settle_secs: float = 3.0) -> tuple[float, int]:
    """Start the worker, return (seconds to ready, RSS once settled)."""
    worker.start()
    ready = await wait_ready_secs(worker, timeout=600, interval=0.05)
    await asyncio.sleep(settle_secs)
    return ready, worker_rss(worker)


async def recovery_and_memory(ctx: Context, stores: list[str]) -> dict[str, Any]:
    count = ctx.scale.recovery_sessions
    deployment = ctx.deployment()
    await deployment.create_topics_async()
    ctx.log(f"recovery: writing {count:,} live sessions into the changelog")
    loaded, load_secs = await bulk_produce(ctx.bootstrap, deployment.changelog_topic, _changelog_records(count))
    result: dict[str, Any] = {"sessions": loaded, "changelog_load_secs": round(load_secs, 1), "stores": {}}
    for store in stores:
        figures: dict[str, Any] = {}
        result["stores"][store] = figures
        try:
            # An empty worker of the same kind: the RSS every worker has.
            empty = ctx.deployment()
            await empty.create_topics_async()
            ctx.log(f"recovery[{store}]: empty worker")
            worker = new_worker(empty, f"empty-{store}", ACCOUNTANT_STORE=store)
            _, empty_rss = await _start_measured(worker)
            worker.stop()
            ctx.log(f"recovery[{store}]: worker recovering {loaded:,} sessions")
            worker = new_worker(deployment, f"recover-{store}", ACCOUNTANT_STORE=store)
            ready, rss = await _start_measured(worker)
            stats = await worker_stats(worker)
            figures.update({
                "ready_secs": round(ready, 2),
                "live_sessions": stats["live_sessions"],
                "rss_empty_mib": round(empty_rss / 2**20, 1),
                "rss_mib": round(rss / 2**20, 1),
                "rss_per_100k_sessions_mib": round((rss - empty_rss) / 2**20 / (loaded / 100_000), 1),
            })
            worker.stop()
            if store == "rocksdb":
                figures["disk_mib"] = round(_du(worker.data_dir) / 2**20, 1)
                ctx.log("recovery[rocksdb]: restart with the local database in place")
                restarted = new_worker(deployment, f"recover-{store}", ACCOUNTANT_STORE=store)
                ready, rss = await _start_measured(restarted)
                figures["restart_ready_secs"] = round(ready, 2)
                figures["restart_rss_mib"] = round(rss / 2**20, 1)
                restarted.stop()
                shutil.rmtree(restarted.data_dir, ignore_errors=True)
            if figures["live_sessions"] != loaded:
                figures["note"] = f"only {figures['live_sessions']} of {loaded} sessions live after recovery"
        except Exception as error:  # a store that cannot run is reported, not fatal
            figures["error"] = f"{type(error).__name__}: {str(error)[-1500:]}"
            ctx.log(f"recovery[{store}]: FAILED: {figures['error'][:300]}")
    return result


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file that went away meanwhile
                total += os.path.getsize(os.path.join(root, name))
    return total
