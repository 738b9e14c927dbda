"""The latency benchmark's gateway: publishes session events at a fixed rate.

Run in a process of its own, so the observer decoding the worker's outputs
never slows it down:

    python -m bench.pacer BOOTSTRAP TOPIC RATE SECONDS PREFIX WARMUP_SECS

500 sessions at a time, interleaved step by step as live tool loops would be:
created, activated, 7 rounds, closed. Prints one JSON line: the events sent
after the warm-up as [partition, offset, session_id, send time, is_close],
and the rate achieved.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.loadgen import TENANTS, lifecycle
from tests.support.clock import now_rfc3339

STEPS = 10  # created, activated, 7 rounds, closed
TICK_SECS = 0.01


def _events(prefix: str) -> Iterator[tuple[str, int, str]]:
    group = 0
    while True:
        ids = [f"{prefix}{group:05d}-{n:03d}" for n in range(500)]
        for step in range(STEPS):
            for index, session_id in enumerate(ids):
                yield session_id, step, TENANTS[index % len(TENANTS)]
        group += 1


async def run(bootstrap: str, topic: str, rate: int, seconds: float, prefix: str, warmup: float) -> dict[str, Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: list[list[Any]] = []
    counted_after = time.time() + warmup

    def remember(session_id: str, closing: bool, when: float) -> Any:
        def done(future: asyncio.Future[Any]) -> None:
            if future.exception() is None and when >= counted_after:
                metadata = future.result()
                sent.append([metadata.partition, metadata.offset, session_id, when, closing])
        return done

    source = _events(prefix)
    per_tick = max(1, round(rate * TICK_SECS))
    total = int(rate * seconds)
    count = 0
    pending = []
    started = time.monotonic()
    try:
        while count < total:
            delay = started + count / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            occurred_at = now_rfc3339()
            for _ in range(min(per_tick, total - count)):
                session_id, step, tenant_id = next(source)
                value = orjson.dumps(lifecycle(session_id, step, STEPS, occurred_at, tenant_id=tenant_id))
                when = time.time()
                future = await producer.send(topic, value, key=session_id.encode())
                future.add_done_callback(remember(session_id, step == STEPS - 1, when))
                pending.append(future)
                count += 1
            if len(pending) > 5000:
                pending = [future for future in pending if not future.done()]
        achieved = count / (time.monotonic() - started)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"count": count, "achieved_rate": round(achieved), "sent": sent}


if __name__ == "__main__":
    bootstrap, topic, rate, seconds, prefix, warmup = sys.argv[1:7]
    result = asyncio.run(run(bootstrap, topic, int(rate), float(seconds), prefix, float(warmup)))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
