"""Ingest benchmark (issue 14): events per second accepted through
`POST /events`, against producing the same events straight to Kafka, in the
same run, on loopback.

Each configuration runs `clients` concurrent clients in this process for a
fixed time, each sending its own sessions' events (created, activated, 17
rounds, closed) in batches of `batch`, one batch at a time:

* **POST /events**: a JSON array (a single object for batches of 1) to the
  ingest API in a process of its own (bench/ingest_server.py: the API's
  handler, middleware and idempotent `acks=all` producer, token on), answered
  202 once the broker has the events;
* **straight to Kafka**: the same events, keyed by session, with the same
  kind of producer (`app.publisher.reliable_producer`) in this process, each
  batch awaited until the broker acknowledged all of it.

Figures: events accepted per second over the window (after a warm-up), and
the latency of each request (or batch) p50 / p99. Run alone:

    .venv/bin/python -m bench.ingest [--seconds 10 --clients 8 --batches 100 1]

or as part of `python -m bench.run --only ingest`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from app.dev.kafka import create_topics
from app.dev.processes import pick_free_loopback_port
from app.publisher import reliable_producer
from bench.common import PARTITIONS, bench_broker, log, summary_ms
from bench.loadgen import TENANTS, lifecycle
from tests.support import REPO
from tests.support.clock import now_rfc3339
from tests.support.waiting import wait_for

__all__ = ["ingest", "main"]

TOKEN = "bench-ingest"
EVENTS_PER_SESSION = 20
WARM_UP_SECS = 1.0
RESULTS = Path(__file__).resolve().parent / "results"

#: Sends one batch (key, encoded event pairs); returns how many events were accepted.
Sender = Callable[[list[tuple[bytes, bytes]]], Awaitable[int]]


def _client_events(client: int, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    """Client `client`'s events, session after session, each in lifecycle order."""
    occurred_at = now_rfc3339()
    for number in itertools.count():
        session_id = f"{prefix}-c{client}-s{number}"
        key = session_id.encode()
        tenant = TENANTS[number % len(TENANTS)]
        for step in range(EVENTS_PER_SESSION):
            yield key, orjson.dumps(lifecycle(session_id, step, EVENTS_PER_SESSION, occurred_at, tenant_id=tenant))


async def _drive(send: Sender, *, clients: int, batch: int, seconds: float, prefix: str) -> dict[str, Any]:
    """`clients` loops sending batches for WARM_UP_SECS + `seconds`; what the measured window saw."""
    start = time.monotonic()
    measured_from, until = start + WARM_UP_SECS, start + WARM_UP_SECS + seconds
    latencies: list[float] = []
    accepted = 0
    failures: Counter[str] = Counter()

    async def client(number: int) -> None:
        nonlocal accepted
        events = _client_events(number, prefix)
        while (sent_at := time.monotonic()) < until:
            chunk = list(itertools.islice(events, batch))
            try:
                taken = await send(chunk)
            except Exception as error:  # counted and shown: a benchmark reports failures, it does not hide them
                failures[type(error).__name__] += 1
                continue
            if sent_at >= measured_from:
                latencies.append(time.monotonic() - sent_at)
                accepted += taken

    await asyncio.gather(*(client(number) for number in range(clients)))
    return {"events": accepted, "events_per_sec": round(accepted / seconds), "requests": len(latencies),
            "latency": summary_ms(latencies), "failures": dict(failures)}


async def _through_http(bootstrap: str, topic: str, *, clients: int, batch: int, seconds: float,
                        workdir: Path) -> dict[str, Any]:
    port = pick_free_loopback_port()
    log = workdir / f"ingest-server-{batch}.log"
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "bench.ingest_server", bootstrap, topic, str(port), TOKEN],
                                  cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for("the ingest server to listen", lambda: server.poll() is not None or "ready" in log.read_text(),
                 timeout=60, interval=0.1)
        assert server.poll() is None, f"the ingest server exited:\n{log.read_text()[-3000:]}"
        url = f"http://127.0.0.1:{port}/events"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        process = psutil.Process(server.pid)
        async with aiohttp.ClientSession(headers=headers,
                                         connector=aiohttp.TCPConnector(limit=clients)) as session:

            async def send(chunk: list[tuple[bytes, bytes]]) -> int:
                body = chunk[0][1] if batch == 1 else b"[" + b",".join(value for _, value in chunk) + b"]"
                async with session.post(url, data=body) as response:
                    answer = await response.json()
                    if response.status != 202 or answer["refused"]:
                        raise RuntimeError(f"{response.status} {answer}")
                    return int(answer["accepted"])

            await send(list(itertools.islice(_client_events(-1, f"{topic}-warm"), batch)))  # producer started
            cpu_before = sum(process.cpu_times()[:2])
            result = await _drive(send, clients=clients, batch=batch, seconds=seconds, prefix=f"{topic}-b{batch}")
            cpu = sum(process.cpu_times()[:2]) - cpu_before
        result["server_cpu_us_per_event"] = round(cpu / max(1, result["events"]) * 1e6, 1)
        return result
    finally:
        server.terminate()
        server.wait(30)


async def _straight_to_kafka(bootstrap: str, topic: str, *, clients: int, batch: int,
                             seconds: float) -> dict[str, Any]:
    producer = reliable_producer(bootstrap, {"client_id": "bench-ingest-direct"})
    await producer.start()
    try:
        async def send(chunk: list[tuple[bytes, bytes]]) -> int:
            deliveries = [await producer.send(topic, value, key=key) for key, value in chunk]
            await asyncio.gather(*deliveries)
            return len(deliveries)

        await send(list(itertools.islice(_client_events(-1, f"{topic}-warm"), batch)))
        return await _drive(send, clients=clients, batch=batch, seconds=seconds, prefix=f"{topic}-b{batch}")
    finally:
        await producer.stop()


async def ingest(bootstrap: str, workdir: Path, log: Callable[[str], None], *, seconds: float = 10.0,
                 clients: int = 8, batches: tuple[int, ...] = (100, 1)) -> dict[str, Any]:
    """Every batch size through POST /events and straight to Kafka; the figures of each and their ratio."""
    name = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    topics = {"http": f"{name}-http", "kafka": f"{name}-kafka"}
    await create_topics(bootstrap, dict.fromkeys(topics.values(), PARTITIONS))
    runs: list[dict[str, Any]] = []
    for batch in batches:
        log(f"ingest: POST /events, batches of {batch}, {clients} clients, {seconds:g} s")
        http = await _through_http(bootstrap, topics["http"], clients=clients, batch=batch, seconds=seconds,
                                   workdir=workdir)
        log(f"ingest: straight to Kafka, batches of {batch}, {clients} clients, {seconds:g} s")
        kafka = await _straight_to_kafka(bootstrap, topics["kafka"], clients=clients, batch=batch, seconds=seconds)
        runs += [{"path": "http", "batch": batch, **http}, {"path": "kafka", "batch": batch, **kafka}]
        ratio = http["events_per_sec"] / kafka["events_per_sec"] if kafka["events_per_sec"] else None
        runs[-2]["ratio_to_kafka"] = round(ratio, 3) if ratio is not None else None
    return {"clients": clients, "seconds": seconds, "partitions": PARTITIONS, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    from bench import report
    from bench.machine import describe

    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1], help="events per request")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json", help="where to write the figures")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="usage-accountant-ingest-") as tmp, bench_broker(Path(tmp)) as bootstrap:
        figures = asyncio.run(ingest(bootstrap, Path(tmp), log, seconds=args.seconds, clients=args.clients,
                                     batches=tuple(args.batches)))
    results = {"machine": describe(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ingest": figures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(report.table({"ingest": figures}))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
