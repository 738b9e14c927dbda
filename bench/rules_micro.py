"""Microseconds per event spent in the pure rules: `decode_event` and `apply`.

    .venv/bin/python -m bench.rules_micro            # about 30 s
    .venv/bin/python -m bench.rules_micro --profile  # cProfile of both, top entries

No broker, no Faust: a realistic gateway mix (sessions created, activated,
rounds with a few gaps, late rounds and re-sends, extensions, closes) is built
in memory, then decoded and applied as the agent would, and the best of a few
repeats is reported so that other load on the machine counts as little as
possible. Also times the changelog codec on the final table (closed
sessions), and sizes a closed session against the tombstone it leaves.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from app.rules import (
    SECOND,
    Delivery,
    Policy,
    Purge,
    Source,
    Tombstone,
    apply,
    decode_event,
    decode_state,
    encode_state,
    format_timestamp,
    parse_timestamp,
)

T0 = parse_timestamp("2024-05-01T12:00:00Z")
POLICY = Policy()


def session_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """One session as its gateway sends it: 20 rounds, one pair in ten
    swapped, one round in twenty re-sent; an extension and a close."""
    sid = f"sess-{n:07d}"
    t = T0 + rng.randrange(0, 600) * SECOND
    events: list[dict[str, Any]] = []

    def add(kind: str, at: int, **fields: Any) -> None:
        events.append({"event_id": f"{sid}-{len(events)}", "type": kind, "session_id": sid,
                       "tenant_id": f"tenant-{n % 50}", "occurred_at": format_timestamp(at), **fields})

    add("session.created", t, provider_id="provider-a", model="model-x", ttl_secs=3600,
        metadata={"team": "search", "user": f"u-{n}"})
    add("session.activated", t + SECOND, initial_token_count=rng.randrange(100, 5000))
    rounds = list(range(1, 21))
    for i in range(0, 19, 10):
        if rng.random() < 0.5:
            rounds[i], rounds[i + 1] = rounds[i + 1], rounds[i]
    for k, number in enumerate(rounds):
        add("round.completed", t + (2 + k) * SECOND, round=number, delta_token_count=rng.randrange(10, 900))
        if rng.random() < 0.05:
            events.append(events[-1])  # a gateway re-send: the same bytes again
    add("session.extended", t + 30 * SECOND, ttl_secs=7200)
    add("session.closed", t + 40 * SECOND, reason="done")
    return events


def gateway_mix(sessions: int, seed: int = 7) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) in topic order: sessions interleaved as
    concurrent gateways send them."""
    rng = random.Random(seed)
    streams = [session_events(n, rng) for n in range(sessions)]
    records = []
    cursors = [0] * sessions
    live = list(range(sessions))
    while live:  # at every step one of the sessions still sending sends next
        index = rng.randrange(len(live))
        n = live[index]
        body = streams[n][cursors[n]]
        cursors[n] += 1
        if cursors[n] == len(streams[n]):
            live[index] = live[-1]
            live.pop()
        records.append((n % 8, body["session_id"].encode(), orjson.dumps(body)))
    return records


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """CPU seconds of the fastest of `repeats` runs: CPU time, so that other
    processes on the machine count as little as possible."""
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        timings.append(time.process_time() - started)
    return min(timings)


def measure(sessions: int, repeats: int) -> dict[str, float]:
    records = gateway_mix(sessions)
    offsets: dict[int, int] = {}
    sources = []
    for partition, _, _ in records:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        sources.append(Source("session-events", partition, offset))
    now = T0 + 3600 * SECOND  # after every event, before any expiry

    def decode_all() -> None:
        for _, key, value in records:
            decode_event(key, value, POLICY)

    deliveries = [Delivery(source, decode_event(key, value, POLICY))
                  for source, (_, key, value) in zip(sources, records, strict=True)]
    keyed = [(key.decode(), delivery) for (_, key, _), delivery in zip(records, deliveries, strict=True)]
    table: dict[str, Any] = {}

    def apply_all() -> None:
        table.clear()
        for session_id, delivery in keyed:
            new_state, _ = apply(table.get(session_id), delivery, now, POLICY)
            if new_state is not None:
                table[session_id] = new_state

    decode_secs = best_of(repeats, decode_all)
    apply_secs = best_of(repeats, apply_all)
    values = list(table.values())
    encoded = [encode_state(value) for value in values]
    encode_secs = best_of(repeats, lambda: [encode_state(value) for value in values])
    decode_state_secs = best_of(repeats, lambda: [decode_state(data) for data in encoded])
    # What each closed session leaves once its retention is over (SPEC §5.10).
    tombstones = [encode_state(purged) for purged in
                  (apply(value, Purge(value.record.session_id), value.due_at(POLICY), POLICY)[0] for value in values)
                  if isinstance(purged, Tombstone)]
    return {
        "events": len(records),
        "decode_us": decode_secs / len(records) * 1e6,
        "apply_us": apply_secs / len(records) * 1e6,
        "encode_state_us": encode_secs / len(values) * 1e6,
        "decode_state_us": decode_state_secs / len(values) * 1e6,
        "closed_session_bytes": sum(map(len, encoded)) / len(encoded),
        "closed_session_memory": memory_per_value(encoded),
        "tombstone_bytes": sum(map(len, tombstones)) / len(tombstones),
        "tombstone_memory": memory_per_value(tombstones),
    }


def memory_per_value(encoded: list[bytes], count: int = 10_000) -> float:
    """Bytes allocated per value for `count` values decoded from `encoded`
    (as a recovering worker holds them), the list that holds them excluded."""
    samples = [encoded[n % len(encoded)] for n in range(count)]
    tracemalloc.start()
    started = tracemalloc.get_traced_memory()[0]
    values = [decode_state(data) for data in samples]
    allocated = tracemalloc.get_traced_memory()[0] - started - sys.getsizeof(values)
    tracemalloc.stop()
    return allocated / len(values)


def profile(sessions: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    measure(sessions, 1)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile(args.sessions)
        return
    figures = measure(args.sessions, args.repeats)
    print(f"events                {figures['events']}")
    print(f"decode_event          {figures['decode_us']:.2f} us/event")
    print(f"apply                 {figures['apply_us']:.2f} us/event")
    print(f"encode_state          {figures['encode_state_us']:.2f} us/value")
    print(f"decode_state          {figures['decode_state_us']:.2f} us/value")
    print(f"closed session        {figures['closed_session_bytes']:.0f} bytes encoded, "
          f"{figures['closed_session_memory']:.0f} bytes in memory")
    print(f"tombstone             {figures['tombstone_bytes']:.0f} bytes encoded, "
          f"{figures['tombstone_memory']:.0f} bytes in memory")


if __name__ == "__main__":
    main()
