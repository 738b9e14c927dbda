"""Work-arounds for faust-streaming 0.15.3 behaviour that would lose usage,
and for a hot spot that costs throughput.

Each one names the problem; tests/test_faust_fixes.py reproduces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING, Consumer

#: How long one wait for the next message to leave the buffer lasts.
_FLUSH_POLL_SECS = 0.1
#: At most this long a seek waits for the batch being handed over to end.
_BATCH_WAIT_SECS = 5.0


def drain_producer_buffer_on_flush(app: faust.App) -> None:
    """Make `ProducerBuffer.flush` a real barrier before offsets are committed.

    Faust commits offsets after `producer.flush()`, which is the buffer's
    flush and then aiokafka's. Two gaps let a changelog write miss both:
    the buffer's flush (`flush_atmost(None)`) returns as soon as no message
    left the buffer for 0.1 s, and a message the buffer has already dequeued
    but is still handing to aiokafka (`await producer.send()` waits for
    metadata or room in a batch) counts as neither queued nor in aiokafka.
    The offset is then committed and a crash loses the write: a round's
    tokens vanish. Wait until every message put before the flush has been
    handed over. Only those: waiting for an empty buffer starved the commit
    under sustained load (a worker killed after minutes of load had committed
    nothing). The buffer hands messages over one at a time, in order.
    """
    buffer = app.producer.buffer
    put = buffer.put
    send_pending = buffer._send_pending
    counts = {"put": 0, "handed_over": 0}

    def counted_put(fut: Any) -> None:
        put(fut)
        counts["put"] += 1

    async def counted_send_pending(fut: Any) -> None:
        try:
            await send_pending(fut)
        finally:
            counts["handed_over"] += 1

    async def flush() -> None:
        target = counts["put"]
        while counts["handed_over"] < target:
            buffer.message_sent.clear()
            try:
                await asyncio.wait_for(buffer.message_sent.wait(), _FLUSH_POLL_SECS)
            except asyncio.TimeoutError:
                pass

    buffer.put = counted_put
    # The buffer's task reads `_send_pending` when it starts, with the producer.
    buffer._send_pending = counted_send_pending
    buffer.flush = flush


def seek_after_the_fetched_batch(app: faust.App, stream_topics: Iterable[str]) -> None:
    """Keep Faust from dropping the first events after a start or rebalance.

    When recovery completes, Faust resumes the input partitions and then
    seeks them to the committed offsets (`perform_seek`), which resets the
    consumer's read offsets. A batch fetched before the seek can still be
    handed over afterwards and raise the read offset past what the refetch
    brings: the drain loop then drops the refetched messages below it as
    already read, and its off-by-one commit skips them. Seen here as an
    agent going from offset 111 straight to 113 after a restart, losing a
    round's tokens. So seek, wait until the drain loop has finished the
    batch it was handing over (it asks for the next one), and only then
    let Faust seek again and reset the read offsets: the next batch starts
    at the committed offsets. Pre-seek messages that did get through come
    again with the refetch, and the rules ignore them as redeliveries.

    Faust's seek leaves a partition with no committed offset where the
    fetcher got to: the events fetched during recovery, which Faust dropped
    as not yet active, were never handed to the agent (a worker that took
    over from one killed before its first commit sat idle on a full input).
    So those partitions of `stream_topics` go back to the beginning, which
    is where the `earliest` reset policy starts a new group.
    """
    topics = frozenset(stream_topics)
    consumer = app.consumer
    getmany = consumer.getmany
    batches_requested = 0

    def counted_getmany(*args: Any, **kwargs: Any) -> Any:
        nonlocal batches_requested
        batches_requested += 1
        return getmany(*args, **kwargs)

    reset_read_offsets = consumer.perform_seek

    async def perform_seek() -> None:
        committed = await consumer.seek_to_committed()
        never_committed = [tp for tp, offset in committed.items()
                           if tp.topic in topics and (offset is None or offset < 0)]
        if never_committed:
            await consumer._thread.seek_to_beginning(*never_committed)
        before = batches_requested
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BATCH_WAIT_SECS
        # With the fetcher not running there is no batch in flight to wait for.
        while batches_requested == before and app._fetcher.state == "running" and loop.time() < deadline:
            await asyncio.sleep(0.005)
        await reset_read_offsets()

    # The drain loop reads `getmany` when the fetcher starts.
    consumer.getmany = counted_getmany
    consumer.perform_seek = perform_seek


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
