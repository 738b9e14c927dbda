"""The probes' decisions (docs/operations.md, "Probes").

Liveness (/healthz): 503 only when the process itself is stuck: its agent
has made no progress while input waits for it, for longer than
ACCOUNTANT_STALL_TIMEOUT_SECS, with the broker answering all that time. A
stall while the broker is gone is the broker's outage, which a restart does
not cure: only the time the broker has been answering counts. (An event loop
that is blocked answers nothing at all: the probe's own timeout fails it.)
Nothing is lost by a restart: the events are read again from the last commit.

Readiness (/readyz): 503 only when this instance cannot take an ingest
request: its producer has not reached the broker yet, or the broker has not
answered for longer than ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS. A
rebalance (and the table's recovery) is not one: `POST /events` works
meanwhile, so the answer stays 200 and says "rebalancing".
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["liveness", "readiness"]


def liveness(stalled_seconds: float, broker_answering_secs: float,
             stall_timeout_secs: float) -> tuple[int, dict[str, Any]]:
    """The status and body of /healthz."""
    stuck_for = min(stalled_seconds, broker_answering_secs)
    if stuck_for > stall_timeout_secs:
        # Rounded up, so the figure never reads as "not past the timeout".
        return 503, {"status": "stalled", "stalled_seconds": math.ceil(stuck_for * 10) / 10,
                     "stall_timeout_secs": stall_timeout_secs}
    return 200, {"status": "ok"}


def readiness(producer_started: bool, broker_silent_secs: float, broker_silent_limit_secs: float,
              rebalancing: bool) -> tuple[int, dict[str, Any]]:
    """The status and body of /readyz."""
    if not producer_started:
        return 503, {"status": "starting", "detail": "the ingest producer has not reached the broker yet"}
    if broker_silent_secs > broker_silent_limit_secs:
        return 503, {"status": "broker_unreachable",
                     "detail": f"the broker has not answered for {math.floor(broker_silent_secs)} s "
                               f"(ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS: {broker_silent_limit_secs:g})"}
    if rebalancing:
        return 200, {"status": "rebalancing", "detail": "partitions are being assigned or the table recovered; "
                                                        "POST /events works, session lookups may wait"}
    return 200, {"status": "ready"}
