"""`POST /events` while the broker stops and starts again (a private broker):
nothing answered 202 is missing; 503 comes with Retry-After; a request that
comes while earlier events still wait for the broker is answered 503 without
producing anything; and a gateway that sends its 503'd requests again gets
every event counted exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from app import rules
from app.dev.kafka import LocalKafka, create_topics
from app.rules import parse_timestamp
from app.web.ingest import IngestSettings
from tests.gateway.examples import example_events
from tests.gateway.ingest_app import IngestApi, ingest_api
from tests.gateway.topics import PARTITIONS, account, read_topic

pytestmark = pytest.mark.integration

NOW = parse_timestamp("2024-05-01T12:05:00Z")


def whole_session(number: int) -> list[dict[str, Any]]:
    """One request: a session from creation to close, 3 rounds (tokens: 1200 + 60 * number)."""
    events = example_events(f"s-{number}")
    rounds = [events["round.completed"] | {"event_id": f"s-{number}:r{n}", "round": n,
                                           "delta_token_count": 10 * number * n} for n in (1, 2, 3)]
    return [events["session.created"], events["session.activated"], *rounds, events["session.closed"]]


async def send(api: IngestApi, number: int, answers: dict[int, list[int]]) -> int:
    status, body, headers = await api.post(whole_session(number))
    answers.setdefault(number, []).append(status)
    if status == 503:
        assert int(headers["Retry-After"]) > 0 and "send it again" in body["detail"]
    else:
        assert (status, body) == (202, {"accepted": 6, "refused": []})
    return status


async def until_accepted(api: IngestApi, number: int, answers: dict[int, list[int]], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while await send(api, number, answers) != 202:
        assert time.monotonic() < deadline, f"session {number} not accepted within {timeout} s: {answers[number]}"


async def test_a_broker_outage_during_ingest_loses_nothing_and_counts_nothing_twice(
        private_kafka: LocalKafka, unique_name: Callable[[str], str]) -> None:
    bootstrap = private_kafka.bootstrap
    topic = unique_name("events")
    await create_topics(bootstrap, {topic: PARTITIONS})
    answers: dict[int, list[int]] = {}
    settings = IngestSettings(topic=topic, delivery_timeout_secs=3, retry_after_secs=1)
    async with ingest_api(bootstrap, settings, client_options={"retry_backoff_ms": 100}) as api:
        await asyncio.gather(*(send(api, number, answers) for number in range(0, 10)))
        await asyncio.to_thread(private_kafka.stop)
        # On their way when the broker went away: 503 once the delivery timeout passes.
        in_flight = await asyncio.gather(*(send(api, number, answers) for number in range(10, 13)))
        # Coming while those still wait for the broker: 503 at once, nothing produced.
        refused_at_once = [await send(api, number, answers) for number in range(13, 16)]
        await asyncio.to_thread(private_kafka.start)
        # Until the producer has reconnected, requests may still be answered 503.
        await asyncio.gather(*(until_accepted(api, number, answers) for number in range(16, 22)))
        records = await read_topic(bootstrap, topic, PARTITIONS)
        on_topic_before_resending = Counter(orjson.loads(record.value)["session_id"] for record in records)
        # The gateway sends again what was answered 503.
        for number in range(10, 16):
            if 202 not in answers[number]:
                await until_accepted(api, number, answers)
        records = await read_topic(bootstrap, topic, PARTITIONS)

    assert in_flight == [503] * 3 and refused_at_once == [503] * 3
    assert all(answers[number] == [202] for number in range(10)), answers
    assert not any(on_topic_before_resending[f"s-{number}"] for number in range(13, 16)), on_topic_before_resending
    # Every event answered 202 is on the topic (at least once).
    ids = Counter(orjson.loads(record.value)["event_id"] for record in records)
    for number, statuses in answers.items():
        if 202 in statuses:
            assert all(ids[event["event_id"]] >= 1 for event in whole_session(number)), number
    # Every session counted exactly once, however many copies of its events the topic holds.
    _, outputs = account(records, NOW)
    closures = {closure.record.session_id: closure for closure in outputs if isinstance(closure, rules.Closure)}
    assert sorted(closures) == sorted(f"s-{number}" for number in range(22))
    for number in range(22):
        record = closures[f"s-{number}"].record
        assert (record.total_token_count, record.round_count) == (1200 + 60 * number, 3), number
    outcomes = Counter(output.result.value for output in outputs if isinstance(output, rules.Outcome))
    assert outcomes["applied"] == 22 * 6 and outcomes["rejected"] == 0, outcomes
