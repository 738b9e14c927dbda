"""What billing reads, on a big ledger: `accountant usage` of one tenant-month
and `accountant export` of one month.

    .venv/bin/python -m bench.ledger_billing                        # 10,000,000 closures (~30 min here)
    .venv/bin/python -m bench.ledger_billing --closures 1000000     # smaller

The ledger is filled by COPY straight into ``closures`` and ``closure_ids``
(the ledger's own write path is bench/ledger.py's): ``--closures`` closures
of ``--tenants`` tenants, 3 providers x 2 models, over ``--months`` months
(so one partition per month), about 450 bytes each with the jsonb record,
plus one adjustment per 1,000 closures. Then, on the middle month:

- ``usage``: the ``ledger_usage`` query behind `accountant usage --period
  --by model` for ``--queries`` different tenants (target < 200 ms), and
  the whole command once (a Python process: its start-up counts too);
- ``export``: `accountant export`'s records (every tenant's usage by model,
  then the adjustments) written as CSV and as JSON lines to /dev/null, the
  month's closures aggregated per second (target >= 500,000), with the
  process's peak memory: it streams.

PostgreSQL is a LocalPostgres with default settings (fsync on), unless
ACCOUNTANT_LEDGER_DSN names a server whose role may create databases. The
machine has 2 cores shared with other work: its load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import psycopg

from app.dev.postgres import scratch_database
from app.ledger.export import export_records, write_export
from app.ledger.migrations import load_migrations, migrate
from app.ledger.usage import UsageQuery, fetch_usage
from bench.ledger import postgres_server
from tests.support import REPO

USAGE_TARGET_MS = 200
EXPORT_TARGET_PER_SEC = 500_000
FIRST_MONTH = date(2025, 1, 1)
PROVIDERS = {"openai": ("gpt-4o", "o3-mini"), "anthropic": ("claude-sonnet-4", "claude-3-5-haiku"),
             "local": ("llama-70b", "qwen-32b")}

_COPY = """
COPY closures (closure_id, session_id, tenant_id, provider_id, model, reason, created_at, activated_at, closed_at,
               ttl_secs, round_count, missing_rounds, initial_token_count, delta_token_count, total_token_count,
               record, content_sha256, emitted_at, source_topic, source_partition, source_offset, period, late)
FROM STDIN
"""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _month(index: int) -> date:
    return date(FIRST_MONTH.year + (FIRST_MONTH.month - 1 + index) // 12, (FIRST_MONTH.month - 1 + index) % 12 + 1, 1)


def _lines(count: int, tenants: int, months: int, seed: int) -> Any:
    """COPY text lines of ``count`` closures, in chunks of bytes."""
    rng = random.Random(seed)
    models = [(provider, model) for provider, names in PROVIDERS.items() for model in names]
    chunk: list[bytes] = []
    for index in range(count):
        month = _month(index % months)
        day, second = 1 + rng.randrange(28), rng.randrange(86_400)
        closed = f"{month:%Y-%m}-{day:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
        tenant = f"tenant-{rng.randrange(tenants):05d}"
        provider, model = models[rng.randrange(len(models))]
        initial, delta, rounds = rng.randrange(10_000), rng.randrange(100_000), rng.randrange(1, 40)
        closure_id = f"c-{index:09d}"
        record = orjson.dumps({
            "session_id": closure_id, "tenant_id": tenant, "provider_id": provider, "model": model,
            "created_at": closed, "activated_at": closed, "closed_at": closed, "ttl_secs": 3600,
            "round_count": rounds, "initial_token_count": initial, "delta_token_count": delta,
            "metadata": {"team": f"team-{index % 50}", "region": "eu-west-1"}}).decode()
        chunk.append("\t".join((
            closure_id, closure_id, tenant, provider, model, "closed", closed, closed, closed, "3600", str(rounds),
            "0", str(initial), str(delta), str(initial + delta), record.replace("\\", "\\\\"),
            "\\\\x" + rng.randbytes(32).hex(), closed, "session-closures", str(index % 8), str(index // 8),
            month.isoformat(), "f")).encode() + b"\n")
        if len(chunk) == 10_000:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


def fill(dsn: str, closures: int, tenants: int, months: int, log: Any = _log) -> dict[str, Any]:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as connection:
        for index in range(months):
            connection.execute("SELECT ledger_ensure_partition(%s)", (_month(index),))
        with connection.cursor() as cursor, cursor.copy(_COPY) as copy:
            for number, data in enumerate(_lines(closures, tenants, months, seed=2026)):
                copy.write(data)
                if number % 100 == 99:
                    done = (number + 1) * 10_000
                    log(f"  {done:,} closures copied, {done / (time.perf_counter() - started):,.0f}/s")
        copied = time.perf_counter() - started
        connection.execute("INSERT INTO closure_ids SELECT closure_id, period, content_sha256 FROM closures")
        connection.execute(
            "INSERT INTO ledger_adjustments (closure_id, tenant_id, token_count, reason, created_by, period, late, "
            "idempotency_key) SELECT closure_id, tenant_id, -1, 'bench', 'bench', period, false, 'bench-' || "
            "closure_id FROM closures WHERE source_offset % 125 = 0")
        connection.execute("VACUUM ANALYZE")
        [(size,)] = connection.execute("SELECT pg_database_size(current_database())").fetchall()
    return {"closures": closures, "copy_secs": round(copied, 1), "copy_per_sec": round(closures / copied),
            "fill_secs": round(time.perf_counter() - started, 1), "database_bytes": int(size)}


def usage_figures(dsn: str, month: date, tenants: int, queries: int) -> dict[str, Any]:
    times = []
    with psycopg.connect(dsn) as connection:
        for index in range(queries):
            query = UsageQuery(f"tenant-{index * 7919 % tenants:05d}", None, None, "model", month)
            started = time.perf_counter()
            rows = fetch_usage(connection, query)
            times.append((time.perf_counter() - started) * 1000)
            assert rows and rows[0].closures > 0
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "usage", "--tenant", "tenant-00000", "--period",
                    f"{month:%Y-%m}", "--by", "model", "--dsn", dsn], cwd=REPO, check=True, capture_output=True,
                   env={key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")})
    command_ms = (time.perf_counter() - started) * 1000
    return {"queries": queries, "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(sorted(times)[max(0, int(len(times) * 0.95) - 1)], 1), "max_ms": round(max(times), 1),
            "first_ms": round(times[0], 1), "command_ms": round(command_ms), "target_ms": USAGE_TARGET_MS}


def export_figures(dsn: str, month: date) -> dict[str, Any]:
    with psycopg.connect(dsn) as connection:
        [(closures,)] = connection.execute("SELECT count(*) FROM closures WHERE period = %s", (month,)).fetchall()
    figures: dict[str, Any] = {"month_closures": closures, "target_per_sec": EXPORT_TARGET_PER_SEC,
                               "rss_before_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    for fmt in ("csv", "jsonl"):
        with psycopg.connect(dsn) as connection, open(os.devnull, "w") as sink:
            started = time.perf_counter()
            records = write_export(export_records(connection, month), sink, fmt)
            secs = time.perf_counter() - started
        figures[fmt] = {"secs": round(secs, 2), "records": records, "closures_per_sec": round(closures / secs)}
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_billing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--closures", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--queries", type=int, default=30, help="usage queries, each of another tenant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with postgres_server() as server_dsn, scratch_database(server_dsn, "bench_billing") as dsn:
        async def schema() -> None:
            async with await psycopg.AsyncConnection.connect(dsn) as connection:
                await migrate(connection, load_migrations())

        asyncio.run(schema())
        _log(f"filling the ledger with {args.closures:,} closures by COPY")
        results: dict[str, Any] = {"fill": fill(dsn, args.closures, args.tenants, args.months)}
        month = _month(args.months // 2)
        _log(f"usage of one tenant-month ({month:%Y-%m}), {args.queries} tenants")
        results["usage"] = usage_figures(dsn, month, args.tenants, args.queries)
        _log(f"export of {month:%Y-%m}")
        results["export"] = export_figures(dsn, month)
    results["load_average"] = {"before": [round(value, 2) for value in load_before],
                               "after": [round(value, 2) for value in os.getloadavg()]}
    usage, export = results["usage"], results["export"]
    print(f"ledger:  {args.closures:,} closures, {results['fill']['database_bytes'] / 2**30:.1f} GiB, copied at "
          f"{results['fill']['copy_per_sec']:,}/s")
    print(f"usage:   median {usage['median_ms']} ms, p95 {usage['p95_ms']} ms, max {usage['max_ms']} ms "
          f"(target < {USAGE_TARGET_MS} ms); the whole command {usage['command_ms']} ms")
    for fmt in ("csv", "jsonl"):
        print(f"export {fmt}: {export['month_closures']:,} closures in {export[fmt]['secs']} s = "
              f"{export[fmt]['closures_per_sec']:,} closures/s (target >= {EXPORT_TARGET_PER_SEC:,}), "
              f"{export[fmt]['records']:,} records")
    print(f"peak memory of this process: {export['rss_before_mib']} MiB before the export, "
          f"{export['peak_rss_mib']} MiB after; load average {results['load_average']}")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
