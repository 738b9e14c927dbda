"""Work-arounds for faust-streaming 0.15.3 behaviour that would lose usage.

Each one names the problem; tests/test_faust_fixes.py reproduces it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

#: How long one wait for the next message to leave the buffer lasts.
_FLUSH_POLL_SECS = 0.1


def drain_producer_buffer_on_flush(app: faust.App) -> None:
    """Make `ProducerBuffer.flush` a real barrier before offsets are committed.

    Faust commits offsets after `producer.flush()`, which is the buffer's
    flush and then aiokafka's. Two gaps let a changelog write miss both:
    the buffer's flush (`flush_atmost(None)`) returns as soon as no message
    left the buffer for 0.1 s, and a message the buffer has already dequeued
    but is still handing to aiokafka (`await producer.send()` waits for
    metadata or room in a batch) counts as neither queued nor in aiokafka.
    The offset is then committed and a crash loses the write: a round's
    tokens vanish. Wait until the queue is empty and no hand-off is in flight.
    """
    buffer = app.producer.buffer
    send_pending = buffer._send_pending
    in_flight = 0

    async def counted_send_pending(fut: Any) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            await send_pending(fut)
        finally:
            in_flight -= 1

    async def flush() -> None:
        while buffer.size or in_flight:
            buffer.message_sent.clear()
            try:
                await asyncio.wait_for(buffer.message_sent.wait(), _FLUSH_POLL_SECS)
            except asyncio.TimeoutError:
                pass

    # The buffer's task reads `_send_pending` when it starts, with the producer.
    buffer._send_pending = counted_send_pending
    buffer.flush = flush
