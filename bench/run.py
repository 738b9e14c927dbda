"""Run the benchmarks and write bench/results/latest.{md,json}.

    .venv/bin/python -m bench.run            # full: about 10-15 minutes
    .venv/bin/python -m bench.run --quick    # smaller loads: under 3 minutes

Starts a local Kafka broker on 127.0.0.1 (app/dev/kafka.py) unless
ACCOUNTANT_BROKER names one, and for `ledger` a local PostgreSQL unless
ACCOUNTANT_LEDGER_DSN names one. See docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.benchmarks import Context, Scale, latency_and_ttl, recovery_and_memory, throughput
from bench.common import bench_broker, log
from bench.ingest import ingest
from bench.ledger import for_bench_run as ledger_for_bench_run
from bench.machine import describe

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("throughput", "latency", "recovery", "ingest", "ledger")


async def _run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    scale = Scale.quick() if args.quick else Scale()
    ctx = Context(bootstrap, workdir, scale, log)
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "machine": describe(),
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.monotonic()
    if "throughput" in args.only:
        results["throughput"] = await throughput(ctx)
    if "latency" in args.only:
        # TTL under load at 80 % of the throughput just measured (or of the
        # last full run's, bench/results/latest.json, when it was not run).
        measured = results.get("throughput") or (_load(RESULTS / "latest.json") or {}).get("throughput") or {}
        worker_rate = measured.get("worker", {}).get("events_per_sec", 20_000)
        ttl_load_rate = int(0.8 * worker_rate)
        at_least_once = await latency_and_ttl(ctx, "at_least_once", ttl_load_rate)
        results.update({key: at_least_once[key] for key in ("ttl", "latency_sustainable", "latency")})
        results["ttl_under_load"] = at_least_once["ttl_under_load"]
        results["latency_exactly_once"] = await latency_and_ttl(ctx, "exactly_once", ttl_load_rate)
    if "recovery" in args.only:
        results["recovery"] = await recovery_and_memory(ctx, args.stores)
    if "ingest" in args.only:
        results["ingest"] = await ingest(bootstrap, workdir, log, seconds=5.0 if args.quick else 10.0)
    if "ledger" in args.only:
        results["ledger"] = await ledger_for_bench_run(bootstrap, workdir, quick=args.quick, log=log)
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["total_secs"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads (under 3 minutes)")
    parser.add_argument("--only", nargs="+", choices=ALL, default=list(ALL), help="run only these benchmarks")
    parser.add_argument("--stores", nargs="+", choices=("memory", "rocksdb"), default=["memory", "rocksdb"],
                        help="table stores for recovery and memory")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.md and latest.json")
    parser.add_argument("--name", default="latest", help="base name of the result files")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="usage-accountant-bench-") as tmp, bench_broker(Path(tmp)) as bootstrap:
        results = asyncio.run(_run(args, bootstrap, Path(tmp)))
    results["broker"] = "external (ACCOUNTANT_BROKER)" if os.environ.get("ACCOUNTANT_BROKER") else "LocalKafka"
    args.out.mkdir(parents=True, exist_ok=True)
    previous = _load(args.out / "before.json")
    (args.out / f"{args.name}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    markdown = report.render(results, previous)
    (args.out / f"{args.name}.md").write_text(markdown)
    print(report.table(results))
    log(f"wrote {args.out / (args.name + '.md')} and .json")
    return 0


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
