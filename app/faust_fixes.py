"""Work-arounds for faust-streaming 0.15.3 behaviour that would lose usage,
and for hot spots that cost throughput.

Each one names the problem; tests/test_faust_fixes.py reproduces it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING, Consumer


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


# --------------------------------------------------------------------------
# Performance: the consumer's hand-off of each fetched message


class _Resume:
    """Awaitable that finishes a coroutine which has already run its first step.

    `first` is what that step yielded (the future it waits on); the Task that
    awaits this object waits on it, and every later step is forwarded, as
    `yield from` would do had the coroutine not been started yet.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Any:
        coro, yielded = self._coro, self._first
        while True:
            try:
                sent = yield yielded
            except BaseException as error:  # noqa: BLE001 - forwarded, as yield from does
                try:
                    yielded = coro.throw(error)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - the consumer's loop
    """faust.transport.consumer.Consumer._drain_messages, with a cheap hand-off.

    Faust hands each message to the conductor with
    `await self.wait_first(callback(message), self.suspend_flow.wait())`:
    two tasks, two more for the stopped/crashed events, and an
    `asyncio.wait`, for every message -- about 40 us on a 2-core machine,
    more than a counting agent spends on anything else. Here the callback
    runs its first step inline; almost always that finishes it (the stream
    buffer has room). Only if it has to wait does the rest go through
    `wait_first` as before, so a rebalance (suspend_flow) still abandons a
    blocked hand-off. Everything else is Faust 0.15.3's loop unchanged.
    """
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    flow_suspended = self.suspend_flow.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:
                            if acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        handoff = callback(message)
                        if flow_suspended():
                            await self.wait_first(handoff, self.suspend_flow.wait())
                        else:
                            try:
                                first = handoff.send(None)
                            except StopIteration:
                                pass  # delivered without waiting
                            else:
                                await self.wait_first(_Resume(handoff, first), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


def fast_message_handoff() -> None:
    """Install `_drain_messages` above on Faust's consumer (process-wide, idempotent)."""
    Consumer._drain_messages = _drain_messages
