"""Every way `POST /events` fails, each from a real broker configured to
produce it where one can: permanent failures answer 4xx (413 with the
broker's limit) or 500 and never Retry-After; retriable ones answer 503 with
it (the broker going away under load: test_ingest_outage.py); nothing of a
failed request is produced; the metrics count each answer.
Contradictory ingest settings stop start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import OutOfOrderSequenceNumber, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from app.dev.kafka import create_topics
from app.metrics import IngestMetrics
from app.settings import SettingsError, load_settings
from app.web import middlewares
from app.web.ingest import IngestSettings, ingest_handler
from tests.gateway.examples import example_events
from tests.gateway.ingest_app import ingest_api
from tests.gateway.topics import PARTITIONS, read_topic

pytestmark = pytest.mark.integration

#: Above the producer's 16 KiB batches (the topic must take a full batch of
#: small events), below the largest event the schemas allow.
SMALL_LIMIT = 17_000


def large_event() -> dict[str, Any]:
    """A valid event of about 18.5 KB: names at their 1024-character limit, 16 KiB of metadata."""
    return example_events("s-large")["session.created"] | {
        "provider_id": "p" * 1024, "model": "m" * 1024, "metadata": {"blob": "x" * 16_000}}


def samples(metrics: IngestMetrics) -> dict[str, float]:
    return {f"{sample.name}{dict(sample.labels)}": sample.value
            for family in (metrics.requests, metrics.events) for metric in family.collect()
            for sample in metric.samples if sample.name.endswith("_total")}


async def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: value})])
    finally:
        await admin.close()


async def test_a_record_above_the_topics_limit_is_413_with_the_limit_and_nothing_is_produced(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("events")
    await create_topics(kafka_bootstrap, {topic: PARTITIONS}, configs={"max.message.bytes": str(SMALL_LIMIT)})
    metrics = IngestMetrics(CollectorRegistry())
    small = example_events("s-small")["session.created"]
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic), metrics=metrics) as api:
        status, body, headers = await api.post([small, large_event()])
        assert status == 413 and "Retry-After" not in headers
        assert body["error"] == "record_too_large" and body["limit_bytes"] == SMALL_LIMIT
        assert "valid event 1 is" in body["detail"] and f"at most {SMALL_LIMIT} bytes" in body["detail"]
        assert (await api.post(small))[:2] == (202, {"accepted": 1, "refused": []})
        assert [record.value for record in await read_topic(kafka_bootstrap, topic, PARTITIONS)] == [
            orjson.dumps(small)]
    counts = samples(metrics)
    assert counts["accountant_ingest_requests_total{'status': '413'}"] == 1
    assert counts["accountant_ingest_requests_total{'status': '202'}"] == 1
    assert counts["accountant_ingest_events_total{'outcome': 'unaccepted'}"] == 2
    assert counts["accountant_ingest_events_total{'outcome': 'accepted'}"] == 1


async def test_a_limit_lowered_after_it_was_read_is_413_from_the_brokers_own_refusal(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("events")
    await create_topics(kafka_bootstrap, {topic: PARTITIONS})
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        await set_topic_config(kafka_bootstrap, topic, "max.message.bytes", str(SMALL_LIMIT))
        # The producer read the default limit at its start: the broker refuses the record itself.
        status, body, headers = await api.post(large_event())
        assert (status, body["error"], body["limit_bytes"]) == (413, "record_too_large", SMALL_LIMIT)
        assert "Retry-After" not in headers
        assert await read_topic(kafka_bootstrap, topic, PARTITIONS) == []


async def test_a_broker_that_cannot_be_reached_is_503_until_the_producer_has_started(
        unique_name: Callable[[str], str], unused_tcp_port: int) -> None:
    settings = IngestSettings(topic=unique_name("events"), retry_after_secs=2)
    async with ingest_api(f"127.0.0.1:{unused_tcp_port}", settings, wait_for_producer=False) as api:
        status, body, headers = await api.post(example_events()["session.created"])
        assert (status, headers["Retry-After"]) == (503, "2")
        assert "has not reached the broker yet" in body["detail"]


class RefusingProducer:
    """An ingest producer whose broker refuses every record with `error`.
    (TopicAuthorizationFailed needs a broker with an authorizer and users, an
    out-of-order sequence a broker that lost the producer's state; the
    answer's classification is what is tested here.)"""

    record_limit = None

    def __init__(self, error: type[Exception]) -> None:
        self.producer = self
        self.error = error
        self.discarded = 0

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refused.set_exception(self.error())
        return refused

    def reached(self) -> None:
        pass

    def discard(self, producer: object) -> None:
        self.discarded += 1


async def post_to(producer: RefusingProducer, metrics: IngestMetrics) -> tuple[int, dict[str, Any], Any]:
    app = web.Application(middlewares=middlewares(metrics, 8, ""))
    app.router.add_post("/events", ingest_handler(producer, IngestSettings(), metrics))  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.post("/events", json=example_events()["session.created"])
        return response.status, await response.json(), response.headers


async def test_a_permanent_refusal_by_the_broker_is_500_without_retry_after() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    producer = RefusingProducer(TopicAuthorizationFailedError)
    status, body, headers = await post_to(producer, metrics)
    assert (status, body["error"]) == (500, "broker_refused")
    assert "TopicAuthorizationFailedError" in body["detail"] and "Retry-After" not in headers
    assert samples(metrics)["accountant_ingest_requests_total{'status': '500'}"] == 1
    assert producer.discarded == 1


async def test_an_out_of_step_idempotent_producer_is_replaced_and_the_request_is_503() -> None:
    """Not retriable for Kafka, but a new producer cures it: sending again can succeed."""
    producer = RefusingProducer(OutOfOrderSequenceNumber)
    status, body, headers = await post_to(producer, IngestMetrics(CollectorRegistry()))
    assert (status, body["error"], headers["Retry-After"]) == (503, "unavailable", "5")
    assert producer.discarded == 1


def test_a_pending_cap_below_the_request_cap_stops_start_up_naming_both() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(ingest_max_events=1000, ingest_max_pending_events=999)
    message = str(refused.value)
    assert "ACCOUNTANT_INGEST_MAX_PENDING_EVENTS" in message and "ACCOUNTANT_INGEST_MAX_EVENTS" in message
    assert load_settings(ingest_max_events=1000, ingest_max_pending_events=1000).ingest_max_pending_events == 1000
