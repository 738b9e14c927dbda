"""Waiting for a condition with a deadline: what tests do instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60, interval: float = 0.05,
             observed: Callable[[], Any] | None = None) -> T:
    """Poll `probe` until it returns something truthy, and return that.

    Fails after `timeout` seconds naming `what`, and what `observed()` says
    was seen last, when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            seen = ""
            if observed is not None:
                last = observed()
                seen = f"; observed:\n{last}" if isinstance(last, str) else f"; observed: {last!r}"
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(interval)
