"""Per-tenant usage (SPEC §9): the tenant table, fed per batch, and its alerts.

The accounting agent turns each session change into a usage step
(`app.rules.usage_step`) and publishes, per batch, one `UsageDelta` per
(tenant, input partition) to the repartition topic, keyed by `tenant_id`
(`usage_records`), with the batch's other outputs: under exactly_once in
the input partition's transaction, so an aborted batch's deltas are never
read (the topic is read read_committed).

The tenant's owner (the worker of that repartition partition) applies each
delta to the tenant's state (`app.rules.apply_delta`, which skips the steps
of input offsets it already applied), publishes the alerts it yields and
awaits them, then writes the state to the table's changelog and awaits that,
and only then stores it and marks the delta's offset for the consumer to
commit (never Faust's acks: the stream acks the events of a failed write too). A crash
anywhere re-reads the delta and applies only what the stored state lacks.
Recovery is Faust's: the table is rebuilt from its changelog, never from the
sessions.

Under exactly_once the owner writes each partition's alerts, changelog
records and next delta offset in one transaction of that repartition
partition (`<app id>-<repartition topic>-<p>`), fenced when the partition is
assigned, before the table is recovered: an alert is then published once per
alert_id, through a crash (the transaction aborts with the state that says
it was sent) and a rebalance (a previous owner still applying is fenced).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import cast

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from agents.pacing import yielding
from agents.sender import AcknowledgedSender, Record
from agents.transactions import PartitionTransactions
from app.faust_compat import BatchConsumer, CodecTable, memory_store_partitions
from app.json_bytes import dumps, loads
from app.rules.usage import (
    Alert,
    Budget,
    TenantUsage,
    UsageDelta,
    UsageEntry,
    apply_delta,
    carried_alerts,
    period_of,
)
from app.settings import Settings
from tables.codecs import KEY_CODEC

log = logging.getLogger(__name__)

#: The tenant agent applies up to this many deltas at once...
DELTAS_PER_BATCH = 2000
#: ...or what came within this long.
DELTA_WAIT_SECS = 0.02
#: The agent lets the event loop run between this many deltas.
DELTAS_BETWEEN_YIELDS = 200


def now_micros() -> int:
    return time.time_ns() // 1000


#: Delta ids: this process's random prefix and a count (a uuid4 per delta
#: cost 2 us each, on the event loop, thousands of times a batch).
_DELTA_ID_PREFIX = uuid.uuid4().hex[:16]
_delta_numbers = itertools.count()


def usage_records(topic: str, entries: dict[tuple[int, str], list[UsageEntry]]) -> Iterator[tuple[int, Record]]:
    """One delta record per (input partition, tenant), keyed by the tenant,
    with the input partition it is attributed to."""
    for (partition, tenant_id), steps in entries.items():
        delta = UsageDelta(tenant_id, partition, tuple(steps), f"{_DELTA_ID_PREFIX}-{next(_delta_numbers)}")
        yield partition, Record(topic, tenant_id.encode("utf-8"), orjson.dumps(delta.to_json()))


class TenantTable(CodecTable):
    """tenant_id -> TenantUsage as JSON bytes (app/rules/usage.py)."""

    key_codec = KEY_CODEC  # UTF-8 text, as session ids
    value_codec = "raw"


def define_tenants_table(app: faust.App, settings: Settings) -> faust.Table:
    table = TenantTable(app, name=settings.tenant_table_name, default=None, key_type=str, value_type=None,
                        beacon=app.tables.beacon, partitions=settings.partitions,
                        # A URL with a host: yarl takes "memory://" alone for false, and Faust the app's store.
                        store="memory://tenants",
                        help="Per-tenant usage by month, budgets' alerts, and what was applied, by tenant_id.")
    app.tables.add(table)
    return table


class TenantAccountant:
    """The owner's side: applies usage deltas to the tenant table and alerts."""

    def __init__(self, app: faust.App, settings: Settings, consumer: BatchConsumer,
                 budgets: Callable[[str], Budget | None],
                 budgets_loaded: asyncio.Event, stop_on: Callable[[Exception], None]) -> None:
        self.app = app
        self.settings = settings
        self.budget_of = budgets
        #: Set once every budget stored before start-up was read.
        self.budgets_loaded = budgets_loaded
        self._stop_on = stop_on
        self.table = define_tenants_table(app, settings)
        self.topic = app.topic(settings.usage_topic, partitions=settings.partitions, key_type=bytes,
                               value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.sender = AcknowledgedSender(app.producer)
        self.consumer = consumer
        consumer.marked_topics |= {settings.usage_topic}
        #: exactly_once: the transaction of each owned repartition partition.
        self.transactions: PartitionTransactions | None = None
        if settings.processing_guarantee == "exactly_once":
            self.transactions = PartitionTransactions.of_topic(settings, settings.usage_topic)
            consumer.transactional_topics |= {settings.usage_topic}
            consumer.assigning_hooks.append(self._fence)
        self._lock = asyncio.Lock()
        self.failed = False
        #: The month and the partitions of the last look at every tenant.
        self._swept: tuple[str, frozenset[int]] | None = None
        #: Tenants whose budget changed since the last look.
        self._budget_changed: set[str] = set()

    def register(self) -> None:
        self.app.agent(self.topic, name="tenants", concurrency=1)(self._consume)
        self.app.timer(1.0, name="tenant-rollover")(self._on_tick)

    # -- reads (the web views) -------------------------------------------------

    def partition_of(self, tenant_id: str) -> int:
        """The repartition partition of a tenant: the producer's own
        partitioner (murmur2 of the key), as the deltas were sent with."""
        return (murmur2(tenant_id.encode("utf-8")) & 0x7FFFFFFF) % self.settings.partitions

    def active_partitions(self) -> set[int]:
        topic = self.settings.usage_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    @property
    def store(self) -> MemoryStore:
        return cast(MemoryStore, self.table.data)

    def get(self, tenant_id: str) -> TenantUsage | None:
        encoded = self.store.data.get(tenant_id)
        return None if encoded is None else TenantUsage.from_json(loads(encoded))

    def tenants_in(self, partitions: Collection[int]) -> Iterator[tuple[str, int]]:
        """Every stored tenant of these partitions, with its partition."""
        for tenant_id, partition in list(memory_store_partitions(self.store).items()):
            if partition in partitions:
                yield tenant_id, partition

    def budget_changed(self, tenant_id: str) -> None:
        self._budget_changed.add(tenant_id)

    # -- the agent --------------------------------------------------------------

    async def _consume(self, stream: faust.StreamT) -> None:
        # Whole batches: one round trip for their alerts and one for their
        # changelog records, however many deltas (the agent keeps up with a
        # fetch's worth of batches from every input partition).
        # StreamT does not declare take_events; faust.Stream has it.
        async for events in cast(faust.Stream, stream).take_events(DELTAS_PER_BATCH, within=DELTA_WAIT_SECS):
            if self.failed:
                continue
            deltas = [(event.message.partition, event.message.offset,
                       UsageDelta.from_json(loads(cast(bytes, event.message.value)))) for event in events]
            await self.budgets_loaded.wait()  # a budget unknown yet would be judged as none
            async with self._lock:
                try:
                    await self._apply(deltas)
                except Exception as error:
                    self.failed = True
                    self._stop_on(error)

    async def _apply(self, deltas: list[tuple[int, int, UsageDelta]]) -> None:
        now = now_micros()
        if self.transactions is not None:
            # A partition this worker no longer owns (its events were taken
            # before the rebalance): its new owner applies them.
            deltas = [delta for delta in deltas if delta[0] in self.transactions]
        # tenant -> (its partition, its stored state, its state now, the alerts so far)
        touched: dict[str, tuple[int, TenantUsage, TenantUsage, tuple[Alert, ...]]] = {}
        read_to: dict[int, int] = {}
        async for partition, position, delta in yielding(deltas, DELTAS_BETWEEN_YIELDS):
            read_to[partition] = max(read_to.get(partition, -1), position + 1)
            tenant_id = delta.tenant_id
            if tenant_id not in touched:
                stored = self.get(tenant_id) or TenantUsage(tenant_id)
                touched[tenant_id] = (partition, stored, stored, ())
            _, stored, state, alerts = touched[tenant_id]
            state, found = apply_delta(state, delta, self.budget_of(tenant_id), now, position)
            touched[tenant_id] = (partition, stored, state, alerts + found)
        await self._write(touched.values(), now, read_to)

    async def _write(self, updates: Iterable[tuple[int, TenantUsage, TenantUsage, tuple[Alert, ...]]],
                     now: int, read_to: dict[int, int] | None = None) -> None:
        """Publish the alerts and the changed states, then store the states.
        `read_to`: per repartition partition, the next delta offset (the
        transactions commit it; otherwise Faust commits what was acked)."""
        updates = [update for update in updates if update[2] != update[1]]
        changelog = self.table.changelog_topic.get_topic_name()
        alerts: dict[int, list[Record]] = {}
        states: dict[int, list[Record]] = {}
        encoded: dict[str, bytes] = {}
        for partition, _, new, found in updates:
            key = new.tenant_id.encode("utf-8")
            encoded[new.tenant_id] = dumps(new.to_json())
            alerts.setdefault(partition, []).extend(
                Record(self.settings.alerts_topic, key, dumps(alert.to_json(now))) for alert in found)
            states.setdefault(partition, []).append(Record(changelog, key, encoded[new.tenant_id], partition))
        if self.transactions is None:
            # Alerts first, then the changelog: a crash between them sends an
            # alert again (same alert_id), never loses one.
            await self.sender.send_all([record for records in alerts.values() for record in records])
            await self.sender.send_all([record for records in states.values() for record in records])
        else:
            await self.transactions.send({partition: alerts[partition] + states[partition] for partition in states})
            for partition, offset in (read_to or {}).items():
                self.transactions.advance(partition, offset)
            await self.transactions.commit(self.transactions.pending())
        for partition, _, new, _ in updates:
            self.store_state(partition, new.tenant_id, encoded[new.tenant_id])
        for partition, offset in (read_to or {}).items():
            self.consumer.mark_accounted(TP(self.settings.usage_topic, partition), offset)

    async def _fence(self, assigned: set[TP]) -> None:
        """exactly_once: partitions were assigned; before Faust recovers the
        table, own the transactional ids of its repartition partitions anew
        (kept ones too: another worker may have owned them in between)."""
        assert self.transactions is not None
        partitions = {tp.partition for tp in assigned if tp.topic == self.settings.usage_topic}
        async with self._lock:
            await self.transactions.close(self.transactions.partitions())
            if self.failed:
                return
            try:
                await self.transactions.fence(partitions)
            except Exception as error:
                self.failed = True
                self._stop_on(error)
                raise

    def store_state(self, partition: int, tenant_id: str, encoded: bytes | None) -> None:
        """Keep a tenant's state as its changelog holds it."""
        store = self.store
        store.data[tenant_id] = encoded
        memory_store_partitions(store)[tenant_id] = partition

    # -- the timer: a month's start and changed budgets -------------------------

    async def _on_tick(self) -> None:
        if self.failed or not self.consumer.settled or not self.budgets_loaded.is_set():
            return
        now = now_micros()
        period = period_of(now)
        owned = frozenset(self.active_partitions())
        if self.transactions is not None:
            owned &= self.transactions.partitions()
        if (period, owned) != self._swept:
            # A new month carries open sessions into it; newly owned tenants
            # may have been carried while their last owner was away.
            wanted = list(self.tenants_in(owned))
            self._swept = (period, owned)
        else:
            changed, self._budget_changed = self._budget_changed, set()
            wanted = [(tenant_id, self.partition_of(tenant_id)) for tenant_id in sorted(changed)]
            wanted = [(tenant_id, partition) for tenant_id, partition in wanted if partition in owned]
        if not wanted:
            return
        async with self._lock:
            try:
                updates = []
                for tenant_id, partition in wanted:
                    state = self.get(tenant_id) or TenantUsage(tenant_id)
                    new_state, alerts = carried_alerts(state, self.budget_of(tenant_id), now)
                    updates.append((partition, state, new_state, alerts))
                await self._write(updates, now)
            except Exception as error:
                self.failed = True
                self._stop_on(error)


