"""The baseline: a plain aiokafka loop, no Faust, no table.

Consumes the input topic, parses each event with orjson and produces one
record per event (the parsed event re-encoded), committing after each
fetched batch once its records are acknowledged. Same producer settings as
the worker (acks=all, linger 5 ms). Run as a subprocess so it has a process
of its own, as the worker does:

    python -m bench.baseline BOOTSTRAP TOPIC OUT_TOPIC COUNT

Prints one JSON line: events, seconds, events_per_sec, cpu_secs.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def run(bootstrap: str, topic: str, out_topic: str, count: int) -> dict:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-baseline",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    seen = 0
    started = cpu_started = None
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not batch:
                continue
            if started is None:
                started, cpu_started = time.monotonic(), time.process_time()
            futures = []
            for messages in batch.values():
                for message in messages:
                    event = orjson.loads(message.value)
                    futures.append(await producer.send(out_topic, orjson.dumps(event), key=message.key))
                    seen += 1
            await asyncio.gather(*futures)
            await consumer.commit()
        seconds = time.monotonic() - started
        return {"events": seen, "seconds": round(seconds, 3), "events_per_sec": round(seen / seconds),
                "cpu_secs": round(time.process_time() - cpu_started, 3)}
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    bootstrap, topic, out_topic, count = sys.argv[1:5]
    print(orjson.dumps(asyncio.run(run(bootstrap, topic, out_topic, int(count)))).decode(), flush=True)
