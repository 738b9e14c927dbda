"""The honest window of tenant usage (docs/budgets.md): from a round's send to
`GET /tenants/{id}/usage` showing it, on an otherwise idle worker.

    .venv/bin/python -m bench.tenant_window [--samples 200] [--guarantee at_least_once|exactly_once]

One session of one tenant is opened; then, one at a time, a round is
published and, from the broker's acknowledgement of it (acks=all), the usage
is polled every 2 ms until it shows the round's tokens. Each sample is checked against the sum of what was
sent, so a figure is never taken from a wrong answer. The window under load
is larger by the agent's batch time; docs/benchmarks.md has the latency of
closures under load, which the tenant delta shares up to the repartition topic.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import bench_broker, log, new_deployment, new_worker, summary_ms
from tests.support.events import event
from tests.support.kafka import produce_events

TENANT = "window"
POLL_SECS = 0.002


def usage_tokens(url: str) -> int:
    with urllib.request.urlopen(f"{url}/tenants/{TENANT}/usage", timeout=5) as response:
        return int(json.loads(response.read())["usage_tokens"])


def measure(samples: int, guarantee: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir, bench_broker(Path(workdir)) as bootstrap:
        deployment = new_deployment(bootstrap, Path(workdir), ACCOUNTANT_PROCESSING_GUARANTEE=guarantee)
        deployment.create_topics()
        worker = new_worker(deployment).start().wait_ready()
        try:
            opening = [event("session.created", "w-1", 0, TENANT, provider_id="p", model="m", ttl_secs=3600),
                       event("session.activated", "w-1", 1, TENANT, initial_token_count=1)]
            produce_events(bootstrap, deployment.events_topic, opening)
            sent = 1
            while usage_tokens(worker.url) != sent:
                time.sleep(0.05)
            windows = []
            for number in range(1, samples + 1):
                delta = number
                produce_events(bootstrap, deployment.events_topic,
                               [event("round.completed", "w-1", 1 + number, TENANT, round=number,
                                      delta_token_count=delta)])
                started = time.monotonic()
                sent += delta
                while (seen := usage_tokens(worker.url)) < sent:
                    time.sleep(POLL_SECS)
                assert seen == sent, f"usage {seen} after sending {sent} tokens"
                windows.append(time.monotonic() - started)
            return {"guarantee": guarantee, "window": summary_ms(windows)}
        finally:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once")
    args = parser.parse_args()
    log(f"measuring the usage window, {args.samples} samples, {args.guarantee}")
    print(json.dumps(measure(args.samples, args.guarantee)))


if __name__ == "__main__":
    main()
