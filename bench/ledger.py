"""Closures per second into the ledger, side by side with a plain psycopg loop.

    .venv/bin/python -m bench.ledger                  # 100,000 closures, 3 rounds, ~1-2 minutes
    .venv/bin/python -m bench.ledger --end-to-end     # also through Kafka with `accountant ledger`

Same run, same PostgreSQL (a LocalPostgres with default, durable settings,
unless ACCOUNTANT_LEDGER_DSN names a server whose role may create databases),
same closures, same batch size, each round into a fresh database:

- ``ledger``: what `accountant ledger` does per fetched batch, minus Kafka:
  decode and validate each closure (in a thread, while the previous batch is
  written), apply the conflict rule, and write rows, duplicates, rejects and
  offsets in one transaction;
- ``insert_loop``: what a billing team would write first: parse the JSON and
  ``INSERT ... ON CONFLICT (closure_id) DO NOTHING`` one closure at a time,
  committing once per batch, into the same table (the target's baseline);
- ``insert_executemany``: the same INSERTs through one ``executemany()`` per
  batch, which psycopg 3 pipelines: the fastest plain-INSERT client, shown too;
- ``end_to_end`` (optional): closures produced to a topic first, then the time
  an `accountant ledger` subprocess takes from its first row to lag 0.

Target (issue 13): ledger >= 20,000 closures/s and >= 0.5 x insert_loop.
The machine's load average is recorded: other processes share the 2 cores.
``python -m bench.run --only ledger`` runs it too (``for_bench_run``), with
the end-to-end figure on bench.run's broker.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg

from app.dev.postgres import scratch_database
from app.ledger.batch import BatchOutcome, LedgerBatch, OffsetAdvance
from app.ledger.closure_row import ClosureRow, SourceOffset, decode_closure
from app.ledger.metrics import LedgerMetrics
from app.ledger.postgres_store import PostgresLedgerStore
from app.ledger.retry import DatabaseRetry
from app.ledger.writer import BatchWriter
from tests.support.closures import ClosureSet

TOPIC = "session-closures"
TARGET_PER_SEC = 20_000
TARGET_RATIO = 0.5

_PLAIN_INSERT = """
INSERT INTO closures (closure_id, session_id, tenant_id, provider_id, model, reason, created_at, activated_at,
                      closed_at, ttl_secs, round_count, missing_rounds, initial_token_count, delta_token_count,
                      total_token_count, record, content_sha256, emitted_at, source_topic, source_partition,
                      source_offset, period, late)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        date_trunc('month', %s::timestamptz AT TIME ZONE 'UTC')::date, false)
ON CONFLICT DO NOTHING
"""
_MONTHS = "SELECT ledger_ensure_partition(date_trunc('month', closed::timestamptz AT TIME ZONE 'UTC')::date) " \
          "FROM unnest(%s::text[]) AS closed GROUP BY 1"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _batches(values: list[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    for start in range(0, len(values), size):
        yield start, values[start:start + size]


async def _ledger_round(dsn: str, values: list[bytes], batch_size: int) -> float:
    """Seconds to write ``values`` the ledger's way (app/ledger/consumer.py minus Kafka): each
    batch decoded in a thread while the previous one is written, one transaction per batch."""
    store = PostgresLedgerStore(dsn)
    await store.migrate()
    metrics = LedgerMetrics()
    written = []

    async def on_written(outcome: BatchOutcome) -> None:
        assert not outcome.fenced and not outcome.rejects
        written.append(outcome.written)

    writer = BatchWriter(store, metrics, DatabaseRetry(asyncio.Event(), metrics), on_written)
    stored: int | None = None
    started = time.perf_counter()
    for start, chunk in _batches(values, batch_size):
        rows = await asyncio.to_thread(_decode_all, start, chunk)
        next_offset = start + len(chunk)
        await writer.submit(LedgerBatch("bench", rows, (), (OffsetAdvance(TOPIC, 0, stored, next_offset),)))
        stored = next_offset
    await writer.drain()
    elapsed = time.perf_counter() - started
    await store.close()
    assert sum(written) == len(values)
    return elapsed


def _decode_all(first_offset: int, chunk: list[bytes]) -> tuple[ClosureRow, ...]:
    rows = tuple(decode_closure(SourceOffset(TOPIC, 0, first_offset + index), None, value)
                 for index, value in enumerate(chunk))
    assert all(type(row) is ClosureRow for row in rows), "the benchmark's closures must all be valid"
    return rows


def _insert_round(dsn: str, values: list[bytes], batch_size: int, *, pipelined: bool) -> float:
    """Seconds to write ``values`` with INSERT ... ON CONFLICT DO NOTHING per closure:
    one execute() each (the loop), or executemany() per batch (psycopg pipelines it)."""
    async def schema() -> None:
        store = PostgresLedgerStore(dsn)
        await store.migrate()
        await store.close()

    asyncio.run(schema())
    with psycopg.connect(dsn) as connection:
        # The months' partitions first, as the ledger makes them outside its timed batches' transactions.
        connection.execute(_MONTHS, ([orjson.loads(value)["record"]["closed_at"] for value in values],))
        connection.commit()
        started = time.perf_counter()
        for start, chunk in _batches(values, batch_size):
            with connection.cursor() as cursor:
                params = (_plain_params(value, start + index) for index, value in enumerate(chunk))
                if pipelined:
                    cursor.executemany(_PLAIN_INSERT, params)
                else:
                    for one in params:
                        cursor.execute(_PLAIN_INSERT, one)
            connection.commit()
        elapsed = time.perf_counter() - started
        [(count,)] = connection.execute("SELECT count(*) FROM closures").fetchall()
    assert count == len(values)
    return elapsed


def _plain_params(value: bytes, offset: int) -> tuple[Any, ...]:
    closure = orjson.loads(value)
    record = closure["record"]
    return (closure["closure_id"], record["session_id"], record["tenant_id"], record["provider_id"], record["model"],
            closure["reason"], record["created_at"], record["activated_at"], record["closed_at"], record["ttl_secs"],
            record["round_count"], closure["missing_rounds"], record["initial_token_count"],
            record["delta_token_count"], closure["total_token_count"], orjson.dumps(record).decode(),
            hashlib.sha256(value).digest(), closure["emitted_at"], TOPIC, 0, offset, record["closed_at"])


async def _end_to_end(server_dsn: str, bootstrap: str, population: ClosureSet, workdir: Path) -> dict[str, Any]:
    from tests.support.ledger_processes import LedgerDeployment

    with scratch_database(server_dsn, "bench_ledger") as dsn:
        deployment = LedgerDeployment(bootstrap, dsn, f"bench-{uuid.uuid4().hex[:8]}.", "bench-ledger", workdir,
                                      partitions=8)
        await asyncio.to_thread(deployment.create_topic)
        await asyncio.to_thread(deployment.publish_closures, population.closures)
        ledger = deployment.ledger("bench-ledger").start()
        try:
            first_row = None
            while first_row is None:
                ledger.check_alive()
                try:
                    rows = await asyncio.to_thread(deployment.query, "SELECT count(*) FROM closures")
                except psycopg.errors.UndefinedTable:  # not migrated yet
                    rows = [(0,)]
                if rows[0][0] > 0:
                    first_row = time.perf_counter()
                await asyncio.sleep(0.01)
            await asyncio.to_thread(deployment.wait_caught_up, 600, alive=[ledger])
            elapsed = time.perf_counter() - first_row
        finally:
            ledger.stop()
    return {"closures": len(population.closures), "secs": round(elapsed, 2),
            "closures_per_sec": round(len(population.closures) / elapsed)}


async def ledger_benchmark(server_dsn: str, *, closures: int = 100_000, batch_size: int = 5000, rounds: int = 3,
                           bootstrap: str | None = None, workdir: Path | None = None,
                           log: Any = _log) -> dict[str, Any]:
    """The figures of one run (see the module's docstring). ``bootstrap`` adds the end-to-end figure."""
    population = ClosureSet(closures, seed=2026)
    values = [orjson.dumps(item) for item in population.closures]
    secs: dict[str, list[float]] = {"ledger": [], "insert_loop": [], "insert_executemany": []}
    for round_number in range(1, rounds + 1):
        # Interleaved, so that a slow patch of the machine hits all three.
        with scratch_database(server_dsn, "bench_ledger") as dsn:
            secs["ledger"].append(await _ledger_round(dsn, values, batch_size))
        with scratch_database(server_dsn, "bench_ledger") as dsn:
            secs["insert_loop"].append(await asyncio.to_thread(_insert_round, dsn, values, batch_size,
                                                               pipelined=False))
        with scratch_database(server_dsn, "bench_ledger") as dsn:
            secs["insert_executemany"].append(await asyncio.to_thread(_insert_round, dsn, values, batch_size,
                                                                      pipelined=True))
        log(f"round {round_number}: " + ", ".join(f"{name} {closures / times[-1]:,.0f}/s"
                                                   for name, times in secs.items()))
    rates = {name: closures / statistics.median(times) for name, times in secs.items()}
    ledger_rate, loop_rate = rates["ledger"], rates["insert_loop"]
    results: dict[str, Any] = {
        "closures": closures,
        "batch_size": batch_size,
        "rounds": rounds,
        **{name: {"closures_per_sec": round(rates[name]), "secs": [round(value, 2) for value in times]}
           for name, times in secs.items()},
        "ratio_to_insert_loop": round(ledger_rate / loop_rate, 2),
        "ratio_to_insert_executemany": round(ledger_rate / rates["insert_executemany"], 2),
        "targets": {"closures_per_sec": TARGET_PER_SEC, "ratio_to_insert_loop": TARGET_RATIO},
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    results["held"] = ledger_rate >= TARGET_PER_SEC and ledger_rate / loop_rate >= TARGET_RATIO
    if bootstrap is not None:
        log("end to end: producing the closures, then timing `accountant ledger`")
        results["end_to_end"] = await _end_to_end(server_dsn, bootstrap, population,
                                                  workdir or Path(tempfile.mkdtemp(prefix="bench-ledger-")))
    return results


@contextmanager
def postgres_server(log: Any = _log) -> Iterator[str]:
    """The DSN of a server whose role may create databases: ACCOUNTANT_LEDGER_DSN's,
    else a LocalPostgres with default settings (fsync on, as in production)."""
    server_dsn = os.environ.get("ACCOUNTANT_LEDGER_DSN", "").strip()
    if server_dsn:
        yield server_dsn
        return
    from app.dev.postgres import LocalPostgres

    with LocalPostgres() as postgres:
        log(f"local PostgreSQL at {postgres.dsn}")
        yield postgres.dsn


async def for_bench_run(bootstrap: str, workdir: Path, *, quick: bool, log: Any = _log) -> dict[str, Any]:
    """The figures for bench.run: smaller with ``quick``; end to end on its broker."""
    with postgres_server(log) as server_dsn:
        return await ledger_benchmark(server_dsn, closures=20_000 if quick else 100_000, rounds=2 if quick else 3,
                                      bootstrap=bootstrap, workdir=workdir / "ledger", log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--closures", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000, help="closures per transaction (both ways)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true", help="also through Kafka with `accountant ledger`")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from app.dev.kafka import LocalKafka

    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp, postgres_server() as server_dsn:
        workdir = Path(tmp)
        kafka = None
        try:
            bootstrap = None
            if args.end_to_end:
                bootstrap = os.environ.get("ACCOUNTANT_BROKER", "").strip()
                if not bootstrap:
                    kafka = LocalKafka(workdir=workdir / "kafka").start()
                    bootstrap = kafka.bootstrap
                    _log(f"local Kafka at {bootstrap}")
            results = asyncio.run(ledger_benchmark(server_dsn, closures=args.closures, batch_size=args.batch_size,
                                                   rounds=args.rounds, bootstrap=bootstrap, workdir=workdir))
        finally:
            if kafka is not None:
                kafka.stop()
    ledger, loop = results["ledger"]["closures_per_sec"], results["insert_loop"]["closures_per_sec"]
    print(f"ledger:       {ledger:>9,} closures/s   (target >= {TARGET_PER_SEC:,})")
    print(f"insert loop:  {loop:>9,} closures/s")
    print(f"ratio:        {results['ratio_to_insert_loop']:>9.2f}            (target >= {TARGET_RATIO})")
    print(f"executemany:  {results['insert_executemany']['closures_per_sec']:>9,} closures/s   "
          f"(ratio {results['ratio_to_insert_executemany']:.2f}; psycopg pipelines the same INSERTs)")
    if "end_to_end" in results:
        print(f"end to end:   {results['end_to_end']['closures_per_sec']:>9,} closures/s   "
              "(Kafka -> accountant ledger -> PostgreSQL)")
    print("targets " + ("held" if results["held"] else "MISSED"))
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
