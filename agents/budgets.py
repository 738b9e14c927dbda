"""Budgets (SPEC §9): every worker reads the whole compacted `tenant-budgets`
topic, the source of truth, and keeps the latest budget per tenant.

`PUT` and `DELETE /tenants/{id}/budget` write the topic, await the broker's
acknowledgement, and `set` what they wrote in the local book at once,
so the worker that answered serves the new budget right away; the others see
it when they read it, within their fetch wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.kafka_config import client_options
from app.rules.usage import Budget, budget_from_json
from app.settings import Settings

log = logging.getLogger(__name__)

#: How long a fetch of the budgets topic waits for news.
FETCH_WAIT_MS = 200


class BudgetBook:
    """The latest budget of every tenant, from the budgets topic."""

    def __init__(self, settings: Settings, on_change: Callable[[str], None] = lambda tenant_id: None) -> None:
        self.settings = settings
        self._budgets: dict[str, Budget] = {}
        #: Told the tenant of every budget read or written.
        self.on_change = on_change
        #: Set once the topic was read up to its end as of start-up.
        self.loaded = asyncio.Event()

    def get(self, tenant_id: str) -> Budget | None:
        return self._budgets.get(tenant_id)

    def set(self, tenant_id: str, budget: Budget | None) -> None:
        if budget is None:
            self._budgets.pop(tenant_id, None)
        else:
            self._budgets[tenant_id] = budget
        self.on_change(tenant_id)

    def _read(self, tenant_id: str, value: bytes | None) -> None:
        """A record of the topic: a budget, or a tombstone that deletes it."""
        try:
            budget = None if value is None else budget_from_json(orjson.loads(value))
        except (ValueError, KeyError, TypeError) as error:
            log.error("%s: the record of tenant %r is not a budget (%r); ignored", self.settings.budgets_topic,
                      tenant_id, error)
            return
        self.set(tenant_id, budget)

    async def run(self) -> None:
        """Read the topic from its start, for as long as the worker runs."""
        consumer = AIOKafkaConsumer(**client_options(self.settings), group_id=None, enable_auto_commit=False,
                                    isolation_level="read_committed", fetch_max_wait_ms=FETCH_WAIT_MS)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.settings.budgets_topic, partition) for partition in
                          sorted(await _partitions(self.settings, self.settings.budgets_topic))]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while True:
                fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
                for records in fetched.values():
                    for record in records:
                        if record.key is not None:
                            self._read(record.key.decode("utf-8", "replace"), record.value)
                if not self.loaded.is_set() and await _read_to(consumer, ends):
                    log.info("budgets loaded: %d tenants", len(self._budgets))
                    self.loaded.set()
        finally:
            await consumer.stop()


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def _partitions(settings: Settings, topic: str) -> set[int]:
    """The topic's partitions (`accountant worker` creates the topic before it starts)."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        for _ in range(300):
            # A new topic can be listed before its partitions are.
            described = [meta for meta in await admin.describe_topics([topic]) if not meta.get("error_code")]
            if described and described[0]["partitions"]:
                return {partition["partition"] for partition in described[0]["partitions"]}
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise RuntimeError(f"topic {topic!r} does not exist")
