"""Fixtures of the gateway-side tests (schemas, publisher, HTTP ingest)."""

from collections.abc import Callable

import pytest

from app.dev.kafka import create_topics
from tests.faults.conftest import private_kafka  # noqa: F401  (re-exported: a broker a test may stop)
from tests.gateway.topics import PARTITIONS


@pytest.fixture
async def topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    """A fresh events topic of PARTITIONS partitions on the shared broker."""
    name = unique_name("events")
    await create_topics(kafka_bootstrap, {name: PARTITIONS})
    return name
