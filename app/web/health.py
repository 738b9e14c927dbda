"""Liveness: a worker is alive while its agent makes progress.

A worker whose web server answers but whose agent is stuck (a send the broker
never acknowledges, a store that blocks) accounts nothing; /healthz answers
503 so that an orchestrator restarts it. Nothing is lost by a restart: the
events are read again from the last commit.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["liveness"]


def liveness(stalled_seconds: float, stall_timeout_secs: float) -> tuple[int, dict[str, Any]]:
    """The status and body of /healthz: 503 once the agent has been stalled
    for longer than the timeout (ACCOUNTANT_STALL_TIMEOUT_SECS)."""
    if stalled_seconds > stall_timeout_secs:
        # Rounded up, so the figure never reads as "not past the timeout".
        return 503, {"status": "stalled", "stalled_seconds": math.ceil(stalled_seconds * 10) / 10,
                     "stall_timeout_secs": stall_timeout_secs}
    return 200, {"status": "ok"}
