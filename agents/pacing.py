"""Long passes on the worker's one event loop, in slices.

A flat-out fetch changes tens of thousands of sessions, and an assignment
brings up to a million to look at: done in one go, each held the loop for
hundreds of milliseconds to seconds, with the web views and the probes
unanswered (docs/benchmarks.md, "Why the drain misses 50 ms"). Callers hold
their agent's lock, so the timers stay out while the loop runs between
slices.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")


async def yielding(items: Iterable[T], every: int) -> AsyncIterator[T]:
    """Each of `items`, letting the event loop run before every `every`-th."""
    for count, item in enumerate(items, 1):
        if not count % every:
            await asyncio.sleep(0)
        yield item
