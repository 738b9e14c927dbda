"""Create the service's topics before the worker starts, and check them.

Faust declares only internal topics, and a partition count that differs
between the input topic and the changelog surfaces as an opaque
PartitionsMismatch deep in recovery; checking up front names the setting.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.kafka_config import client_options
from app.settings import Settings


class TopicLayoutError(SystemExit):
    """A topic exists with a partition count the service cannot work with."""


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = {meta["topic"]: len(meta["partitions"]) for meta in (await admin.describe_topics())
                    if not meta.get("error_code")}
        copartitioned = [settings.events_topic, settings.changelog_topic, settings.usage_topic]
        for name in copartitioned:
            if name in existing and existing[name] != settings.partitions:
                raise TopicLayoutError(
                    f"topic {name!r} has {existing[name]} partitions but ACCOUNTANT_PARTITIONS is "
                    f"{settings.partitions}; they must match (the table's changelog follows the input)")
        wanted = [
            NewTopic(name, settings.partitions, settings.replication)
            for name in (settings.events_topic, settings.closures_topic,
                         settings.rejected_topic, settings.alerts_topic, settings.usage_topic)
            if name not in existing
        ]
        if settings.budgets_topic not in existing:
            # The source of truth of budgets (SPEC §9): the latest per tenant.
            wanted.append(NewTopic(settings.budgets_topic, 1, settings.replication,
                                   topic_configs={"cleanup.policy": "compact"}))
        if wanted:
            await admin.create_topics(wanted)
    finally:
        await admin.close()
