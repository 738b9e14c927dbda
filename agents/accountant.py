"""The accounting agent: whole input batches through `rules.apply`.

One Faust agent on the input topic. The consumer (app/faust_compat.py) hands
it every record of one fetch as one `InputBatch`. Per batch the agent decodes
and applies each event against the batch's changes (agents/changes.py), then:

1. publishes the batch's closures and rejections and waits for the broker to
   acknowledge every one;
2. writes one changelog record per changed session, to the session's own
   partition, and waits for those acknowledgements;
3. writes the store;
4. reports each partition's position as accounted, which is all the consumer
   ever commits.

A send that cannot be delivered stops the worker before step 4
(agents/sender.py), so no commit passes an event whose outputs or state were
lost; a restart accounts it again. TTL closes and purges run in the same
order, between batches, under the same lock: the agent is the only writer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, cast

import faust
from faust.types import TP

from agents.changes import BatchChanges, Lookup
from agents.cursors import STALE, FreshRecords, Gap, InputCursors
from agents.pacing import yielding
from agents.scheduler import DeadlineSchedule, TtlWatermarks
from agents.sender import AcknowledgedSender, Record, SendFailed, key_text, record_log_fields
from agents.tenants import usage_records
from agents.transactions import PartitionTransactions
from agents.uncommitted import UncommittedStates
from app.faust_compat import BatchConsumer, InputBatch, InputGap, enable_batches
from app.logs import log_fields
from app.metrics import AccountingMetrics
from app.rules import (
    SECOND,
    Closure,
    Delivery,
    Expire,
    InvalidEvent,
    Outcome,
    Policy,
    Purge,
    Reason,
    Rejection,
    Result,
    Session,
    Source,
    Stored,
    apply,
    decode_event,
    encode_output,
    encode_state,
    settle_owed,
)
from app.rules.usage import UsageEntry, usage_step
from app.settings import Settings
from tables.store import SessionStore

log = logging.getLogger(__name__)

#: The agent lets the event loop run between this many records of a fetch
#: (about 10 ms of accounting).
RECORDS_BETWEEN_YIELDS = 500
#: The pass over a newly assigned partition's sessions lets the event loop
#: run between this many (about 25 ms of decoding).
SESSIONS_BETWEEN_YIELDS = 5000
#: A due session whose state did not change is looked at again after this long.
RETRY_DUE = 5 * SECOND


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

    def __init__(self, app: faust.App, table: faust.Table, settings: Settings, metrics: AccountingMetrics,
                 request_stop: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)) -> None:
        self.app = app
        self.table = table
        self.settings = settings
        self.metrics = metrics
        self.policy = policy_from(settings)
        self.schedule = DeadlineSchedule()
        self.cursors = InputCursors()
        self.events_topic = app.topic(settings.events_topic, partitions=settings.partitions, key_type=bytes,
                                      value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.consumer: BatchConsumer = enable_batches(app, [settings.events_topic])
        self.sender = AcknowledgedSender(app.producer)
        #: exactly_once: the open transaction of each owned input partition.
        self.transactions: PartitionTransactions | None = None
        self._uncommitted: UncommittedStates | None = None
        if settings.processing_guarantee == "exactly_once":
            self.transactions = PartitionTransactions.of_topic(settings, settings.events_topic)
            self.consumer.transactional_topics |= {settings.events_topic}
            self.consumer.assigning_hooks.append(self._fence)
            self.consumer.before_commit_hooks.append(self._commit_before_rebalance)
        #: Held while a batch or a tick is applied and written: one writer.
        self._lock = asyncio.Lock()
        #: Set when a write failed: the worker is stopping and accounts nothing more.
        self.failure: Exception | None = None
        self._request_stop = request_stop
        self._scheduled_partitions: set[int] = set()
        self.ttl_watermarks = TtlWatermarks()
        #: Sessions not yet closed, per owned partition.
        self.open_sessions: dict[int, int] = {}
        #: Monotonic time of the last batch, tick or recovery the agent finished.
        self.last_progress = time.monotonic()
        self.recovered = False
        metrics.live_sessions.set_function(lambda: sum(self.open_sessions.values()))
        metrics.watch(self)

    @property
    def store(self) -> SessionStore:
        return cast(SessionStore, self.table.data)

    @property
    def states(self) -> Lookup:
        """What the agent reads sessions from: the store, and under
        exactly_once what open transactions wrote over it."""
        if self.transactions is None:
            return self.store
        if self._uncommitted is None:
            self._uncommitted = UncommittedStates(self.store)
        return self._uncommitted

    def register(self) -> None:
        self.app.agent(self.events_topic, name="account", concurrency=1)(self._consume)
        self.app.timer(self.settings.timer_interval_secs, name="deadlines")(self._on_tick)
        if self.transactions is not None:
            self.app.timer(self.settings.transaction_commit_interval_secs / 2, name="transactions")(
                self._on_commit_tick)
        self.table.on_recover(self._on_recovered)
        # mode types a receiver as taking any positional arguments.
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    # -- the agent -----------------------------------------------------------

    async def _consume(self, stream: faust.StreamT) -> None:
        async for batch in stream:
            if self.failure is not None:
                continue  # stopping: nothing after the failure is accounted
            self.consumer.batch_started(batch)
            try:
                async with self._lock:
                    await self._account_batch(batch)
            except Exception as error:
                self.stop_on(error)
            finally:
                self.consumer.batch_finished(batch)

    def stop_on(self, error: Exception) -> None:
        """A batch or tick could not be written whole: stop the worker, as an
        operator's SIGTERM would, so Faust commits what was accounted before
        it and nothing after. (Faust's crash path would restart the agent, or
        hang committing through a consumer thread it has already crashed.)
        The CLI then exits non-zero, naming `failure`."""
        if self.failure is None:
            self.failure = error
            fields = record_log_fields(error.record) if isinstance(error, SendFailed) else {}
            with log_fields(**fields):
                log.critical("stopping the worker: %s. Nothing after the last commit is accounted; a restart "
                             "accounts it again.", error, exc_info=not isinstance(error, SendFailed))
            self._request_stop()

    async def _account_batch(self, batch: InputBatch) -> None:
        now = now_micros()
        changes = BatchChanges(self.states)
        accounted = []
        gaps = []
        for fetch in batch.fetches:
            verdict = self.cursors.fresh(fetch, self.consumer.read_start(TP(batch.topic, fetch.partition)))
            if verdict is STALE:
                self.metrics.stale_fetches.inc()
                continue
            if isinstance(verdict, Gap):
                gaps.append(verdict)
                continue
            assert isinstance(verdict, FreshRecords)
            if verdict.offsets_without_records:
                self.metrics.input_offsets_without_records.inc(verdict.offsets_without_records)
            # A fetch can hold tens of thousands of records.
            async for record in yielding(verdict.records, RECORDS_BETWEEN_YIELDS):
                self._account_record(record, changes, now)
            accounted.append(fetch)
        self.metrics.batch_events.observe(len(batch))
        await self._write(changes, now)
        for fetch in accounted:
            self.cursors.advance(fetch)
            self.consumer.mark_accounted(TP(batch.topic, fetch.partition), fetch.position)
            if self.transactions is not None:
                self.transactions.advance(fetch.partition, fetch.position)
        for gap in gaps:
            await self._read_again(gap)
        self._report_input_gaps()
        if self.transactions is not None:
            await self._commit(self.transactions.due(self.settings.transaction_commit_interval_secs))
        self.last_progress = time.monotonic()

    async def _read_again(self, gap: Gap) -> None:
        """A fetch began after the cursor: refuse it and read the partition
        again from the cursor; the commit stays where the cursor is."""
        self.metrics.refused_fetches.inc()
        log.warning("input partition %d: a fetch began at offset %d, after the next offset to account for (%d); "
                    "refused, reading the partition again from %d", gap.partition, gap.fetch_start, gap.expected,
                    gap.expected)
        await self.consumer.reseek(TP(self.settings.events_topic, gap.partition), gap.expected)

    def _report_input_gaps(self) -> None:
        for gap in self.consumer.take_gaps():
            report_input_gap(gap, self.metrics)

    def _account_record(self, record: Any, changes: BatchChanges, now: int) -> None:
        source = Source(record.topic, record.partition, record.offset)
        try:
            body = decode_event(record.key, record.value, self.policy)
            if isinstance(body, InvalidEvent):
                session_id, state = None, None  # judged on its bytes alone
            else:
                session_id = body.session_id
                state = changes.get(session_id)
            new_state, outputs = apply(state, Delivery(source, body), now, self.policy)
            published = self._encode_outputs(outputs, changes, now, record.value)
        except Exception:
            # The rules never raise on data; if they do, the event is still
            # accounted: rejected internal_error, never skipped.
            with log_fields(topic=record.topic, partition=record.partition, offset=record.offset,
                            session_id=key_text(record)):
                log.exception("internal error on %s[%s]@%s; the event is rejected internal_error",
                              record.topic, record.partition, record.offset)
            self._reject_internal(record, changes, now)
            return
        if new_state is not state:
            assert session_id is not None
            changes.put(session_id, record.partition, state, new_state)
            step = usage_step(state, new_state)
            if step is not None:
                assert not isinstance(body, InvalidEvent)
                changes.count_usage(record.partition, UsageEntry(step, record.offset, body.occurred_at))
        for output in published:
            changes.publish(output, record.partition)

    def _encode_outputs(self, outputs: tuple[Any, ...], changes: BatchChanges, now: int,
                        original: bytes | None = None) -> list[Record]:
        """The outputs as records to publish; their outcome is tallied once all encoded."""
        records, outcomes = [], []
        for output in outputs:
            if isinstance(output, Outcome):
                outcomes.append(output)
                continue
            topic = self.settings.closures_topic if isinstance(output, Closure) else self.settings.rejected_topic
            key = None if output.session_id is None else output.session_id.encode("utf-8")
            records.append(Record(topic, key, encode_output(output, now, original)))
        changes.outcomes.update(outcomes)
        return records

    def _reject_internal(self, record: Any, changes: BatchChanges, now: int) -> None:
        rejection = Rejection(
            key_text(record),
            Reason.INTERNAL_ERROR, "the worker failed on this event; see its log", None, record.value,
            Source(record.topic, record.partition, record.offset))
        for output in self._encode_outputs((rejection, Outcome(Result.REJECTED, None, Reason.INTERNAL_ERROR)),
                                           changes, now, record.value):
            changes.publish(output, record.partition)

    # -- writing: outputs, then changelog, then store -------------------------

    async def _write(self, changes: BatchChanges, now: int) -> None:
        # Usage deltas are outputs of the input partition that caused them:
        # sent with its closures, in its transaction under exactly_once.
        for partition, record in usage_records(self.settings.usage_topic, changes.usage):
            changes.publish(record, partition)
        if not changes:
            self.metrics.count(changes.outcomes)
            return
        changelog = self.table.changelog_topic.get_topic_name()
        records = [Record(changelog, session_id.encode("utf-8"),
                          None if change.after is None else encode_state(change.after), change.partition)
                   async for session_id, change in yielding(changes.states.items(), RECORDS_BETWEEN_YIELDS)]
        if self.transactions is None:
            outputs = changes.all_outputs()
            self.metrics.outputs_in_flight.set(len(outputs))
            await self.sender.send_all(outputs)
            self.metrics.outputs_in_flight.set(0)
            acknowledged = await self.sender.send_all(records)
            await self._store(changes, records, acknowledged, now)
        else:
            # One transaction per input partition holds its outputs and its
            # changelog records alike: no order between them is needed, so
            # both go in one round trip.
            by_partition = {partition: list(outputs) for partition, outputs in changes.outputs.items()}
            for record in records:
                assert record.partition is not None
                by_partition.setdefault(record.partition, []).append(record)
            self.metrics.outputs_in_flight.set(sum(len(outputs) for outputs in changes.outputs.values()))
            acknowledged_by_partition = await self.transactions.send(by_partition)
            self.metrics.outputs_in_flight.set(0)
            await self._stage(changes, records, acknowledged_by_partition, changelog, now)
        self.metrics.count(changes.outcomes)

    async def _store(self, changes: BatchChanges, records: list[Record], acknowledged: list[Any], now: int) -> None:
        """The store takes the very bytes the changelog holds (a partition at
        a time, letting the web views answer in between: each session is
        stored whole, and the lock keeps the timers out)."""
        by_partition: dict[int, dict[str, bytes | None]] = {}
        written = zip(changes.states.items(), records, strict=True)
        async for (session_id, change), record in yielding(written, RECORDS_BETWEEN_YIELDS):
            by_partition.setdefault(change.partition, {})[session_id] = record.value
            self._track(session_id, change.partition, change.before, change.after, now)
        store = self.store
        for partition, values in by_partition.items():
            await asyncio.sleep(0)
            store.write(partition, values)
        last_offsets: dict[int, int] = {}
        for metadata in acknowledged:
            last_offsets[metadata.partition] = max(metadata.offset, last_offsets.get(metadata.partition, -1))
        changelog = records[0].topic if records else ""
        for partition, offset in last_offsets.items():
            store.set_persisted_offset(TP(changelog, partition), offset)

    async def _stage(self, changes: BatchChanges, records: list[Record], acknowledged: dict[int, list[Any]],
                     changelog: str, now: int) -> None:
        """exactly_once: the states wait in `UncommittedStates` for their
        partition's transaction to commit (`_commit`)."""
        uncommitted = cast(UncommittedStates, self.states)
        written = zip(changes.states.items(), records, strict=True)
        async for (session_id, change), record in yielding(written, RECORDS_BETWEEN_YIELDS):
            uncommitted.put(change.partition, session_id, change.after, record.value)
            self._track(session_id, change.partition, change.before, change.after, now)
        for partition, acknowledgements in acknowledged.items():
            for metadata in acknowledgements:
                if metadata.topic == changelog:
                    uncommitted.written_to(partition, metadata.offset)

    # -- exactly_once: transactions -------------------------------------------

    async def _commit(self, partitions: list[int]) -> None:
        """Commit these partitions' transactions, then store what they wrote."""
        if not partitions:
            return
        assert self.transactions is not None
        await self.transactions.commit(partitions)
        uncommitted = cast(UncommittedStates, self.states)
        changelog = self.table.changelog_topic.get_topic_name()
        store = self.store
        for partition in partitions:
            writes = uncommitted.committed(partition)
            if writes is None:
                continue
            store.write(partition, {session_id: encoded for session_id, (_, encoded) in writes.states.items()})
            if writes.changelog_offset >= 0:
                store.set_persisted_offset(TP(changelog, partition), writes.changelog_offset)
        self.metrics.transaction_commits.inc(len(partitions))
        self.consumer.last_commit_at = time.monotonic()

    async def _on_commit_tick(self) -> None:
        """Commit transactions that have been open for the commit interval
        while no batch came to commit them."""
        if self.transactions is None or not self.consumer.settled or self.failure is not None:
            return
        async with self._lock:
            try:
                await self._commit(self.transactions.due(self.settings.transaction_commit_interval_secs))
            except Exception as error:
                self.stop_on(error)

    async def _commit_before_rebalance(self) -> None:
        """A rebalance (or a stop) begins: commit every open transaction, so
        the partitions are handed over with all they accounted."""
        assert self.transactions is not None
        if self.failure is not None:
            return  # stopping: what is uncommitted is aborted by the next owner
        async with self._lock:
            try:
                await self._commit(self.transactions.pending())
            except Exception as error:
                self.stop_on(error)

    async def _fence(self, assigned: set[TP]) -> None:
        """Partitions were assigned: before Faust reads their changelog or
        committed offsets, own their transactional ids anew. A partition kept
        through the rebalance is fenced again too: another worker may have
        owned it in between, which fenced this worker's producer."""
        assert self.transactions is not None
        partitions = {tp.partition for tp in assigned if tp.topic == self.settings.events_topic}
        async with self._lock:
            dropped = self.transactions.partitions()
            if self._uncommitted is not None:
                self._uncommitted.forget(dropped)
            await self.transactions.close(dropped)
            if self.failure is not None:
                return
            try:
                await self.transactions.fence(partitions)
            except Exception as error:
                self.stop_on(error)
                raise

    def _track(self, session_id: str, partition: int, before: Any, after: Any, now: int) -> None:
        """Deadlines, the live-session count and the closure counter follow each write."""
        if after is None:
            self.schedule.discard(session_id)
        else:
            self.schedule.set(partition, session_id, max(after.due_at(self.policy), now))
        if partition in self.open_sessions:
            self.open_sessions[partition] += _is_open(after) - _is_open(before)
        # Closed now and not before: one batch may create and close a session.
        if isinstance(after, Session) and after.close_reason is not None and (before is None or _is_open(before)):
            self.metrics.count_closure(after.close_reason.value)

    # -- the timer: TTL closes and purges -------------------------------------

    async def _on_tick(self) -> None:
        if not self.recovered or not self.consumer.settled or self.failure is not None:
            return
        async with self._lock:
            try:
                await self._close_and_purge_due()
            except Exception as error:
                self.stop_on(error)

    async def _close_and_purge_due(self) -> None:
        now = now_micros()
        changes = BatchChanges(self.states)
        for partition in sorted(self._scheduled_partitions):
            due_at = self._ttl_due_time(partition, now)
            if due_at is None:
                continue
            # A backlog's sessions fall due together.
            async for session_id in yielding(self.schedule.pop_due(due_at, partition), RECORDS_BETWEEN_YIELDS):
                self._apply_due(session_id, partition, changes, now)
        await self._write(changes, now)
        self._report_input_gaps()
        self.last_progress = time.monotonic()

    def _ttl_due_time(self, partition: int, now: int) -> int | None:
        tp = TP(self.settings.events_topic, partition)
        accounted = self.cursors.offset(partition, self.consumer.read_start(tp))
        return self.ttl_watermarks.due_time(partition, accounted, self.consumer.stable_end(tp), now)

    def _apply_due(self, session_id: str, partition: int, changes: BatchChanges, now: int) -> None:
        state: Stored | None = changes.get(session_id)
        if state is None or state.partition != partition:
            return
        due_at = state.due_at(self.policy)
        command = Expire(session_id) if _is_open(state) else Purge(session_id)
        new_state, outputs = apply(state, command, now, self.policy)
        for output in self._encode_outputs(outputs, changes, now):
            changes.publish(output, partition)
        if new_state is state:
            self.schedule.set(partition, session_id, max(due_at, now + RETRY_DUE))
        else:
            changes.put(session_id, partition, state, new_state)
            step = usage_step(state, new_state)
            if step is not None:
                assert isinstance(new_state, Session) and new_state.record.closed_at is not None
                changes.count_usage(partition, UsageEntry(step, None, new_state.record.closed_at))

    # -- progress (app/metrics.py `Progress`, and /healthz) -------------------

    def lags(self) -> dict[int, int]:
        """Input records not yet accounted per owned partition, as of the last fetch."""
        lags = {}
        for partition in self._scheduled_partitions:
            tp = TP(self.settings.events_topic, partition)
            accounted = self.cursors.offset(partition, self.consumer.read_start(tp))
            end = self.consumer.stable_end(tp)
            if accounted is not None and end is not None:
                lags[partition] = max(end - accounted, 0)
        return lags

    def last_commit_age(self) -> float | None:
        committed_at = self.consumer.last_commit_at
        return None if committed_at is None else time.monotonic() - committed_at

    def stalled_seconds(self) -> float:
        # A rebalance and the table's recovery after it (app.rebalancing until
        # the streams resume) hold the agent back, not a fault of its own: they
        # can take minutes for a large table, and /healthz must not have the
        # worker restarted for that. /readyz answers 503 meanwhile.
        if self.failure is None and (self.app.rebalancing or not any(self.lags().values())):
            return 0.0
        return time.monotonic() - self.last_progress

    # -- rebalancing ----------------------------------------------------------

    def active_partitions(self) -> set[int]:
        topic = self.settings.events_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    async def _on_recovered(self) -> None:
        """Rebuild the deadlines of newly assigned partitions, and publish what
        records of an older format still owe."""
        active = self.active_partitions()
        gone = self._scheduled_partitions - active
        self.schedule.drop_partitions(gone)
        for partition in gone:
            self.open_sessions.pop(partition, None)
        fresh = active - self._scheduled_partitions
        self._scheduled_partitions = active
        if fresh:
            async with self._lock:
                await self._schedule_partitions(fresh)
        # Progress is counted from here: not since before the rebalance.
        self.last_progress = time.monotonic()
        if not self.recovered:
            # What start-up built (modules, Faust's services, the app) lives as
            # long as the worker: out of the collector's full passes, which
            # otherwise pause the agent 50-90 ms each (bench latency p99).
            gc.freeze()
        self.recovered = True

    async def _schedule_partitions(self, partitions: set[int]) -> None:
        """One pass over the partitions' sessions, once per assignment, never per tick."""
        now = now_micros()
        changes = BatchChanges(self.states)
        for partition in partitions:
            self.open_sessions[partition] = 0
        # A million sessions take seconds to decode (the stores iterate a snapshot).
        async for session_id, state in yielding(self.store.items_in(partitions), SESSIONS_BETWEEN_YIELDS):
            self.schedule.set(state.partition, session_id, state.due_at(self.policy))
            self.open_sessions[state.partition] += _is_open(state)
            if isinstance(state, Session) and state.owed:  # a value of the v1 changelog format
                settled, owed = settle_owed(state)
                changes.put(session_id, state.partition, state, settled)
                for output in self._encode_outputs(owed, changes, now):
                    changes.publish(output, state.partition)
        await self._write(changes, now)
        log.info("scheduled partitions %s: %d sessions due-tracked", sorted(partitions), len(self.schedule))

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.events_topic}
        # After the timer's write and the pass over new partitions: both
        # yield, and must not see their partitions' tracking dropped midway.
        async with self._lock:
            self.schedule.drop_partitions(partitions)
            self._scheduled_partitions -= partitions
            self.cursors.forget(partitions)
            self.ttl_watermarks.forget(partitions)
            for partition in partitions:
                self.open_sessions.pop(partition, None)


def report_input_gap(gap: InputGap, metrics: AccountingMetrics) -> None:
    """Input the group never accounted and can no longer read: an error with
    a metric, never silence."""
    lost = gap.log_start - gap.expected
    metrics.input_gaps.inc()
    metrics.input_gap_offsets.inc(lost)
    with log_fields(topic=gap.topic, partition=gap.partition):
        log.error("%s partition %d: offsets %d to %d (%d) were deleted before they were accounted (retention or "
                  "a deleted record range); what they held is not counted. Reading on from %d.", gap.topic,
                  gap.partition, gap.expected, gap.log_start - 1, lost, gap.log_start)


def _is_open(state: Any) -> bool:
    return isinstance(state, Session) and state.close_reason is None
