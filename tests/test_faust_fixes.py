"""Minimal reproductions of the Faust behaviour app/faust_fixes.py works around."""

from __future__ import annotations

import asyncio

import faust

from app.faust_fixes import drain_producer_buffer_on_flush


def _running_buffer(app: faust.App, messages: int):
    buffer = app.producer.buffer
    buffer._started.set()  # "running", without a broker: only its flush is under test
    for n in range(messages):
        buffer.pending.put_nowait(n)
    return buffer


async def _slow_sender(buffer, delay: float) -> None:
    """Stands in for the producer under load: one message leaves the buffer every `delay` s."""
    while buffer.size:
        await asyncio.sleep(delay)
        buffer.pending.get_nowait()
        buffer.message_sent.set()


async def test_faust_buffer_flush_returns_with_messages_still_queued() -> None:
    app = faust.App("repro-flush", broker="kafka://127.0.0.1:1")
    buffer = _running_buffer(app, 3)
    sender = asyncio.create_task(_slow_sender(buffer, 0.3))
    await buffer.flush()  # Faust's own: gives up after 0.1 s without a sent message
    assert buffer.size > 0, "Faust's flush is now a barrier; the work-around may be dropped"
    await sender


async def test_patched_flush_waits_until_the_buffer_is_empty() -> None:
    app = faust.App("repro-flush-fixed", broker="kafka://127.0.0.1:1")
    drain_producer_buffer_on_flush(app)
    buffer = _running_buffer(app, 3)
    sender = asyncio.create_task(_slow_sender(buffer, 0.3))
    await buffer.flush()
    assert buffer.size == 0
    await sender


async def test_patched_flush_waits_for_a_message_being_handed_to_the_producer() -> None:
    """The buffer's own task: dequeues, then awaits the hand-off (here: slow metadata)."""
    app = faust.App("repro-flush-handoff", broker="kafka://127.0.0.1:1")
    handed_over: list[int] = []

    async def slow_publish(fut: int) -> None:
        await asyncio.sleep(0.5)
        handed_over.append(fut)

    app.producer.buffer._send_pending = slow_publish
    drain_producer_buffer_on_flush(app)
    buffer = _running_buffer(app, 1)
    handler = asyncio.create_task(type(buffer)._handle_pending(buffer))
    await asyncio.sleep(0.05)
    assert buffer.size == 0 and handed_over == []  # dequeued, not yet in the producer
    await buffer.flush()
    assert handed_over == [0], "flush returned while a message was still being handed over"
    handler.cancel()
