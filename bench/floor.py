"""Faust's own floor: an agent that only counts, with the worker's Faust settings.

Reads the input topic through the same Faust machinery as the worker
(consumer thread, conductor, stream, acks) but does no accounting, no table
and no output: the gap between this and the raw baseline is Faust's per-event
cost, the gap between this and the worker is ours.

    python -m bench.floor BOOTSTRAP TOPIC COUNT WEB_PORT DATA_DIR

Prints one JSON line like bench.baseline.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import faust
import orjson


def main() -> None:
    bootstrap, topic_name, count, web_port, data_dir = sys.argv[1:6]
    total = int(count)
    app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=data_dir, autodiscover=False, consumer_auto_offset_reset="earliest",
                    web_enabled=False, web_port=int(web_port), web_bind="127.0.0.1", web_host="127.0.0.1",
                    producer_acks=-1, producer_linger=0.005, stream_wait_empty=True,
                    key_serializer="raw", value_serializer="raw")
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    state = {"seen": 0, "started": 0.0, "cpu": 0.0}

    @app.agent(topic, name="count")
    async def count_events(stream: faust.StreamT) -> None:
        async for _event in stream.events():
            if state["seen"] == 0:
                state["started"], state["cpu"] = time.monotonic(), time.process_time()
            state["seen"] += 1
            if state["seen"] >= total:
                seconds = time.monotonic() - state["started"]
                result = {"events": total, "seconds": round(seconds, 3), "events_per_sec": round(total / seconds),
                          "cpu_secs": round(time.process_time() - state["cpu"], 3)}
                os.write(sys.__stdout__.fileno(), orjson.dumps(result) + b"\n")
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "info"]
    app.main()


if __name__ == "__main__":
    main()
