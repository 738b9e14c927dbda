"""Work-arounds for faust-streaming 0.15.3 behaviour that would lose usage.

Each one names the problem; tests/test_faust_fixes.py reproduces it.
"""

from __future__ import annotations

import faust


def drain_producer_buffer_on_flush(app: faust.App) -> None:
    """Make `ProducerBuffer.flush` a real barrier before offsets are committed.

    Faust commits offsets after `producer.flush()`, but its buffer's flush
    (`flush_atmost(None)`) returns as soon as no message left the buffer for
    0.1 s, so changelog writes can still be queued when the offset is
    committed; a crash then loses them. Loop until the buffer is empty.
    """
    producer = app.producer
    buffer = producer.buffer
    original = buffer.flush_atmost

    async def flush() -> None:
        while buffer.size:
            await original(None)

    buffer.flush = flush
