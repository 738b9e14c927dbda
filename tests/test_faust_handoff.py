"""The consumer hand-off fast path of app/faust_fixes.py: a coroutine started
inline and finished as a task behaves as if it had run as a task throughout."""

from __future__ import annotations

import asyncio

import pytest

from app.faust_fixes import _Resume


async def _put(queue: asyncio.Queue, item: int) -> str:
    await queue.put(item)  # waits while the queue is full
    return f"put {item}"


async def test_a_handoff_that_does_not_wait_finishes_inline() -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    coro = _put(queue, 1)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == "put 1"
    assert queue.get_nowait() == 1


async def test_a_handoff_that_waits_is_finished_by_a_task() -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    coro = _put(queue, 1)
    first = coro.send(None)  # the queue is full: it waits on a future
    task = asyncio.ensure_future(_Resume(coro, first))
    await asyncio.sleep(0.01)
    assert not task.done()
    assert queue.get_nowait() == 0
    assert await asyncio.wait_for(task, 1) == "put 1"
    assert queue.get_nowait() == 1


async def test_cancelling_a_waiting_handoff_cancels_the_coroutine() -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    coro = _put(queue, 1)
    task = asyncio.ensure_future(_Resume(coro, coro.send(None)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.qsize() == 1  # the blocked put never happened
    assert coro.cr_frame is None  # the coroutine finished (by the cancellation)
