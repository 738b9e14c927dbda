"""Fixtures of the gateway-side tests (schemas, publisher, HTTP ingest)."""

from collections.abc import Callable

import pytest

from app.broker import create_topics
from tests.faults.conftest import private_kafka  # noqa: F401  (re-exported: a broker a test may stop)
from tests.gateway.topics import PARTITIONS


@pytest.fixture
async def topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    """A fresh events topic of PARTITIONS partitions on the shared broker."""
    name = unique_name("events")
    await create_topics(kafka_bootstrap, {name: PARTITIONS})
    return name

# Until app/web.py becomes the package app/web/ (house helper), app/web/ingest.py
# is reached through the module's __path__. Remove once the package is merged.
import app.web  # noqa: E402
from pathlib import Path  # noqa: E402

if not hasattr(app.web, "__path__"):
    app.web.__path__ = [str(Path(app.web.__file__).with_suffix(""))]
