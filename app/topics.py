"""Create the service's topics before the worker starts, and check them.

Faust declares only internal topics, and a partition count that differs
between the input topic and the changelog surfaces as an opaque
PartitionsMismatch deep in recovery; checking up front names the setting.

The tables' changelogs are created here too, as Faust would (compacted).
Left to Faust, a changelog is created just as the consumer subscribes: the
group leader's metadata then lacks it until its next refresh (up to 5
minutes), and its assignor skips the topic ("Ignoring missing topic"), so
no worker recovers that table after a rebalance and its owner carries on
from whatever it held: a storm of group changes lost most of the tenant
usage that way (tests/faults/test_rebalance_storm.py).
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
        copartitioned = [settings.events_topic, settings.changelog_topic, settings.usage_topic,
                         settings.tenant_changelog_topic]
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
        wanted += [NewTopic(name, settings.partitions, settings.replication,
                            topic_configs={"cleanup.policy": "compact"})
                   for name in (settings.changelog_topic, settings.tenant_changelog_topic) if name not in existing]
        if settings.budgets_topic not in existing:
            # The source of truth of budgets (SPEC §9): the latest per tenant.
            wanted.append(NewTopic(settings.budgets_topic, 1, settings.replication,
                                   topic_configs={"cleanup.policy": "compact"}))
        if wanted:
            await admin.create_topics(wanted)
    finally:
        await admin.close()
