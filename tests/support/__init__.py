"""What tests and benchmarks share to drive the real service.

- `deployment`: one app id and topic prefix, the settings its workers run with;
- `workers`: `python -m app.cli worker` subprocesses, watched over HTTP;
- `kafka`: producing, consuming, offsets and lag on the real broker;
- `brokers`: where the test broker comes from (environment, Docker, LocalKafka);
- `fixtures`: what the conftest fixtures share (a deployment per test, failure logs);
- `events`: gateway events for hand-written scenarios; `clock`: `now_rfc3339`;
- `ledger`: the fault suite's oracle (built on `app.dev.oracle`);
- `ingest`: `POST /events` on a web app of its own (the ingest tests and benchmark);
- `ledger_processes`: `accountant ledger` subprocesses, the closures topic and
  database they share (the billing ledger, app/ledger: not `ledger` above);
  `closures`: hand-made closures for the ledger's tests and benchmark;
  `postgres`: where the test PostgreSQL comes from (environment, Docker, LocalPostgres);
- `waiting`: `wait_for`, polling a condition with a deadline (never a bare sleep).

The partitioners gateways use are in `app.dev.partitioners` (the simulator
needs them too), the local broker in `app.dev.kafka`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO"]

#: The repository's root: workers run from it.
REPO = Path(__file__).resolve().parents[2]
