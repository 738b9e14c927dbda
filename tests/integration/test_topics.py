"""`accountant worker` creates every topic before the app starts, the tables'
changelogs among them: left to Faust, a changelog is created as the consumer
subscribes, and the group leader's assignor skips it until its metadata
refreshes (app/topics.py), so no worker recovers that table after a rebalance."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


async def described(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str]]:
    """Each topic's partition count and cleanup.policy."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = {meta["topic"]: len(meta["partitions"]) for meta in await admin.describe_topics(topics)}
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics])
        policies = {}
        for response in responses:
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                policies[name] = next(entry[1] for entry in entries if entry[0] == "cleanup.policy")
        return {topic: (partitions[topic], policies[topic]) for topic in topics}
    finally:
        await admin.close()


def test_the_tables_changelogs_exist_compacted_before_any_worker_starts(deployment: Deployment) -> None:
    deployment.create_topics()
    config = deployment.config
    found = asyncio.run(described(deployment.bootstrap, [config.changelog_topic, config.tenant_changelog_topic,
                                                         config.usage_topic]))
    assert found == {config.changelog_topic: (config.partitions, "compact"),
                     config.tenant_changelog_topic: (config.partitions, "compact"),
                     config.usage_topic: (config.partitions, "delete")}
