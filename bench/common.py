"""Shared pieces of the benchmarks: realistic deployments of the worker, statistics.

Workers, deployments and Kafka helpers are the tests' (tests/support/).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import psutil

from tests.support.deployment import Deployment
from tests.support.workers import WorkerProcess

#: Realistic settings (the service defaults): grace 5 s, 8 partitions, 1 s commits.
WORKER_SETTINGS = {
    "ACCOUNTANT_PARTITIONS": "8",
    "ACCOUNTANT_GRACE_SECS": "5",
    "ACCOUNTANT_COMMIT_INTERVAL_SECS": "1",
    "ACCOUNTANT_SESSION_TIMEOUT_SECS": "10",
    "ACCOUNTANT_TIMER_INTERVAL_SECS": "0.5",
    "ACCOUNTANT_LOG_LEVEL": "info",
}
PARTITIONS = int(WORKER_SETTINGS["ACCOUNTANT_PARTITIONS"])


def new_deployment(bootstrap: str, workdir: Path, **settings: str) -> Deployment:
    """One app id and topic prefix per benchmark, so runs never see each other's data."""
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    return Deployment(bootstrap, app_id, app_id + ".", workdir / app_id, settings=dict(settings),
                      defaults=WORKER_SETTINGS)


def new_worker(deployment: Deployment, name: str = "worker", **settings: str) -> WorkerProcess:
    """A worker of `deployment`; BENCH_WORKER_LAUNCHER names a script to run
    instead of the worker's module, e.g. one that instruments it."""
    launcher = os.environ.get("BENCH_WORKER_LAUNCHER")
    return deployment.worker(name, command=[launcher] if launcher else None, **settings)


async def wait_ready_secs(worker: WorkerProcess, timeout: float = 300, interval: float = 0.1) -> float:
    """Seconds from the worker's start to its first ready answer."""
    await asyncio.to_thread(worker.wait_ready, timeout, interval)
    assert worker.ready_secs is not None
    return worker.ready_secs


async def worker_stats(worker: WorkerProcess) -> dict[str, Any]:
    return await asyncio.to_thread(worker.stats)


def worker_rss(worker: WorkerProcess) -> int:
    return int(psutil.Process(worker.pid).memory_info().rss)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values_secs: list[float]) -> dict[str, float]:
    if not values_secs:
        return {"count": 0}
    ms = [value * 1000 for value in values_secs]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 0.50), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1), "min_ms": round(min(ms), 1)}
