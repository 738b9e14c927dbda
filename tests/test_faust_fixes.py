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


def _patched_buffer(name: str, publish):
    """A running buffer with the fix, whose own task hands messages to `publish`."""
    app = faust.App(name, broker="kafka://127.0.0.1:1")
    app.producer.buffer._send_pending = publish
    drain_producer_buffer_on_flush(app)
    buffer = app.producer.buffer
    buffer._started.set()
    handler = asyncio.create_task(type(buffer)._handle_pending(buffer))
    return buffer, handler


async def test_patched_flush_waits_until_every_queued_message_is_handed_over() -> None:
    handed_over: list[int] = []

    async def slow_publish(fut: int) -> None:
        await asyncio.sleep(0.3)  # the producer under load
        handed_over.append(fut)

    buffer, handler = _patched_buffer("repro-flush-fixed", slow_publish)
    for n in range(3):
        buffer.put(n)
    await buffer.flush()
    assert handed_over == [0, 1, 2] and buffer.size == 0
    handler.cancel()


async def test_patched_flush_waits_for_a_message_being_handed_to_the_producer() -> None:
    """The buffer's own task: dequeues, then awaits the hand-off (here: slow metadata)."""
    handed_over: list[int] = []
    handing_over = asyncio.Event()

    async def slow_publish(fut: int) -> None:
        handing_over.set()
        await asyncio.sleep(0.5)
        handed_over.append(fut)

    buffer, handler = _patched_buffer("repro-flush-handoff", slow_publish)
    buffer.put(0)
    await asyncio.wait_for(handing_over.wait(), timeout=10)
    assert buffer.size == 0 and handed_over == []  # dequeued, not yet in the producer
    await buffer.flush()
    assert handed_over == [0], "flush returned while a message was still being handed over"
    handler.cancel()


async def test_patched_flush_under_sustained_load_waits_only_for_earlier_messages() -> None:
    """Messages put after the flush began must not hold it: the agent keeps
    writing while Faust commits, and waiting for an empty buffer starved the
    commit for as long as the load lasted."""
    handed_over: list[int] = []

    async def publish(fut: int) -> None:
        await asyncio.sleep(0.01)
        handed_over.append(fut)

    buffer, handler = _patched_buffer("repro-flush-load", publish)

    async def agent() -> None:  # puts faster than the buffer hands over
        n = 0
        while True:
            buffer.put(n)
            n += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(agent())
    await asyncio.sleep(0.2)
    queued_before = buffer.size + len(handed_over)
    await asyncio.wait_for(buffer.flush(), timeout=30)
    assert len(handed_over) >= queued_before, "flush returned before the earlier messages were handed over"
    assert buffer.size > 0, "the load stopped; the test shows nothing"
    writer.cancel()
    handler.cancel()
