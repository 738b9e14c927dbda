"""The peer: the same per-session accumulation written with Quix Streams 3.x.

Consumes the pre-loaded input topic, parses each event (JSON), keeps each
session's token total in Quix's state (RocksDB, with its changelog topic),
and produces one record per event with the session's running total, as a
team would write this job with Quix Streams. Quix processes one message at
a time and writes its state and changelog at each checkpoint (every 5 s by
default). Runs from the peer's own venv (bench/peer_env.py), which
bench.run makes on first use:

    .venv-peer/bin/python -m bench.peer_quix BOOTSTRAP TOPIC OUT_TOPIC COUNT STATE_DIR [GUARANTEE]

GUARANTEE is Quix's `processing_guarantee`: at-least-once (default) or
exactly-once (its transactional producer, committed at each checkpoint).

Prints one JSON line: events, seconds, events_per_sec, cpu_secs.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import orjson
from quixstreams import Application, State


def run(bootstrap: str, topic_name: str, out_topic_name: str, count: int, state_dir: str,
        guarantee: str = "at-least-once") -> dict[str, Any]:
    app = Application(broker_address=bootstrap, consumer_group=f"peer-quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", state_dir=state_dir, use_changelog_topics=True,
                      processing_guarantee=guarantee, loglevel="WARNING")  # type: ignore[arg-type]
    topic = app.topic(topic_name, value_deserializer="json")
    out_topic = app.topic(out_topic_name, value_serializer="json")
    progress = {"seen": 0, "started": 0.0, "cpu": 0.0, "seconds": 0.0, "cpu_secs": 0.0}

    def accumulate(event: dict[str, Any], state: State) -> dict[str, Any]:
        total = state.get("tokens", 0) + event.get("delta_token_count", 0) + event.get("initial_token_count", 0)
        state.set("tokens", total)
        return {"session_id": event.get("session_id"), "tokens": total}

    def count_and_stop(_: Any) -> None:
        if progress["seen"] == 0:
            progress["started"], progress["cpu"] = time.monotonic(), time.process_time()
        progress["seen"] += 1
        if progress["seen"] == count:
            progress["seconds"] = time.monotonic() - progress["started"]
            progress["cpu_secs"] = time.process_time() - progress["cpu"]
            app.stop()

    frame = app.dataframe(topic).apply(accumulate, stateful=True)
    frame = frame.to_topic(out_topic)
    frame.update(count_and_stop)
    app.run()
    seconds = progress["seconds"]
    return {"events": progress["seen"], "seconds": round(seconds, 3), "events_per_sec": round(count / seconds),
            "cpu_secs": round(progress["cpu_secs"], 3)}


if __name__ == "__main__":
    bootstrap, topic, out_topic, count, state_dir = sys.argv[1:6]
    guarantee = sys.argv[6] if len(sys.argv) > 6 else "at-least-once"
    print(orjson.dumps(run(bootstrap, topic, out_topic, int(count), state_dir, guarantee)).decode(), flush=True)
