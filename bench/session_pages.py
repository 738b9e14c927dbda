"""`GET /sessions` page time against the number of stored sessions (issue 23).

    .venv/bin/python -m bench.session_pages [--sizes 10000,100000,1000000] [--requests 20]

One in-process worker (the real app, web views and memory store; no broker:
the sessions are written into the store directly), answering over HTTP on
loopback. For each size: `GET /sessions?limit=1000` unfiltered and filtered
to one tenant of five, `GET /tenants/acme/usage` on the tenant's owner, and,
for comparison, the scan the view made before
(every stored session decoded, then the first 1,000 by id with heapq), timed
in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import tempfile
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

from app.rules import encode_state
from app.rules.usage import PeriodTotals, TenantUsage
from bench.common import log, summary_ms
from tests.web.inprocess import PARTITIONS, InProcessWorker, make_session

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
CHUNK = 10_000


def fill(worker: InProcessWorker, size: int, start: int) -> None:
    """Sessions start..size-1, written as the agent writes them: per partition, in chunks."""
    for first in range(start, size, CHUNK):
        by_partition: dict[int, dict[str, bytes | None]] = {}
        for number in range(first, min(first + CHUNK, size)):
            session_id = f"s-{number * 7919 % 10_000_019:08d}"  # stored out of id order
            partition = number % PARTITIONS
            session = make_session(session_id, tenant=TENANTS[number % len(TENANTS)], partition=partition)
            by_partition.setdefault(partition, {})[session_id] = encode_state(session)
        for partition, values in by_partition.items():
            worker.store.write(partition, values)


async def timed_gets(worker: InProcessWorker, path: str, requests: int, field: str) -> list[float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        status, body, _ = await worker.get(path)
        times.append(time.perf_counter() - started)
        assert status == 200 and body[field], (status, str(body)[:200])
    return times


def scan_before(worker: InProcessWorker, requests: int) -> list[float]:
    """What the view did before: decode every session, keep the first 1,000 by id."""
    times = []
    for _ in range(max(1, requests // 5)):
        started = time.perf_counter()
        items = ((session_id, state) for session_id, state in worker.store.items_in(range(PARTITIONS)))
        heapq.nsmallest(1001, items, key=itemgetter(0))
        times.append(time.perf_counter() - started)
    return times


async def measure(sizes: list[int], requests: int) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        worker = await InProcessWorker(Path(workdir)).start()
        # The tenant table as a month of these sessions would leave it: a
        # lookup reads one tenant's state, whatever the number of sessions.
        worker.put_tenants(*(TenantUsage(tenant, open_sessions=200_000, open_tokens=24_000_000,
                                         closed={"2026-12": PeriodTotals(10**9, 10**6, 10**5)},
                                         applied_through=dict.fromkeys(range(PARTITIONS), 10 ** 7))
                             for tenant in TENANTS))
        try:
            stored = 0
            for size in sizes:
                log(f"filling the store to {size:,} sessions")
                fill(worker, size, stored)
                stored = size
                unfiltered = await timed_gets(worker, "/sessions?limit=1000", requests, "sessions")
                one_tenant = await timed_gets(worker, "/sessions?limit=1000&tenant_id=acme", requests, "sessions")
                usage = await timed_gets(worker, "/tenants/acme/usage", requests * 10, "usage_tokens")
                results.append({"sessions": size, "page_1000": summary_ms(unfiltered),
                                "page_1000_one_tenant_of_5": summary_ms(one_tenant),
                                "tenant_usage_on_the_owner": summary_ms(usage),
                                "scan_before": summary_ms(scan_before(worker, requests))})
                log(json.dumps(results[-1]))
        finally:
            await worker.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    print(json.dumps(asyncio.run(measure(sizes, args.requests))))


if __name__ == "__main__":
    main()
