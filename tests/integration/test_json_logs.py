"""A worker started with ACCOUNTANT_LOG_FORMAT=json writes nothing but JSON
lines, its own records and those of Faust, mode and aiokafka alike; also when
it stops on a failure, whose record says which topic and session it was."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.kafka_config import client_options
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import produce_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def json_lines(log: Path) -> list[dict[str, Any]]:
    entries = []
    for line in log.read_text().splitlines():  # stdout and stderr, both
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    return entries


def test_a_json_worker_writes_only_json_lines(deployment: Deployment) -> None:
    deployment.settings["ACCOUNTANT_LOG_FORMAT"] = "json"
    worker = deployment.worker().start().wait_ready()
    worker.stop()
    assert worker.process is not None and worker.process.returncode == 0
    entries = json_lines(worker.log_path)
    loggers = {entry["logger"].split(".")[0] for entry in entries}
    assert {"faust", "aiokafka", "app"} <= loggers, loggers
    assert any(entry["message"].startswith("usage-accountant ready: dashboard") for entry in entries)


def test_a_json_worker_that_stops_on_a_failed_send_says_where_in_json(deployment: Deployment) -> None:
    """The closures topic refuses every closure (max.message.bytes too small):
    the worker stops (tests/integration/test_batch_path.py), and its last word
    is a JSON record naming the topic and the session, not a plain line."""
    deployment.settings["ACCOUNTANT_LOG_FORMAT"] = "json"
    config = deployment.config

    async def create_refusing_closures_topic() -> None:
        admin = AIOKafkaAdminClient(**client_options(config))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(config.closures_topic, config.partitions, 1,
                                                topic_configs={"max.message.bytes": "100"})])
        finally:
            await admin.close()

    asyncio.run(create_refusing_closures_topic())
    worker = deployment.worker().start().wait_ready()
    produce_events(deployment.bootstrap, config.events_topic, session_events("s-refused", [10]))
    assert worker.process is not None
    wait_for("the worker to stop", lambda: worker.process is not None and worker.process.poll() is not None,
             timeout=60, interval=0.2, observed=worker.log_tail)
    assert worker.process.returncode not in (None, 0)
    entries = json_lines(worker.log_path)
    (stopping,) = [entry for entry in entries if entry["message"].startswith("stopping the worker")]
    assert stopping["level"] == "critical"
    assert stopping["topic"] == config.closures_topic and stopping["session_id"] == "s-refused", stopping
