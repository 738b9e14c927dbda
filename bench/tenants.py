"""Live views at scale (issue 23): tenant usage, budgets and the dashboard, measured on real workers.

    .venv/bin/python -m bench.tenants [--only forwarded budgets alerts window dashboard] [--runs 3]
        [--quick] [--rate 5000] [--live-sessions 1000000] [--thresholds 0.8,1.0]
        [--guarantees at_least_once exactly_once] [--out FILE]

Workers are `python -m app.cli worker` subprocesses with the service's default
settings (bench/common.py: 8 partitions, memory store), on a throw-away local
broker (or ACCOUNTANT_BROKER); each run of each figure has its own app id and
topic prefix. Every figure is given per run and as median, min and max over
the runs. Every sample is checked against what was sent: a wrong answer fails
its run (the error is kept in the results), so no figure is taken from one.

forwarded
    Two workers in one group. Tenants with one closed session each (known
    tokens); the owner of each tenant is the worker active for its partition
    of `<app>-tenant-usage-repartition` (murmur2 of the tenant id, as
    agents/tenants.py `partition_of`; the workers' own partitions read with
    `GET /tenants` and the fan-out header, and a fan-out probe of the other
    worker answering 404 confirms it does not hold the tenant). Then,
    alternately, `GET /tenants/{id}/usage` on the owner and on the other
    worker (which forwards it to the owner), one request at a time, from a
    keep-alive aiohttp client as `SessionPublisher.tenant_usage` uses; the
    first 20 of each are warm-up. Each answer must hold the tenant's tokens.
budgets
    One backlog of sessions (created, activated, 17 rounds, closed) of 200
    tenants, loaded twice into fresh deployments: once with no budgets, once
    with a budget for every tenant (`PUT /tenants/{id}/budget` through a
    worker started before the load and stopped again), limit 10/11 of the
    tenant's tokens and `--thresholds` (default 0.8, 1.0, the API's), so
    every threshold crosses during the run. A fresh worker then drains the backlog; events/s are
    measured as `bench/benchmarks.py` `_worker_throughput` does (`/stats` every
    0.25 s, from the first poll showing progress to the one showing all),
    and `tenants_settled_secs` is from the same first poll until every
    tenant's usage equals its tokens. Checked: every event applied, every
    tenant's usage, every expected alert (and no other) with its figures, no
    alert at all without budgets. The order of the two alternates by run.
alerts, window
    One worker per guarantee; `bench/pacer.py` publishes `--rate` events/s
    (default 5,000) of other tenants in a process of its own all along.
    alerts: fresh tenants, each with a budget of 1,000 tokens (threshold 1.0)
    set and an open session of 100 tokens accounted before the load starts;
    every 0.2 s one round of 1,000 tokens crosses one tenant's threshold. A
    read_committed consumer of `tenant-usage-alerts` (20 ms fetch wait) stamps
    each alert's arrival; latency = arrival - the broker's acknowledgement of
    the crossing round (acks=all). Each alert must name the tenant, the month,
    1,100 tokens, limit 1,000 and `crossed_at` = the round's `occurred_at`;
    one not seen within 30 s is counted as missing, never as a figure.
    window: as bench/tenant_window.py, under the same load, after the alerts:
    a round of one tenant is published and, from its acknowledgement,
    `GET /tenants/{id}/usage` is polled every 2 ms until it shows the round;
    the figure must equal the tokens sent. The load actually offered (end
    offsets of the input) and what the worker accounted meanwhile are given.
dashboard
    `--live-sessions` (default 1,000,000) open sessions of 1,000 tenants
    written straight into the sessions changelog (the bytes the agent writes,
    as the recovery benchmark does), and the matching tenant states into the
    tenant table's changelog; a backlog of sessions of the same tenants in
    the input. One worker (a consumer group of its own, its changelogs loaded
    the same way) drains the backlog with no client, another with a poller
    doing what app/web/static/dashboard.js does: GET /stats, /tenants?limit=1000,
    /sessions?limit=1000 (one page: unfiltered it is full) and /ledger at once,
    then 1.5 s after the answers (POLL_MS), from the worker's ready answer to
    the end of the drain. Throughput as for budgets; request p50/p99 per path
    and over all, per run and pooled over the runs. Every answer is checked:
    the page of sessions is the first 1,000 session ids, the page of tenants
    the 1,000 tenants each between its preloaded and its final usage, /stats
    at least the preloaded live sessions; at the end every tenant's usage and
    the live sessions are exact.

Results: printed as one JSON line and written to bench/results/tenants.json
(with --quick: tenants-quick.json). --quick runs small sizes (seconds per
figure): a smoke test, not figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.partitioners import partition_for
from app.rules import Session, decode_state, parse_timestamp
from app.rules.usage import TenantUsage, alert_id, period_of, reaches
from app.web.fanout import FANOUT_HEADER, PARTITIONS_HEADER, parse_partitions
from bench.benchmarks import _session_template, drain_samples
from bench.common import (
    PARTITIONS,
    bench_broker,
    log,
    new_deployment,
    new_worker,
    summary_ms,
    wait_ready_secs,
    worker_stats,
)
from bench.loadgen import bulk_produce, lifecycle
from bench.machine import describe
from tests.support import REPO
from tests.support.clock import now_micros, now_rfc3339
from tests.support.deployment import Deployment
from tests.support.events import event, session_events
from tests.support.kafka import fetch_end_offsets, produce
from tests.support.workers import WorkerProcess, accounted

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = ("forwarded", "budgets", "alerts", "window", "dashboard")
GUARANTEES = ("at_least_once", "exactly_once")
EVENTS_PER_SESSION = 20  # created, activated, 17 rounds, closed: as the throughput benchmark
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
WARMUP_REQUESTS = 20
DEFAULT_THRESHOLDS = "0.8,1.0"  # the API's default (app/rules/usage.py)
ALERT_LIMIT = 1000  # tokens; threshold 1.0
ALERT_OPENING = 100  # the fresh tenant's tokens before its crossing round
ALERT_ROUND = 1000  # the crossing round: 1,100 >= 1,000
ALERT_WAIT_SECS = 30.0
WINDOW_POLL_SECS = 0.002
DASHBOARD_POLL_SECS = 1.5  # app/web/static/dashboard.js POLL_MS
DASHBOARD_PATHS = ("/stats", "/tenants?limit=1000", "/sessions?limit=1000", "/ledger")
PAGE = 1000


@dataclass(frozen=True)
class Scale:
    usage_tenants: int = 16
    usage_requests: int = 1000  # per role (owner, forwarded) per run
    budget_tenants: int = 200
    budget_thresholds: tuple[float, ...] = (0.8, 1.0)
    budget_sessions: int = 50_000  # x 20 events: 1,000,000
    load_rate: int = 5_000
    alert_samples: int = 200
    alert_spacing_secs: float = 0.2
    window_samples: int = 200
    live_sessions: int = 1_000_000
    live_tenants: int = 1_000
    dashboard_sessions: int = 50_000  # x 20 events
    #: After the drain, the poller runs this long while the worker accounts `load_rate`.
    steady_secs: float = 30.0

    @classmethod
    def quick(cls) -> Scale:
        return cls(usage_tenants=8, usage_requests=100, budget_tenants=50, budget_sessions=10_000, alert_samples=15,
                   window_samples=15, live_sessions=20_000, live_tenants=1_000, dashboard_sessions=10_000,
                   steady_secs=5.0)


@dataclass
class Context:
    bootstrap: str
    workdir: Path
    scale: Scale

    def deployment(self, **settings: str) -> Deployment:
        return new_deployment(self.bootstrap, self.workdir, **settings)


class WrongAnswer(AssertionError):
    """The service answered something other than the truth: the run gives no figure."""


def check(condition: bool, message: Callable[[], str] | str) -> None:
    if not condition:
        raise WrongAnswer(message() if callable(message) else message)


# --------------------------------------------------------------------------
# Shared pieces


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of one figure over the runs."""
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def session_tokens(steps: int = EVENTS_PER_SESSION) -> int:
    """The tokens of one `bench.loadgen.lifecycle` session."""
    events = [lifecycle("x", step, steps, "2026-01-01T00:00:00Z") for step in range(steps)]
    return sum(e.get("initial_token_count", 0) + e.get("delta_token_count", 0) for e in events)


def backlog(sessions: int, tenants: list[str], prefix: str, *,
            concurrent: int = 5000) -> Iterator[tuple[bytes, bytes]]:
    """`bench.loadgen.throughput_load` with session n in tenant n % len(tenants)."""
    occurred_at = now_rfc3339()
    for first in range(0, sessions, concurrent):
        numbers = range(first, min(first + concurrent, sessions))
        ids = [(f"{prefix}{n:08d}", tenants[n % len(tenants)]) for n in numbers]
        keys = [session_id.encode() for session_id, _ in ids]
        for step in range(EVENTS_PER_SESSION):
            for key, (session_id, tenant_id) in zip(keys, ids, strict=True):
                yield key, orjson.dumps(lifecycle(session_id, step, EVENTS_PER_SESSION, occurred_at,
                                                  tenant_id=tenant_id))


def backlog_truth(sessions: int, tenants: list[str]) -> Counter[str]:
    per_session = session_tokens()
    truth: Counter[str] = Counter()
    for n in range(sessions):
        truth[tenants[n % len(tenants)]] += per_session
    return truth


async def produce_events_async(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    await produce(bootstrap, topic, ((e["session_id"].encode(), orjson.dumps(e)) for e in events))


async def start_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.start()
    for worker in workers:
        await wait_ready_secs(worker, timeout=600)


async def stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        await asyncio.to_thread(worker.stop)


async def get_json(http: aiohttp.ClientSession, url: str,
                   headers: dict[str, str] | None = None) -> tuple[float, int, Any, Any]:
    """(seconds, status, parsed body, response headers) of one GET; the time is to the last byte read."""
    started = time.perf_counter()
    async with http.get(url, headers=headers) as response:
        body = await response.read()
        secs = time.perf_counter() - started
        status, response_headers = response.status, response.headers
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = body.decode(errors="replace")
    return secs, status, parsed, response_headers


async def put_budget(http: aiohttp.ClientSession, url: str, tenant_id: str, limit: int,
                     thresholds: list[float]) -> None:
    """PUT a budget; retried while the worker's producer has not reached the broker (503)."""
    body = orjson.dumps({"limit_tokens": limit, "thresholds": thresholds})
    deadline = time.monotonic() + 60
    while True:
        async with http.put(f"{url}/tenants/{tenant_id}/budget", data=body,
                            headers={"Content-Type": "application/json"}) as response:
            text = await response.read()
            if response.status == 200:
                stored = orjson.loads(text)
                check(stored["limit_tokens"] == limit, f"PUT budget of {tenant_id} answered {stored}")
                return
            if response.status != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"PUT budget of {tenant_id}: {response.status} {text[:300]!r}")
        await asyncio.sleep(0.5)


async def all_tenants(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    """Every tenant's usage view, read page by page from `GET /tenants`."""
    tenants: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        path = f"/tenants?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
        _, status, body, _ = await get_json(http, url + path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {str(body)[:300]}")
        tenants.update((view["tenant_id"], view) for view in body["tenants"])
        cursor = body["next_cursor"]
        if not cursor:
            return tenants


async def wait_usages(http: aiohttp.ClientSession, url: str, truth: dict[str, int], timeout: float = 120,
                      interval: float = 0.25) -> dict[str, dict[str, Any]]:
    """Until every tenant of `truth` shows exactly its tokens; a figure above
    the truth is a wrong answer at once (usage only grows here)."""
    deadline = time.monotonic() + timeout
    while True:
        views: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(RuntimeError):  # 503 while a rebalance settles
            views = await all_tenants(http, url)
        over = {t: (views[t]["usage_tokens"], want) for t, want in truth.items()
                if t in views and views[t]["usage_tokens"] > want}
        if over:
            raise WrongAnswer(f"usage above what was sent (seen, sent): {dict(list(over.items())[:5])}")
        if all(t in views and views[t]["usage_tokens"] == want for t, want in truth.items()):
            return views
        if time.monotonic() > deadline:
            short = {t: (views.get(t, {}).get("usage_tokens"), want) for t, want in truth.items()
                     if views.get(t, {}).get("usage_tokens") != want}
            raise WrongAnswer(f"{len(short)} tenants' usage never reached what was sent after {timeout:.0f} s "
                              f"(seen, sent): {dict(list(short.items())[:5])}")
        await asyncio.sleep(interval)


def log_findings(worker: WorkerProcess) -> dict[str, Any]:
    """The worker's WARNING and ERROR lines (counted, the first few kept): a
    figure from a worker that logged trouble is to be read with them."""
    try:
        lines = worker.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    found = [line for line in lines if "] [WARNING] " in line or "] [ERROR] " in line]
    return {"warnings": sum("] [WARNING] " in line for line in found),
            "errors": sum("] [ERROR] " in line for line in found),
            "first": [line.split("] ", 3)[-1][:300] for line in found[:8]]}


async def drain(worker: WorkerProcess, loaded: int, timeout: float = 1800) -> dict[str, Any]:
    """As `bench.benchmarks._worker_throughput` (`drain_samples`): from the
    first poll showing progress to the one showing all `loaded` events."""
    process = psutil.Process(worker.pid)
    first, last, stats = await drain_samples(worker, process, loaded, timeout)
    count = last[1]
    check(count == loaded, f"{worker.name} accounted {count} events, {loaded} were loaded")
    check(stats["rejected_total"] == 0 and stats["duplicate"] == 0,
          f"{worker.name}: rejected {stats['rejected_total']}, duplicate {stats['duplicate']} of a clean backlog")
    seconds = last[0] - first[0]
    events = last[1] - first[1]
    if seconds <= 0:
        raise RuntimeError(f"the backlog of {loaded} events was accounted before a second poll: too small to time")
    return {"events_per_sec": round(events / seconds), "seconds": round(seconds, 2),
            "cpu_us_per_event": round((last[2] - first[2]) / events * 1e6, 1), "first_progress": first[:2],
            "rss_mib": round(process.memory_info().rss / 2**20, 1)}


# --------------------------------------------------------------------------
# 1. GET /tenants/{id}/usage on the owner and forwarded


async def tenant_partitions(http: aiohttp.ClientSession, worker: WorkerProcess) -> frozenset[int]:
    """The partitions of the tenant table `worker` is active for (its fan-out answer says so)."""
    _, status, _, headers = await get_json(http, f"{worker.url}/tenants?limit=1", {FANOUT_HEADER: "1"})
    return parse_partitions(headers.get(PARTITIONS_HEADER)) if status == 200 else frozenset()


async def settled_owners(http: aiohttp.ClientSession, workers: list[WorkerProcess],
                         timeout: float = 120) -> list[frozenset[int]]:
    """Each worker's tenant partitions once both have some and together they cover each partition once."""
    deadline = time.monotonic() + timeout
    while True:
        owned = [await tenant_partitions(http, worker) for worker in workers]
        if all(owned) and sum(map(len, owned)) == PARTITIONS and frozenset().union(*owned) == set(range(PARTITIONS)):
            return owned
        if time.monotonic() > deadline:
            raise RuntimeError(f"the group never settled: tenant partitions {owned}")
        await asyncio.sleep(0.5)


async def forwarded_run(ctx: Context, run: int) -> dict[str, Any]:
    scale = ctx.scale
    deployment = ctx.deployment()
    await deployment.create_topics_async()
    workers = [new_worker(deployment, "a"), new_worker(deployment, "b")]
    await start_workers(workers)
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            owned = await settled_owners(http, workers)
            # As many tenants on one worker as on the other.
            tenants: list[str] = []
            on_first = candidate = 0
            while len(tenants) < scale.usage_tenants:
                tenant_id = f"fwd-{run}-{candidate:03d}"
                candidate += 1
                first = partition_for(tenant_id.encode(), PARTITIONS) in owned[0]
                if (on_first if first else len(tenants) - on_first) < scale.usage_tenants // 2:
                    tenants.append(tenant_id)
                    on_first += first
            truth: dict[str, int] = {}
            events = []
            for n, tenant_id in enumerate(tenants):
                rounds = [100 + n, 37 * n + 1]
                events += session_events(f"{tenant_id}-s", rounds, initial=1000 + n, tenant_id=tenant_id)
                truth[tenant_id] = 1000 + n + sum(rounds)
            await produce_events_async(ctx.bootstrap, deployment.events_topic, events)
            await wait_usages(http, workers[0].url, truth)
            owner_of: dict[str, tuple[WorkerProcess, WorkerProcess]] = {}
            for tenant_id in tenants:
                partition = partition_for(tenant_id.encode(), PARTITIONS)
                index = 0 if partition in owned[0] else 1
                owner_of[tenant_id] = (workers[index], workers[1 - index])
                # The other worker does not hold it: its fan-out answer (local only) is 404.
                _, status, body, _ = await get_json(http, f"{workers[1 - index].url}/tenants/{tenant_id}/usage",
                                                    {FANOUT_HEADER: "1"})
                check(status == 404, f"{workers[1 - index].name} answered {status} for {tenant_id} of partition "
                      f"{partition}, owned by {workers[index].name}: {str(body)[:200]}")
            per_worker = Counter(owner.name for owner, _ in owner_of.values())
            if len(per_worker) < 2:
                raise RuntimeError(f"every tenant is on one worker ({per_worker}): use more --usage-tenants")
            times: dict[str, list[float]] = {"owner": [], "forwarded": []}
            for number in range(WARMUP_REQUESTS + scale.usage_requests):
                tenant_id = tenants[number % len(tenants)]
                owner, other = owner_of[tenant_id]
                roles = [("owner", owner), ("forwarded", other)]
                if number % 2:
                    roles.reverse()
                for role, worker in roles:
                    secs, status, body, _ = await get_json(http, f"{worker.url}/tenants/{tenant_id}/usage")
                    if not (status == 200 and body["tenant_id"] == tenant_id
                            and body["usage_tokens"] == truth[tenant_id]):
                        raise WrongAnswer(f"{role} {worker.name}: {status} {str(body)[:300]} for {tenant_id} "
                                          f"({truth[tenant_id]} tokens sent)")
                    if number >= WARMUP_REQUESTS:
                        times[role].append(secs)
            after = [await tenant_partitions(http, worker) for worker in workers]
            if after != owned:
                raise RuntimeError(f"a rebalance during the measurement: partitions {owned} -> {after}")
    finally:
        await stop_workers(workers)
    owner_summary, forwarded_summary = summary_ms(times["owner"]), summary_ms(times["forwarded"])
    return {"tenants": len(tenants), "tenants_per_worker": dict(per_worker),
            "partitions": [sorted(part) for part in owned], "owner": owner_summary, "forwarded": forwarded_summary,
            "hop_p50_ms": round(forwarded_summary["p50_ms"] - owner_summary["p50_ms"], 1),
            "worker_logs": {worker.name: log_findings(worker) for worker in workers}}


def forwarded_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    return {f"{role}_{stat}": spread([run[role][stat] for run in good])
            for role in ("owner", "forwarded") for stat in ("p50_ms", "p99_ms", "max_ms")}


# --------------------------------------------------------------------------
# 2. Worker throughput with budgets on and off


async def budgets_mode(ctx: Context, with_budgets: bool) -> dict[str, Any]:
    scale = ctx.scale
    tenants = [f"b{n:04d}" for n in range(scale.budget_tenants)]
    truth = backlog_truth(scale.budget_sessions, tenants)
    limits = {tenant_id: max(tokens * 10 // 11, 1) for tenant_id, tokens in truth.items()}
    deployment = ctx.deployment()
    await deployment.create_topics_async()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        if with_budgets:
            # Stored before the backlog and the measured worker, which reads them all before it applies anything.
            setup = new_worker(deployment, "setup")
            await start_workers([setup])
            try:
                for tenant_id, limit in limits.items():
                    await put_budget(http, setup.url, tenant_id, limit, list(scale.budget_thresholds))
            finally:
                await stop_workers([setup])
        loaded, load_secs = await bulk_produce(ctx.bootstrap, deployment.events_topic,
                                               backlog(scale.budget_sessions, tenants, "b"))
        worker = new_worker(deployment, "measured")
        await start_workers([worker])
        try:
            result: dict[str, Any] = await drain(worker, loaded)
            views = await wait_usages(http, worker.url, truth, interval=0.1)
            first_at, first_count = result.pop("first_progress")
            settled_secs = time.monotonic() - first_at
            result["tenants_settled_secs"] = round(settled_secs, 2)
            result["events_per_sec_to_tenants_settled"] = round((loaded - first_count) / settled_secs)
            if with_budgets:
                wrong = [t for t in tenants if (views[t].get("budget") or {}).get("limit_tokens") != limits[t]]
                check(not wrong, f"tenants whose usage shows another budget: {wrong[:5]}")
                result["alerts"] = await check_budget_alerts(ctx.bootstrap, deployment, truth, limits,
                                                             scale.budget_thresholds)
            else:
                ends = await fetch_end_offsets(ctx.bootstrap, deployment.config.alerts_topic)
                check(sum(ends.values()) == 0, f"alerts with no budget set: end offsets {ends}")
                result["alerts"] = {"alerts": 0}
        finally:
            await stop_workers([worker])
        result["worker_log"] = log_findings(worker)
    return {"budgets": with_budgets, "events": loaded, "tenants": len(tenants),
            "thresholds": list(scale.budget_thresholds) if with_budgets else None,
            "load_events_per_sec": round(loaded / load_secs), **result}


async def check_budget_alerts(bootstrap: str, deployment: Deployment, truth: dict[str, int],
                              limits: dict[str, int], thresholds: tuple[float, ...]) -> dict[str, Any]:
    period = period_of(now_micros())
    wanted = {alert_id(t, period, threshold) for t in truth for threshold in thresholds}
    alerts = await read_alerts(bootstrap, deployment.config.alerts_topic, wanted, timeout=60)
    seen = {alert["alert_id"] for alert in alerts}
    check(seen == wanted, lambda: f"alerts missing: {sorted(wanted - seen)[:5]} ({len(wanted - seen)}), "
                                  f"unexpected: {sorted(seen - wanted)[:5]}")
    for alert in alerts:
        tenant_id = alert["tenant_id"]
        check(alert["limit_tokens"] == limits[tenant_id] and alert["period"] == period
              and reaches(alert["usage_tokens"], alert["threshold"], alert["limit_tokens"])
              and alert["usage_tokens"] <= truth[tenant_id], f"wrong alert {alert} (tenant's tokens "
                                                             f"{truth[tenant_id]}, limit {limits[tenant_id]})")
    return {"alerts": len(wanted), "copies": len(alerts)}


async def read_alerts(bootstrap: str, topic: str, wanted: set[str], timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                alerts.extend(orjson.loads(message.value) for message in messages)
            if wanted <= {alert["alert_id"] for alert in alerts}:
                # What else is there to see (a wrong extra alert) arrives with them.
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    alerts.extend(orjson.loads(message.value) for message in messages)
                break
    finally:
        await consumer.stop()
    return alerts


async def budgets_run(ctx: Context, run: int) -> dict[str, Any]:
    order = (False, True) if run % 2 == 0 else (True, False)
    modes = {}
    for with_budgets in order:
        log(f"budgets run {run + 1}: {'with' if with_budgets else 'without'} budgets")
        modes["on" if with_budgets else "off"] = await budgets_mode(ctx, with_budgets)
    return {"order": ["on" if mode else "off" for mode in order], **modes,
            "ratio_on_to_off": round(modes["on"]["events_per_sec"] / modes["off"]["events_per_sec"], 3),
            "ratio_on_to_off_tenants_settled": round(modes["on"]["events_per_sec_to_tenants_settled"]
                                                     / modes["off"]["events_per_sec_to_tenants_settled"], 3)}


def budgets_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    return {"off_events_per_sec": spread([run["off"]["events_per_sec"] for run in good]),
            "on_events_per_sec": spread([run["on"]["events_per_sec"] for run in good]),
            "ratio_on_to_off": spread([run["ratio_on_to_off"] for run in good]),
            "ratio_on_to_off_tenants_settled": spread([run["ratio_on_to_off_tenants_settled"] for run in good])}


# --------------------------------------------------------------------------
# 3 and 4. Crossing -> alert, and the usage window, under load


class AlertWatcher:
    """Reads `tenant-usage-alerts` read_committed from its start; stamps each arrival (monotonic)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        #: alert_id -> [(arrival, alert)], in arrival order.
        self.arrivals: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=20,
                                    isolation_level="read_committed")
        await consumer.start()
        consumer.assign([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            arrived = time.monotonic()
            for messages in batch.values():
                for message in messages:
                    alert = orjson.loads(message.value)
                    self.arrivals.setdefault(alert["alert_id"], []).append((arrived, alert))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


class Pacer:
    """`bench/pacer.py` in a process of its own, publishing `rate` events/s
    until stopped (its own list of sent events stays empty: warm-up never ends)."""

    def __init__(self, bootstrap: str, topic: str, rate: int, log_path: Path) -> None:
        self.args = ["-m", "bench.pacer", bootstrap, topic, str(rate), "100000", "load", "1000000"]
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = await asyncio.create_subprocess_exec(sys.executable, *self.args, cwd=REPO,
                                                                stdout=asyncio.subprocess.DEVNULL, stderr=out)

    def check_alive(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise RuntimeError(f"the pacer exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def input_end(bootstrap: str, topic: str) -> int:
    return sum((await fetch_end_offsets(bootstrap, topic, PARTITIONS)).values())


async def under_load_run(ctx: Context, run: int, guarantee: str, alerts: bool, window: bool) -> dict[str, Any]:
    scale = ctx.scale
    deployment = ctx.deployment(ACCOUNTANT_PROCESSING_GUARANTEE=guarantee)
    await deployment.create_topics_async()
    worker = new_worker(deployment)
    await start_workers([worker])
    watcher = AlertWatcher(ctx.bootstrap, deployment.config.alerts_topic)
    pacer = Pacer(ctx.bootstrap, deployment.events_topic, scale.load_rate, deployment.workdir / "pacer.log")
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, acks="all", linger_ms=0)
    result: dict[str, Any] = {"guarantee": guarantee, "rate": scale.load_rate}
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            # Fresh tenants, each with a budget and an open session below it; one tenant for the window.
            alert_tenants = [f"alert-{run}-{n:04d}" for n in range(scale.alert_samples if alerts else 0)]
            window_tenant = f"window-{run}"
            for tenant_id in alert_tenants:
                await put_budget(http, worker.url, tenant_id, ALERT_LIMIT, [1.0])
            opening = []
            truth = {window_tenant: 1}
            for tenant_id in alert_tenants:
                opening += session_events(f"{tenant_id}-s", [], initial=ALERT_OPENING, close=False,
                                          tenant_id=tenant_id, ttl_secs=3600)
                truth[tenant_id] = ALERT_OPENING
            opening += session_events(f"{window_tenant}-s", [], initial=1, close=False, tenant_id=window_tenant,
                                      ttl_secs=3600)
            await produce_events_async(ctx.bootstrap, deployment.events_topic, opening)
            views = await wait_usages(http, worker.url, truth)
            unbudgeted = [t for t in alert_tenants if (views[t].get("budget") or {}).get("limit_tokens") != ALERT_LIMIT]
            check(not unbudgeted, f"tenants whose usage shows no budget of {ALERT_LIMIT}: {unbudgeted[:5]}")

            await watcher.start()
            await producer.start()
            log(f"{guarantee}: background load {scale.load_rate:,} events/s")
            await pacer.start()
            before = accounted(await worker_stats(worker))
            deadline = time.monotonic() + 60
            while accounted(await worker_stats(worker)) < before + scale.load_rate:  # a second of load accounted
                pacer.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("the background load never reached the worker")
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # warm-up
            started, end_at_start = time.monotonic(), await input_end(ctx.bootstrap, deployment.events_topic)
            stats_at_start = await worker_stats(worker)
            if alerts:
                result["alert"] = await crossings(scale, producer, deployment, watcher, alert_tenants, pacer)
            if window:
                result["window"] = await windows(scale, producer, http, deployment, worker, window_tenant, pacer)
            seconds = time.monotonic() - started
            end_at_end = await input_end(ctx.bootstrap, deployment.events_topic)
            stats = await worker_stats(worker)
            check(stats["rejected_total"] == 0, f"{stats['rejected_total']} events rejected: the load is valid")
            ours = len(alert_tenants) + (scale.window_samples if window else 0)
            result.update({
                "seconds": round(seconds, 1),
                "offered_events_per_sec": round((end_at_end - end_at_start - ours) / seconds),
                "worker_events_per_sec": round((accounted(stats) - accounted(stats_at_start)) / seconds),
            })
    finally:
        await pacer.stop()
        await watcher.stop()
        await producer.stop()
        await stop_workers([worker])
        result["worker_log"] = log_findings(worker)
    return result


async def send_acked(producer: AIOKafkaProducer, topic: str, value: dict[str, Any]) -> float:
    """Publish one event (acks=all); the monotonic time of the broker's acknowledgement."""
    future = await producer.send(topic, orjson.dumps(value), key=value["session_id"].encode())
    await future
    return time.monotonic()


async def crossings(scale: Scale, producer: AIOKafkaProducer, deployment: Deployment, watcher: AlertWatcher,
                    tenants: list[str], pacer: Pacer) -> dict[str, Any]:
    log(f"alerts: {len(tenants)} crossings, one every {scale.alert_spacing_secs} s")
    period = period_of(now_micros())
    sent: dict[str, tuple[float, str]] = {}  # alert_id -> (ack, occurred_at)
    next_at = time.monotonic()
    for tenant_id in tenants:
        pacer.check_alive()
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += scale.alert_spacing_secs
        crossing = event("round.completed", f"{tenant_id}-s", 2, tenant_id, round=1, delta_token_count=ALERT_ROUND)
        sent[alert_id(tenant_id, period, 1.0)] = (await send_acked(producer, deployment.events_topic, crossing),
                                                  crossing["occurred_at"])
    deadline = time.monotonic() + ALERT_WAIT_SECS
    while time.monotonic() < deadline and not all(name in watcher.arrivals for name in sent):
        await asyncio.sleep(0.1)
    latencies = []
    unexpected = sorted(set(watcher.arrivals) - set(sent))
    check(not unexpected, f"alerts no round crossed: {unexpected[:5]}")
    copies = 0
    for name, (acked, occurred_at) in sent.items():
        arrivals = watcher.arrivals.get(name)
        if not arrivals:
            continue
        copies += len(arrivals) - 1
        arrived, alert = arrivals[0]
        tenant_id = name.split(":", 1)[0]
        check(alert["tenant_id"] == tenant_id and alert["period"] == period and alert["threshold"] == 1.0
              and alert["limit_tokens"] == ALERT_LIMIT and alert["usage_tokens"] == ALERT_OPENING + ALERT_ROUND
              and parse_timestamp(alert["crossed_at"]) == parse_timestamp(occurred_at),
              f"wrong alert {alert} for the round of {occurred_at}")
        latencies.append(arrived - acked)
    missing = sorted(set(sent) - set(watcher.arrivals))
    if missing:
        log(f"alerts: {len(missing)} of {len(sent)} never arrived in {ALERT_WAIT_SECS:.0f} s: {missing[:5]}")
    return {**summary_ms(latencies), "sent": len(sent), "missing": len(missing), "missing_ids": missing[:20],
            "repeated": copies}


async def windows(scale: Scale, producer: AIOKafkaProducer, http: aiohttp.ClientSession, deployment: Deployment,
                  worker: WorkerProcess, tenant_id: str, pacer: Pacer) -> dict[str, Any]:
    log(f"window: {scale.window_samples} rounds")
    url = f"{worker.url}/tenants/{tenant_id}/usage"
    sent = 1
    samples = []
    for number in range(1, scale.window_samples + 1):
        pacer.check_alive()
        acked = await send_acked(producer, deployment.events_topic,
                                 event("round.completed", f"{tenant_id}-s", 1 + number, tenant_id, round=number,
                                       delta_token_count=number))
        sent += number
        deadline = acked + 30
        while True:
            _, status, body, _ = await get_json(http, url)
            check(status == 200, f"GET {url}: {status} {str(body)[:200]}")
            seen = body["usage_tokens"]
            if seen >= sent:
                break
            if time.monotonic() > deadline:
                raise WrongAnswer(f"usage {seen} 30 s after sending {sent} tokens")
            await asyncio.sleep(WINDOW_POLL_SECS)
        samples.append(time.monotonic() - acked)
        check(seen == sent, f"usage {seen} after sending {sent} tokens")
    return summary_ms(samples)


async def under_load_one(ctx: Context, guarantee: str, alerts: bool, window: bool, run: int) -> dict[str, Any]:
    return await under_load_run(ctx, run, guarantee, alerts, window)


def under_load_summary(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run and key in run]
    return {"p50_ms": spread([run[key]["p50_ms"] for run in good if run[key]["count"]]),
            "p99_ms": spread([run[key]["p99_ms"] for run in good if run[key]["count"]]),
            "missing": sum(run[key].get("missing", 0) for run in good),
            "offered_events_per_sec": spread([run["offered_events_per_sec"] for run in good]),
            "worker_events_per_sec": spread([run["worker_events_per_sec"] for run in good])}


# --------------------------------------------------------------------------
# 5. The dashboard's poll at 1,000,000 live sessions


def live_records(count: int, tenants: list[str]) -> Iterator[tuple[bytes, bytes]]:
    """`bench.benchmarks._changelog_records` with session n in tenant n % len(tenants)."""
    template = _session_template().replace(b'"tenant-0"', b'"@TID@"')
    for n in range(count):
        key = f"rec{n:08d}".encode()
        yield key, (template.replace(b"@SID@", key).replace(b"@TID@", tenants[n % len(tenants)].encode())
                    .replace(b"987654321", str(partition_for(key, PARTITIONS)).encode()))


def live_session_tokens() -> int:
    state = decode_state(_session_template())
    assert isinstance(state, Session)
    return state.record.initial_token_count + state.record.delta_token_count


class DashboardPoller:
    """What the dashboard's page does, from app/web/static/dashboard.js: its four
    requests at once, then the next round 1.5 s after the answers."""

    def __init__(self, http: aiohttp.ClientSession, url: str, checks: Callable[[str, Any], None]) -> None:
        self.http = http
        self.url = url
        self.checks = checks
        self.times: dict[str, list[float]] = {path: [] for path in DASHBOARD_PATHS}
        self.problems: list[str] = []
        self.rounds = 0

    async def _one(self, path: str) -> None:
        secs, status, body, _ = await get_json(self.http, self.url + path)
        self.times[path].append(secs)
        try:
            check(status == 200, f"{path}: {status} {str(body)[:200]}")
            self.checks(path, body)
        except WrongAnswer as problem:
            self.problems.append(str(problem))

    async def run(self) -> None:
        while True:
            await asyncio.gather(*(self._one(path) for path in DASHBOARD_PATHS))
            self.rounds += 1
            await asyncio.sleep(DASHBOARD_POLL_SECS)


async def preload_live(ctx: Context, group: Deployment, tenants: list[str]) -> tuple[float, dict[str, int]]:
    """`live_sessions` open sessions of `tenants` written into the group's
    changelogs, and their tenants' states; the seconds it took, and each
    tenant's preloaded usage."""
    scale = ctx.scale
    await group.create_topics_async()  # the tables' changelogs among them, compacted
    log(f"dashboard: {scale.live_sessions:,} live sessions into {group.changelog_topic}")
    per_session = live_session_tokens()
    preloaded = Counter(tenants[n % len(tenants)] for n in range(scale.live_sessions))
    _, preload_secs = await bulk_produce(ctx.bootstrap, group.changelog_topic,
                                         live_records(scale.live_sessions, tenants))
    await bulk_produce(ctx.bootstrap, group.config.tenant_changelog_topic, (
        (t.encode(), orjson.dumps(TenantUsage(t, open_sessions=c, open_tokens=c * per_session).to_json()))
        for t, c in preloaded.items()))
    return preload_secs, {t: preloaded[t] * per_session for t in tenants}


async def dashboard_mode(ctx: Context, deployment: Deployment, loaded: int, tenants: list[str],
                         truth: dict[str, int], polled: bool) -> dict[str, Any]:
    scale = ctx.scale
    group = deployment.with_group(f"{deployment.app_id}-{'poll' if polled else 'nopoll'}")
    preload_secs, low = await preload_live(ctx, group, tenants)
    high = {t: low[t] + truth.get(t, 0) for t in tenants}
    first_page = sorted(f"rec{n:08d}" for n in range(min(PAGE, scale.live_sessions)))
    tenant_page = sorted(tenants)[:PAGE]

    def checks(path: str, body: Any) -> None:
        if path.startswith("/sessions"):
            ids = [session["session_id"] for session in body["sessions"]]
            check(ids == first_page, lambda: f"/sessions page: {len(ids)} sessions from {ids[:1]}, "
                                             f"expected {first_page[:1]}..")
        elif path.startswith("/tenants"):
            views = body["tenants"]
            check([view["tenant_id"] for view in views] == tenant_page,
                  f"/tenants page of {len(views)} tenants, not the first {len(tenant_page)}")
            wrong = [(v["tenant_id"], v["usage_tokens"]) for v in views
                     if not low[v["tenant_id"]] <= v["usage_tokens"] <= high[v["tenant_id"]]]
            check(not wrong, lambda: f"/tenants usage outside [preloaded, final]: {wrong[:5]}")
        elif path == "/stats":
            check(body["live_sessions"] >= scale.live_sessions,
                  f"/stats live_sessions {body['live_sessions']} < {scale.live_sessions} preloaded")
        else:
            check(body.get("configured") is False, f"/ledger: {body}")

    worker = new_worker(group, "polled" if polled else "alone")
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        worker.start()
        ready_secs = await wait_ready_secs(worker, timeout=900)
        poller = DashboardPoller(http, worker.url, checks)
        task = asyncio.create_task(poller.run()) if polled else None
        try:
            result = await drain(worker, loaded)
            result.pop("first_progress")
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            check(not poller.problems, lambda: f"{len(poller.problems)} wrong dashboard answers: "
                                               f"{poller.problems[:3]}")
            await wait_usages(http, worker.url, high)
            stats = await worker_stats(worker)
            check(stats["live_sessions"] == scale.live_sessions,
                  f"live_sessions {stats['live_sessions']} after the drain, {scale.live_sessions} preloaded")
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await stop_workers([worker])
    figures: dict[str, Any] = {"polled": polled, "ready_secs": round(ready_secs, 1),
                               "changelog_load_secs": round(preload_secs, 1), **result,
                               "worker_log": log_findings(worker)}
    if polled:
        figures["poll_rounds"] = poller.rounds
        figures["requests"] = {path: summary_ms(times) for path, times in poller.times.items()}
        figures["requests"]["all"] = summary_ms([t for times in poller.times.values() for t in times])
        figures["request_secs"] = {path: [round(t, 5) for t in times] for path, times in poller.times.items()}
    return figures


async def steady_poll(ctx: Context, tenants: list[str]) -> dict[str, Any]:
    """The dashboard's requests while a worker holding the same live sessions
    accounts a steady `load_rate` instead of draining a backlog as fast as it
    can: a deployment of its own, so the load never reaches the backlog the
    other modes drain. Only the answers' status is checked here: the load's
    own tenants and sessions change the first pages."""
    scale = ctx.scale
    deployment = ctx.deployment()
    await preload_live(ctx, deployment, tenants)
    worker = new_worker(deployment, "steady")
    pacer = Pacer(ctx.bootstrap, deployment.events_topic, scale.load_rate, deployment.workdir / "steady-pacer.log")
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        worker.start()
        try:
            await wait_ready_secs(worker, timeout=900)
            check((await worker_stats(worker))["live_sessions"] == scale.live_sessions, "live sessions not recovered")
            await pacer.start()
            before = accounted(await worker_stats(worker))
            poller = DashboardPoller(http, worker.url, lambda path, body: None)
            task = asyncio.create_task(poller.run())
            try:
                await asyncio.sleep(scale.steady_secs)
                pacer.check_alive()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            worker_rate = (accounted(await worker_stats(worker)) - before) / scale.steady_secs
        finally:
            await pacer.stop()
            await stop_workers([worker])
    check(not poller.problems, lambda: f"{len(poller.problems)} failed dashboard requests: {poller.problems[:3]}")
    return {"rate": scale.load_rate, "seconds": scale.steady_secs, "worker_events_per_sec": round(worker_rate),
            "poll_rounds": poller.rounds, "worker_log": log_findings(worker),
            "requests": {**{path: summary_ms(times) for path, times in poller.times.items()},
                         "all": summary_ms([t for times in poller.times.values() for t in times])}}


async def dashboard_run(ctx: Context, run: int) -> dict[str, Any]:
    scale = ctx.scale
    tenants = [f"t{n:04d}" for n in range(scale.live_tenants)]
    truth = backlog_truth(scale.dashboard_sessions, tenants)
    deployment = ctx.deployment()
    await deployment.create_topics_async()
    loaded, _ = await bulk_produce(ctx.bootstrap, deployment.events_topic,
                                   backlog(scale.dashboard_sessions, tenants, "s"))
    order = (False, True) if run % 2 == 0 else (True, False)
    modes = {}
    for polled in order:
        log(f"dashboard run {run + 1}: {'with' if polled else 'without'} the poller")
        modes["polled" if polled else "alone"] = await dashboard_mode(ctx, deployment, loaded, tenants, truth, polled)
    log(f"dashboard run {run + 1}: the poller at a steady {scale.load_rate:,} ev/s")
    modes["steady"] = await steady_poll(ctx, tenants)
    return {"live_sessions": scale.live_sessions, "tenants": len(tenants), "events": loaded,
            "order": [*("polled" if mode else "alone" for mode in order), "steady"], **modes,
            "ratio_polled_to_alone": round(modes["polled"]["events_per_sec"] / modes["alone"]["events_per_sec"], 3)}


def dashboard_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    pooled: dict[str, list[float]] = {}
    for run in good:
        for path, secs in run["polled"].pop("request_secs").items():
            pooled.setdefault(path, []).extend(secs)
    return {"alone_events_per_sec": spread([run["alone"]["events_per_sec"] for run in good]),
            "polled_events_per_sec": spread([run["polled"]["events_per_sec"] for run in good]),
            "ratio_polled_to_alone": spread([run["ratio_polled_to_alone"] for run in good]),
            "request_p99_ms": spread([run["polled"]["requests"]["all"]["p99_ms"] for run in good]),
            "steady_request_p99_ms": {path: spread([run["steady"]["requests"][path]["p99_ms"]
                                                    for run in good])
                                      for path in (*DASHBOARD_PATHS, "all")},
            "pooled_requests": {**{path: summary_ms(secs) for path, secs in pooled.items()},
                                "all": summary_ms([t for secs in pooled.values() for t in secs])}}


# --------------------------------------------------------------------------


async def runs_of(name: str, count: int, one: Callable[[int], Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`count` runs of one figure; a run that fails is kept with its error."""
    results = []
    for run in range(count):
        log(f"{name}: run {run + 1} of {count}")
        try:
            results.append(await one(run))
        except Exception as error:
            log(f"{name}: run {run + 1} FAILED: {type(error).__name__}: {str(error)[:1000]}")
            results.append({"error": f"{type(error).__name__}: {str(error)[-3000:]}"})
    return results


async def measure(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    scale = Scale.quick() if args.quick else Scale()
    scale = replace(scale, load_rate=args.rate or scale.load_rate,
                    live_sessions=args.live_sessions or scale.live_sessions,
                    budget_thresholds=tuple(sorted(float(t) for t in args.thresholds.split(","))))
    ctx = Context(bootstrap, workdir, scale)
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "runs": args.runs,
                               "machine": describe(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "scale": scale.__dict__}
    started = time.monotonic()
    if "forwarded" in args.only:
        runs = await runs_of("forwarded", args.runs, lambda run: forwarded_run(ctx, run))
        results["forwarded_usage"] = {"target": "p99 forwarded < 25 ms, on the owner < 10 ms",
                                      "summary": forwarded_summary(runs), "runs": runs}
    if "budgets" in args.only:
        runs = await runs_of("budgets", args.runs, lambda run: budgets_run(ctx, run))
        results["budgets_throughput"] = {"target": "with budgets >= 0.9 x without",
                                         "summary": budgets_summary(runs), "runs": runs}
    if {"alerts", "window"} & set(args.only):
        alerts, window = "alerts" in args.only, "window" in args.only
        for guarantee in args.guarantees:
            runs = await runs_of(f"under load, {guarantee}", args.runs,
                                 functools.partial(under_load_one, ctx, guarantee, alerts, window))
            if alerts:
                results.setdefault("alert_latency", {"target": "p99 < 1 s"})[guarantee] = {
                    "summary": under_load_summary(runs, "alert"),
                    "runs": [{k: v for k, v in run.items() if k != "window"} for run in runs]}
            if window:
                results.setdefault("window_under_load", {"target": "p99 < 1 s"})[guarantee] = {
                    "summary": under_load_summary(runs, "window"),
                    "runs": [{k: v for k, v in run.items() if k != "alert"} for run in runs]}
    if "dashboard" in args.only:
        runs = await runs_of("dashboard", args.runs, lambda run: dashboard_run(ctx, run))
        results["dashboard_poll"] = {"target": "with the poll >= 0.9 x without; request p99 < 50 ms",
                                     "summary": dashboard_summary(runs), "runs": runs}
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["total_secs"] = round(time.monotonic() - started, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--runs", type=int, default=None, help="runs of each figure (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures")
    parser.add_argument("--rate", type=int, default=0, help="background events/s for alerts and window (5,000)")
    parser.add_argument("--live-sessions", type=int, default=0,
                        help="live sessions preloaded for the dashboard (1,000,000; --quick 20,000)")
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS,
                        help="the budgets' thresholds in `budgets` (default 0.8,1.0: the API's default)")
    parser.add_argument("--guarantees", nargs="+", choices=GUARANTEES, default=list(GUARANTEES))
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (bench/results/tenants.json; --quick: tenants-quick.json)")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    out = args.out or RESULTS / ("tenants-quick.json" if args.quick else "tenants.json")
    with tempfile.TemporaryDirectory(prefix="usage-accountant-bench-") as tmp, bench_broker(Path(tmp)) as bootstrap:
        results = asyncio.run(measure(args, bootstrap, Path(tmp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(results).decode())
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
