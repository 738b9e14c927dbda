"""Tables of a benchmark run: plain text for the terminal, markdown for the results file."""

from __future__ import annotations

import re
from typing import Any

Row = tuple[str, str, str, str]  # figure, value, target, verdict


def _get(data: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}".strip()
    return str(value)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("held" if ok else "MISSED")


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    tp = results.get("throughput")
    if tp:
        rate = _get(tp, "worker", "events_per_sec")
        ratio = tp.get("ratio_to_baseline")
        peer_ratio = tp.get("ratio_to_peer")
        peer = _get(tp, "peer", "events_per_sec")
        out += [
            ("throughput: worker", _num(rate, "ev/s"), ">= 25,000 ev/s", _verdict(rate >= 25_000 if rate else None)),
            ("throughput: baseline (aiokafka loop)", _num(_get(tp, "baseline", "events_per_sec"), "ev/s"), "", ""),
            ("throughput: peer (Quix Streams)", _num(peer, "ev/s") if peer else _get(tp, "peer", "skipped") or "n/a",
             "", ""),
            ("throughput: Faust floor (counting agent)", _num(_get(tp, "faust_floor", "events_per_sec"), "ev/s"),
             "", ""),
            ("throughput: worker / baseline", _num(ratio, "", 3), ">= 0.5", _verdict(ratio >= 0.5 if ratio else None)),
            ("throughput: worker / peer", _num(peer_ratio, "", 3), ">= 1.0",
             _verdict(peer_ratio >= 1.0 if peer_ratio else None)),
        ]
        eos = _get(tp, "worker_exactly_once", "events_per_sec")
        if eos is not None:
            eos_ratio = tp.get("exactly_once_ratio_to_at_least_once")
            eos_peer = _get(tp, "peer_exactly_once", "events_per_sec")
            eos_peer_ratio = tp.get("exactly_once_ratio_to_peer_exactly_once")
            out += [
                ("throughput: worker, exactly_once", _num(eos, "ev/s"), "", ""),
                ("throughput: peer (Quix Streams), exactly-once", _num(eos_peer, "ev/s") if eos_peer else "n/a",
                 "", ""),
                ("throughput: exactly_once / at_least_once", _num(eos_ratio, "", 3), ">= 0.8",
                 _verdict(eos_ratio >= 0.8 if eos_ratio else None)),
                ("throughput: exactly_once / baseline", _num(tp.get("exactly_once_ratio_to_baseline"), "", 3), "", ""),
                ("throughput: exactly_once / peer exactly-once", _num(eos_peer_ratio, "", 3), ">= 1.0",
                 _verdict(eos_peer_ratio >= 1.0 if eos_peer_ratio else None)),
            ]
        for name, label in (("worker", "worker"), ("worker_exactly_once", "worker, exactly_once"),
                            ("baseline", "baseline"), ("peer", "peer"), ("peer_exactly_once", "peer, exactly-once")):
            cpu = _get(tp, name, "cpu_us_per_event")
            if cpu is not None:
                out.append((f"throughput: {label} CPU per event", _num(cpu, "us", 1), "", ""))
    eos_latency = results.get("latency_exactly_once") or {}
    for lat, target, mode in ((results.get("latency_sustainable"), False, ""), (results.get("latency"), True, ""),
                              (eos_latency.get("latency"), True, ", exactly_once")):
        if not lat:
            continue
        for name in ("record", "closure"):
            p99 = _get(lat, name, "p99_ms")
            missing = _get(lat, name, "missing")
            value = (f"{_num(_get(lat, name, 'p50_ms'), '', 1)} / {_num(p99, '', 1)} / "
                     f"{_num(_get(lat, name, 'max_ms'), 'ms', 1)}")
            if missing:
                value += f" ({missing:,} not seen)"
            out.append((f"latency {lat['rate']:,} ev/s{mode}: {name} p50 / p99 / max", value,
                        "p99 < 100 ms" if target else "",
                        _verdict(p99 < 100 and not missing if p99 is not None else None) if target else ""))
        # The worker's share: send time to the CreateTime its producer stamped.
        for name, label in (("written", "changelog written"), ("closure_written", "closure written")):
            if _get(lat, name, "p99_ms") is not None:
                out.append((f"latency {lat['rate']:,} ev/s{mode}: {label} (CreateTime) p50 / p99 / max",
                            f"{_num(_get(lat, name, 'p50_ms'), '', 1)} / {_num(_get(lat, name, 'p99_ms'), '', 1)}"
                            f" / {_num(_get(lat, name, 'max_ms'), 'ms', 1)}", "", ""))
        out.append((f"latency {lat['rate']:,} ev/s{mode}: worker accounted",
                    _num(lat.get("worker_events_per_sec"), "ev/s"), "", ""))
    for ttl, label, limit_ms in ((results.get("ttl"), "", 1000), (results.get("ttl_under_load"), " under load", 2000),
                                 (eos_latency.get("ttl_under_load"), " under load, exactly_once", 2000)):
        if not ttl:
            continue
        p99 = _get(ttl, "lag", "p99_ms")
        if "rate" in ttl:
            label += f" ({_num(ttl.get('worker_events_per_sec'), 'ev/s')} accounted meanwhile)"
        missing = _get(ttl, "lag", "missing")
        out.append((f"TTL closure lag{label} ({ttl['sessions']:,} sessions): p50 / p99 / max",
                    f"{_num(_get(ttl, 'lag', 'p50_ms'), '', 0)} / {_num(p99, '', 0)} / "
                    f"{_num(_get(ttl, 'lag', 'max_ms'), 'ms', 0)}" + (f" ({missing:,} not closed)" if missing else ""),
                    f"p99 < {limit_ms:,} ms", _verdict(p99 < limit_ms and not missing if p99 is not None else None)))
    ingest = results.get("ingest")
    if ingest:
        clients = ingest["clients"]
        for run in ingest["runs"]:
            where = "POST /events" if run["path"] == "http" else "straight to Kafka"
            label = f"ingest: {where}, batches of {run['batch']:,}, {clients} clients"
            p50, p99 = _get(run, "latency", "p50_ms"), _get(run, "latency", "p99_ms")
            rate = _num(run["events_per_sec"], "ev/s")
            value = f"{rate} (request p50 / p99 {_num(p50, '', 1)} / {_num(p99, 'ms', 1)})"
            if run.get("failures"):
                value += f" failures {run['failures']}"
            out.append((label, value, "", ""))
            if run.get("ratio_to_kafka") is not None:
                out.append((f"ingest: POST /events / straight to Kafka, batches of {run['batch']:,}",
                            _num(run["ratio_to_kafka"], "", 3), "", ""))
            if run.get("server_cpu_us_per_event") is not None:
                out.append((f"ingest: API server CPU per event, batches of {run['batch']:,}",
                            _num(run["server_cpu_us_per_event"], "us", 1), "", ""))
    rec = results.get("recovery")
    if rec:
        sessions = rec["sessions"]
        for store, figures in rec["stores"].items():
            if "error" in figures:
                out.append((f"recovery {sessions:,} sessions [{store}]", "failed: see notes", "< 60 s", "n/a"))
                continue
            ready = figures.get("ready_secs")
            label = "from the changelog" if store == "rocksdb" else ""
            out.append((f"recovery {sessions:,} sessions [{store}] {label}".rstrip(), _num(ready, "s", 1), "< 60 s",
                        _verdict(ready < 60 if ready is not None else None)))
            if "restart_ready_secs" in figures:
                restart = figures["restart_ready_secs"]
                out.append((f"recovery {sessions:,} sessions [{store}] restart, local db", _num(restart, "s", 1),
                            "< 60 s", _verdict(restart < 60)))
            if ready is not None:
                out.append((f"recovery [{store}]: seconds per 100,000 sessions",
                            _num(ready / (sessions / 100_000), "s", 1), "", ""))
            out.append((f"memory [{store}]: RSS per 100,000 live sessions",
                        _num(figures.get("rss_per_100k_sessions_mib"), "MiB", 1), "", ""))
    led = results.get("ledger")
    if led:
        rate, ratio = _get(led, "ledger", "closures_per_sec"), led.get("ratio_to_insert_loop")
        n = f"{led['closures']:,} closures, {led['batch_size']:,} per transaction"
        out += [
            (f"ledger ({n}): closures/s", _num(rate, "/s"), ">= 20,000 /s",
             _verdict(rate >= 20_000 if rate is not None else None)),
            ("ledger: plain INSERT ... ON CONFLICT loop", _num(_get(led, "insert_loop", "closures_per_sec"), "/s"),
             "", ""),
            ("ledger / INSERT loop", _num(ratio, "", 2), ">= 0.5", _verdict(ratio >= 0.5 if ratio else None)),
            ("ledger: INSERTs by executemany (pipelined)",
             _num(_get(led, "insert_executemany", "closures_per_sec"), "/s"), "", ""),
        ]
        end_to_end = _get(led, "end_to_end", "closures_per_sec")
        if end_to_end is not None:
            out.append(("ledger end to end (Kafka -> accountant ledger -> PostgreSQL)", _num(end_to_end, "/s"),
                        "", ""))
    return out


def table(results: dict[str, Any]) -> str:
    data = [("figure", "value", "target", "verdict"), *rows(results)]
    widths = [max(len(row[i]) for row in data) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in data]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _md_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def render(results: dict[str, Any], before: dict[str, Any] | None) -> str:
    machine = results["machine"]
    parts = [
        "# Benchmark results",
        "",
        f"Run `{results['mode']}` started {results['started_at']}, took {results['total_secs']:.0f} s, "
        f"broker: {results.get('broker', 'LocalKafka')}, commit `{machine.get('git_commit')}`. "
        "Written by `python -m bench.run`; see docs/benchmarks.md for what each figure means.",
        "",
        "## Machine",
        "",
        _md_table(("what", "value"), [
            ("CPU", f"{machine['cpu_model']}, {machine['cores']} cores"),
            ("RAM", f"{machine['ram_gib']} GiB"),
            ("OS", machine["os"]),
            ("Python", machine["python"]),
            ("Kafka broker", machine["kafka"]),
            ("faust-streaming / aiokafka / orjson / rocksdict",
             f"{machine['faust_streaming']} / {machine['aiokafka']} / {machine['orjson']} / {machine['rocksdict']}"),
            ("load average at start / end (1, 5, 15 min)",
             f"{machine['load_average_at_start']} / {machine.get('load_average_at_end')}"),
        ]),
        "",
        "## Figures",
        "",
        _md_table(("figure", "value", "target", "verdict"), rows(results)),
    ]
    if before is not None:
        parts += ["", "## Before and after the performance work", "",
                  f"Before: run `{before.get('mode')}` of {before.get('started_at')} at commit "
                  f"`{_get(before, 'machine', 'git_commit')}` (bench/results/before.json). "
                  "After: this run.", "",
                  _md_table(("figure", "before", "after"), _compare(before, results))]
    parts += ["", "## Details", "", "```json", _json(results), "```", ""]
    return "\n".join(parts)


def _compare(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows matched on the figure's name with its counts left out (a quick run
    and a full run measure the same figures at different sizes)."""
    def plain(label: str) -> str:
        return re.sub(r"\d[\d,]*", "N", label)

    after_rows = rows(after)
    exact = {row[0]: row for row in after_rows}
    similar = {plain(row[0]): row for row in after_rows}
    compared = []
    for figure, value, _, _ in rows(before):
        row = exact.get(figure) or similar.get(plain(figure))
        if row is None:
            compared.append((figure, value, "n/a"))
        elif row[0] == figure:
            compared.append((figure, value, row[1]))
        else:  # the same figure at another size: say so
            compared.append((row[0], f"{value} (at: {figure})", row[1]))
    return compared


def _json(results: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()


def main() -> None:
    """`python -m bench.report [NAME]`: write bench/results/NAME.md again from NAME.json."""
    import sys
    from pathlib import Path

    import orjson

    results_dir = Path(__file__).resolve().parent / "results"
    name = sys.argv[1] if len(sys.argv) > 1 else "latest"
    results = orjson.loads((results_dir / f"{name}.json").read_bytes())
    before_path = results_dir / "before.json"
    before = orjson.loads(before_path.read_bytes()) if before_path.exists() else None
    (results_dir / f"{name}.md").write_text(render(results, before))
    print(table(results))


if __name__ == "__main__":
    main()
