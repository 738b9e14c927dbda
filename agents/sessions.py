"""The accounting agent and its timer: thin adapters around `rules.apply`.

One agent (concurrency 1: Faust can commit past an unprocessed event above 1,
faust-streaming#606, and per-key order matters) consumes the gateway events
and the service's own commands. Every table write happens here, in an event's
context, so Faust writes the changelog partition of the event's partition.
The timer only reads the table and sends commands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from agents.scheduler import DeadlineSchedule
from app.metrics import AccountingMetrics
from app.partition_reader import plain_consumer, read_ranges
from app.rules import (
    SECOND, Closure, Command, Confirm, Delivery, Expire, InvalidEvent, Outcome, Output, Policy, Purge, Reason,
    Rejection, Result, Session, Source, State, apply, decode_command, decode_event, encode_command, encode_output,
)
from app.settings import Settings

log = logging.getLogger(__name__)

#: How long the timer waits for a command to take effect before sending it again.
COMMAND_RETRY = 5 * SECOND
#: Bytes per fetch when reading a hole in the input past Faust.
_HOLE_FETCH_BYTES = 4 * 1024 * 1024


def now_micros() -> int:
    return time.time_ns() // 1000


def policy_from(settings: Settings) -> Policy:
    return Policy(
        grace=int(settings.grace_secs * SECOND),
        max_clock_skew=int(settings.max_clock_skew_secs * SECOND),
        retention=int(settings.retention_secs * SECOND),
        metadata_max_bytes=settings.metadata_max_bytes,
    )


class SessionAccountant:
    """Wires the rules to one Faust app: agent, timer, recovery hooks."""

    def __init__(self, app: faust.App, table: faust.Table, settings: Settings, metrics: AccountingMetrics) -> None:
        self.app = app
        self.table = table
        self.settings = settings
        self.metrics = metrics
        self.policy = policy_from(settings)
        self.schedule = DeadlineSchedule()
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.events_topic = app.topic(settings.events_topic, partitions=settings.partitions, **raw)
        self.commands_topic = app.topic(settings.commands_topic, partitions=settings.partitions, internal=True, **raw)
        self.closures_topic = app.topic(settings.closures_topic, **raw)
        self.rejected_topic = app.topic(settings.rejected_topic, **raw)
        self.source = app.topic(settings.events_topic, settings.commands_topic, **raw)
        #: Offset of the last gateway event processed, per input partition.
        self.position: dict[int, int] = {}
        #: The next input offset to account for, per active input partition
        #: (see `_in_order`); set from the committed offsets on assignment.
        self.next_offset: dict[int, int] = {}
        #: Reads holes Faust left in the input (`_account_hole`).
        self._reader: AIOKafkaConsumer | None = None
        #: Output ids the broker acknowledged, per (partition, session), not yet confirmed.
        self._acknowledged: dict[tuple[int, str], list[str]] = defaultdict(list)
        self._scheduled_partitions: set[int] = set()
        #: Sessions not yet closed, per owned partition.
        self.open_sessions: dict[int, int] = defaultdict(int)
        metrics.live_sessions.set_function(lambda: sum(self.open_sessions.values()))
        self.recovered = False

    def register(self) -> None:
        self._clamp_commits()
        self.app.agent(self.source, name="account", concurrency=1)(self._consume)
        self.app.timer(self.settings.timer_interval_secs, name="deadlines")(self._on_tick)
        self.table.on_recover(self._on_recovered)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_before_shutdown.connect(self._stop_hole_reader)

    # -- the agent -----------------------------------------------------------

    async def _consume(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                await self._handle(event.message)
            except Exception:
                # Faust would ack and skip the event; account it as rejected instead.
                log.exception("internal error on %s[%s]@%s", event.message.topic, event.message.partition,
                              event.message.offset)
                await self._reject_internal(event.message)

    async def _handle(self, message: Any) -> None:
        if message.topic == self.settings.commands_topic:
            command = decode_command(message.value)
            await self._apply(message, command, command.session_id)
        elif await self._in_order(message):
            await self._account_event(message)

    async def _account_event(self, record: Any) -> None:
        """Account one gateway event: a Faust message or a record read past Faust."""
        if record.offset >= self.next_offset.get(record.partition, 0):
            self.next_offset[record.partition] = record.offset + 1
        self.position[record.partition] = record.offset
        body = decode_event(record.key, record.value, self.policy)
        await self._apply(record, body, body.session_key if isinstance(body, InvalidEvent) else body.session_id)

    async def _apply(self, record: Any, body: Command | Any, session_id: str | None) -> None:
        # An event that did not decode is judged on its bytes alone.
        state = None if session_id is None or isinstance(body, InvalidEvent) else self.table.get(session_id)
        now = now_micros()
        source = Source(record.topic, record.partition, record.offset)
        new_state, outputs = apply(state, Delivery(source, body), now, self.policy)
        if new_state is not state:
            self._store(session_id, state, new_state)
        for output in outputs:
            if isinstance(output, Outcome):
                self.metrics.count(output)
            # Matched on output_id, not identity: `rules` returns a closure
            # built apart from the equal one it puts in the outbox, and an
            # identity test sent every closure unconfirmed, so it stayed in
            # the outbox and was re-published at every recovery, rebalance
            # and purge (found by tests/faults, the outbox-drained check).
            elif new_state is not None and any(output.output_id == pending.output_id
                                               for pending in new_state.outbox):
                self._publish_confirmed(new_state.partition, output, now)
            else:
                # Derived from the bytes or the session's absence, so a
                # re-delivery derives it again: Faust publishes attachments
                # before it commits the offset.
                await self._topic_for(output).send(key=_key(output), value=encode_output(output, now, record.value))

    def _store(self, session_id: str | None, old: Session | None, new: Session | None) -> None:
        assert session_id is not None
        if new is None:
            del self.table[session_id]
            self.schedule.discard(session_id)
            return
        self.table[session_id] = new
        self.schedule.set(new.partition, session_id, new.due_at(self.policy))
        if (old is None or old.close_reason is None) and new.close_reason is not None:
            self.metrics.count_closure(new.close_reason.value)
        self.open_sessions[new.partition] += (new.close_reason is None) - (old is not None and old.close_reason is None)

    # -- never past a hole in the input ---------------------------------------

    async def _in_order(self, message: Any) -> bool:
        """Whether this input event comes next, once any hole before it is filled.

        Faust 0.15.3 can hand the agent an input partition's events past a
        hole after a rebalance: the standby fault test (tests/faults) saw a
        worker taking over a killed one's partitions skip one offset, and in
        other runs ~1,300 offsets per partition (hundreds of sessions lost),
        with app/faust_fixes.py's seek fix in place. Accounting past a hole
        loses the events in it for good (Faust's commit then passes them) or
        applies them out of order. So the agent reads the hole itself and
        accounts it first (`_account_hole`), and commits never pass the next
        offset it needs (`_clamp_commits`).

        It used to ask Faust to fetch again from the hole instead; that
        refetch did not come when the batch being handed over raised Faust's
        read offset again, and the standby test stalled waiting for commits
        (docs/faults.md). Transaction markers also take offsets that no
        refetch brings back: a transactional gateway stalled the agent for good.
        """
        partition = message.partition
        expected = self.next_offset.get(partition)
        if expected is None or message.offset <= expected:
            return True  # the next one, or a redelivery (the rules ignore it)
        self.metrics.input_offset_gaps.inc()
        log.warning("input partition %s: offset %s handed over before %s..%s; reading those first",
                    partition, message.offset, expected, message.offset - 1)
        return await self._account_hole(partition, expected, message.offset)

    async def _account_hole(self, partition: int, start: int, end: int) -> bool:
        """Account the input events of offsets `start`..`end - 1`, read with a
        consumer of our own; whether all were read. Gives up when the
        partition is revoked or the worker stops; while the broker does not
        answer it keeps trying, as the agent's own sends would."""
        tp = TopicPartition(self.settings.events_topic, partition)

        def ours() -> bool:
            return partition in self.next_offset and not self.app.rebalancing and not self.app.should_stop

        reader = await self._hole_reader(ours)
        if reader is None:
            return False
        accounted = 0
        try:
            async for _, records in read_ranges(reader, {tp: (start, end)}, ours):
                for record in records:
                    expected = self.next_offset.get(partition)
                    if expected is None:
                        return False  # revoked meanwhile
                    if record.offset >= expected:
                        await self._account_event(record)
                        accounted += 1
            complete = await reader.position(tp) >= end
        finally:
            reader.unsubscribe()  # no fetching between holes
        # Faust commits an input partition only up to its first offset it
        # never acked, and these never went through it: without this the
        # partition's commits stopped at the hole for good (the standby test
        # waited 90 s for them after a 1,492-offset hole was accounted).
        done_through = (end if complete else self.next_offset.get(partition, start)) - 1
        await self.app.consumer._add_gap(TP(tp.topic, partition), start, done_through)
        log.warning("input partition %s: accounted %d events of offsets %s..%s read directly%s",
                    partition, accounted, start, end - 1, "" if complete else "; stopped before the end")
        return complete

    async def _hole_reader(self, keep_trying: Callable[[], bool]) -> AIOKafkaConsumer | None:
        """The consumer that reads holes, started at the first one and kept:
        a transactional gateway leaves a hole (its commit marker) after
        every transaction."""
        while self._reader is None and keep_trying():
            # A short fetch wait: a fetch still waiting at the end of the log
            # held the next read for up to 500 ms, for each transaction's marker.
            reader = plain_consumer(self.app, fetch_max_bytes=_HOLE_FETCH_BYTES,
                                    max_partition_fetch_bytes=_HOLE_FETCH_BYTES, fetch_max_wait_ms=20)
            try:
                await reader.start()
            except KafkaError as error:
                log.warning("cannot start the consumer that reads input holes (%s); trying again", error)
                await asyncio.sleep(1.0)
                continue
            self._reader = reader
        return self._reader

    async def _stop_hole_reader(self, sender: Any, **_: Any) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None

    def _clamp_commits(self) -> None:
        """Never commit an input partition past the next offset the agent
        needs: Faust would commit past a hole it acked around (its head-of-
        queue check is skipped while nothing was committed yet)."""
        consumer = self.app.consumer
        committable = consumer._filter_committable_offsets

        def clamped(tps: Any) -> dict[TP, int]:
            offsets = committable(tps)
            for tp, offset in list(offsets.items()):
                limit = self.next_offset.get(tp.partition) if tp.topic == self.settings.events_topic else None
                if limit is not None and offset > limit:
                    committed = consumer._committed_offset.get(tp)
                    if committed is None or limit > committed:
                        offsets[tp] = limit
                    else:
                        del offsets[tp]
            return offsets

        consumer._filter_committable_offsets = clamped

    async def _reject_internal(self, message: Any) -> None:
        rejection = Rejection(
            message.key.decode("utf-8", "replace") if message.key is not None else None,
            Reason.INTERNAL_ERROR, "the worker failed on this event; see its log", None, message.value,
            Source(message.topic, message.partition, message.offset))
        self.metrics.count(Outcome(Result.REJECTED, None, Reason.INTERNAL_ERROR))
        await self.rejected_topic.send(key=_key(rejection), value=encode_output(rejection, now_micros()))

    # -- outputs that wait for the broker's word ----------------------------

    def _publish_confirmed(self, partition: int, output: Output, now: int) -> None:
        """Publish now; once the broker acknowledges, a `confirm` command clears the outbox."""
        session_id = output.session_id
        assert session_id is not None

        def acknowledged(future: Any) -> None:
            if future.exception() is None:
                self._acknowledged[(partition, session_id)].append(output.output_id)

        self.metrics.outputs_unconfirmed.inc()
        self._topic_for(output).send_soon(key=_key(output), value=encode_output(output, now), callback=acknowledged)

    def _send_confirmations(self) -> None:
        acknowledged, self._acknowledged = self._acknowledged, defaultdict(list)
        for (partition, session_id), output_ids in acknowledged.items():
            self.metrics.outputs_unconfirmed.dec(len(output_ids))
            self._send_command(partition, Confirm(session_id, tuple(output_ids)))

    def _send_command(self, partition: int, command: Command) -> None:
        # To the session's own partition: gateways may partition with another hash.
        self.commands_topic.send_soon(key=command.session_id.encode("utf-8"), value=encode_command(command),
                                      partition=partition)

    def _topic_for(self, output: Output) -> faust.TopicT:
        return self.closures_topic if isinstance(output, Closure) else self.rejected_topic

    # -- the timer ------------------------------------------------------------

    async def _on_tick(self) -> None:
        self._send_confirmations()
        if self.app.rebalancing or not self.recovered:
            return
        now = now_micros()
        for partition in self._active_partitions():
            if not self._caught_up(partition):
                # Events still waiting in this partition may belong to a
                # session that is due; closing it first would reject them.
                continue
            for session_id in self.schedule.pop_due(now, partition):
                session = self.table.get(session_id)
                if session is None or session.partition != partition:
                    continue
                command = Expire(session_id) if session.state is not State.CLOSED else Purge(session_id)
                self._send_command(partition, command)
                self.schedule.set(partition, session_id, now + COMMAND_RETRY)

    def _active_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.settings.events_topic}

    def _caught_up(self, partition: int) -> bool:
        tp = TP(self.settings.events_topic, partition)
        highwater = self.app.consumer.highwater(tp)
        if highwater is None:
            return False  # not fetched yet since the assignment: a backlog may wait
        # After a restart nothing may be processed yet, but all up to the
        # committed offset was (Faust keeps it in a private map).
        committed = self.app.consumer._committed_offset.get(tp) or 0
        return max(self.position.get(partition, -1) + 1, committed) >= highwater

    # -- rebalancing ----------------------------------------------------------

    async def _on_recovered(self) -> None:
        """Rebuild deadlines and re-publish unconfirmed outputs of newly assigned partitions."""
        active = self._active_partitions()
        gone = self._scheduled_partitions - active
        self.schedule.drop_partitions(gone)
        for partition in gone | (active - self._scheduled_partitions):
            self.open_sessions.pop(partition, None)
        fresh = active - self._scheduled_partitions
        self._scheduled_partitions = active
        if fresh:
            await self._expect_from_committed(fresh)
            now = now_micros()
            # One pass per assignment, never per tick.
            for session_id, session in self.table.items():
                if session is None or session.partition not in fresh:
                    continue
                self.schedule.set(session.partition, session_id, session.due_at(self.policy))
                self.open_sessions[session.partition] += session.close_reason is None
                for output in session.outbox:
                    self._publish_confirmed(session.partition, output, now)
            log.info("scheduled partitions %s: %d sessions due-tracked", sorted(fresh), len(self.schedule))
        self.recovered = True

    async def _expect_from_committed(self, partitions: set[int]) -> None:
        """The next offset of newly assigned input partitions: the committed
        one, or the earliest when the group never committed."""
        tps = {TP(self.settings.events_topic, partition) for partition in partitions}
        committed = {tp: offset for tp, offset in (await self.app.consumer.seek_to_committed()).items()
                     if tp in tps and offset is not None and offset >= 0}
        missing = tps - committed.keys()
        earliest = await self.app.consumer.earliest_offsets(*missing) if missing else {}
        for tp in tps:
            offset = committed.get(tp, earliest.get(tp))
            if offset is not None:
                self.next_offset[tp.partition] = offset

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.events_topic}
        self.schedule.drop_partitions(partitions)
        self._scheduled_partitions -= partitions
        for partition in partitions:
            self.position.pop(partition, None)
            self.next_offset.pop(partition, None)
            self.open_sessions.pop(partition, None)


def _key(output: Output) -> bytes | None:
    return None if output.session_id is None else output.session_id.encode("utf-8")
