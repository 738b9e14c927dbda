"""The wall clock as gateways stamp events with it."""

from __future__ import annotations

import time

from app.rules import SECOND, Micros, format_timestamp

__all__ = ["now_micros", "now_rfc3339"]


def now_micros() -> Micros:
    return time.time_ns() // 1000


def now_rfc3339(offset_secs: float = 0.0) -> str:
    """Now (plus `offset_secs`) as RFC 3339, as an event's `occurred_at`."""
    return format_timestamp(now_micros() + int(offset_secs * SECOND))
