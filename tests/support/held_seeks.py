"""`python -m tests.support.held_seeks worker`: a worker whose consumer
thread is held for a second in the middle of every seek of the input
partitions, as a slow broker would hold it.

Held where the seek waits on the network: after the committed offsets are
known, before the partitions are sought (aiokafka `beginning_offsets`), and
in `position` (where the read start used to be taken, issue 20). Meanwhile
Faust has already resumed the partitions and the thread drains fetches
from wherever the fetcher got to: the window in which events used to be
passed over. tests/integration/test_held_seeks.py runs it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiokafka import AIOKafkaConsumer

#: How long each held call waits.
HOLD_SECS = 1.0


def _held(method: Any) -> Any:
    @functools.wraps(method)
    async def held(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        await asyncio.sleep(HOLD_SECS)
        return result
    return held


def hold_seeks() -> None:
    AIOKafkaConsumer.beginning_offsets = _held(AIOKafkaConsumer.beginning_offsets)  # type: ignore[method-assign]
    AIOKafkaConsumer.position = _held(AIOKafkaConsumer.position)  # type: ignore[method-assign]


if __name__ == "__main__":
    hold_seeks()
    from app.cli import main

    main()
