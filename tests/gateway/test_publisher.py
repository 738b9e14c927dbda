"""`SessionPublisher` against a real broker: keyed, numbered, validated,
and safe to retry (duplicates on the topic, counted once by the rules)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from app import rules
from app.dev.kafka import LocalKafka, create_topics
from app.publisher import InvalidEventError, PublishError, SessionPublisher, event_id_for
from app.rules import parse_timestamp
from tests.gateway.reference import reference_validator
from tests.gateway.topics import PARTITIONS, account, read_topic

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW = parse_timestamp("2024-05-01T12:05:00Z")  # the rules' clock: after every event, before any TTL


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def closures(outputs: list) -> list[rules.Closure]:
    return [output for output in outputs if isinstance(output, rules.Closure)]


def outcomes(outputs: list) -> Counter:
    return Counter(output.result.value for output in outputs if isinstance(output, rules.Outcome))


async def test_client_options_cannot_weaken_acks_or_idempotence() -> None:
    with pytest.raises(ValueError, match="'acks' must be 'all'"):
        SessionPublisher("127.0.0.1:9", client_options={"acks": 1})
    with pytest.raises(ValueError, match="'enable_idempotence' must be True"):
        SessionPublisher("127.0.0.1:9", client_options={"enable_idempotence": False})


def test_event_ids_are_stable_per_step_distinct_between_steps_and_fit_the_bound() -> None:
    long_session = "s" * 128
    assert event_id_for(long_session, "round 3") == event_id_for(long_session, "round 3")
    ids = {event_id_for(session, step) for session in ("s-1", "s-2", long_session)
           for step in ("created", "activated", "round 1", "round 2", "extension 1", "closed")}
    assert len(ids) == 18
    assert all(len(event_id) == 36 for event_id in ids)


@pytest.mark.integration
async def test_a_session_is_published_keyed_numbered_and_accounted(kafka_bootstrap: str, topic: str) -> None:
    async with SessionPublisher(kafka_bootstrap, topic=topic) as publisher:
        session = await publisher.open_session("s-1", tenant_id="acme", provider_id="openai", model="gpt-x",
                                               ttl_secs=600, metadata={"team": "search"}, occurred_at=at(0))
        await session.activate(initial_token_count=1000, occurred_at=at(1))
        numbers = [await session.record_round(delta_token_count=delta, occurred_at=at(2 + delta / 100))
                   for delta in (100, 200, 300)]
        await session.extend(ttl_secs=1200, occurred_at=at(9))
        await session.close(reason="done", occurred_at=at(10))
    assert numbers == [1, 2, 3]

    records = await read_topic(kafka_bootstrap, topic, PARTITIONS)
    assert [record.key for record in records] == [b"s-1"] * 7
    assert len({record.partition for record in records}) == 1
    events = [orjson.loads(record.value) for record in records]
    for event in events:
        reference_validator("event").validate(event)
    assert [event["type"] for event in events] == ["session.created", "session.activated", "round.completed",
                                                   "round.completed", "round.completed", "session.extended",
                                                   "session.closed"]
    assert [event["round"] for event in events if event["type"] == "round.completed"] == [1, 2, 3]
    steps = ["created", "activated", "round 1", "round 2", "round 3", "extension 1", "closed"]
    assert [event["event_id"] for event in events] == [event_id_for("s-1", step) for step in steps]
    assert events[0]["occurred_at"] == "2024-05-01T12:00:00+00:00"

    _, outputs = account(records, NOW)
    [closure] = closures(outputs)
    assert (closure.record.total_token_count, closure.record.round_count, closure.missing_rounds) == (1600, 3, 0)
    assert (closure.record.ttl_secs, closure.record.metadata) == (1200, {"team": "search"})
    assert outcomes(outputs) == {"applied": 7}


@pytest.mark.integration
async def test_a_bad_call_raises_naming_the_field_and_sends_nothing(kafka_bootstrap: str, topic: str) -> None:
    async with SessionPublisher(kafka_bootstrap, topic=topic) as publisher:
        with pytest.raises(InvalidEventError) as refused:
            await publisher.open_session("s-1", tenant_id="", provider_id="openai", model="gpt-x", ttl_secs=0)
        assert {error.field for error in refused.value.errors} == {"tenant_id", "ttl_secs"}
        assert isinstance(refused.value, ValueError) and "field 'ttl_secs'" in str(refused.value)
        with pytest.raises(InvalidEventError, match="field 'metadata'"):
            await publisher.open_session("s-1", tenant_id="acme", provider_id="openai", model="gpt-x",
                                         ttl_secs=60, metadata={"blob": "x" * 20_000})

        session = await publisher.open_session("s-1", tenant_id="acme", provider_id="openai", model="gpt-x",
                                               ttl_secs=600, occurred_at=at(0))
        await session.activate(initial_token_count=10, occurred_at=at(1))
        with pytest.raises(InvalidEventError, match="field 'delta_token_count'"):
            await session.record_round(delta_token_count=-1, occurred_at=at(2))
        with pytest.raises(InvalidEventError, match="field 'occurred_at'"):
            await session.record_round(delta_token_count=5, occurred_at=datetime(2024, 5, 1, 12, 0, 3))
        with pytest.raises(InvalidEventError, match="field 'occurred_at'"):
            await session.record_round(delta_token_count=5, occurred_at="yesterday")
        assert await session.record_round(delta_token_count=5, occurred_at=at(4)) == 1  # refused calls took no number
        with pytest.raises(InvalidEventError, match="field 'reason'"):
            await session.close(reason="", occurred_at=at(5))
        assert session.unacknowledged == []

    records = await read_topic(kafka_bootstrap, topic, PARTITIONS)
    assert [orjson.loads(record.value)["type"] for record in records] == [
        "session.created", "session.activated", "round.completed"]


@pytest.mark.integration
async def test_a_gateway_repeating_a_session_after_a_restart_gives_duplicates_counted_once(
        kafka_bootstrap: str, topic: str) -> None:
    """The gateway does not know what reached the broker before it restarted,
    so it repeats the session's steps with the same arguments."""

    async def first_steps(publisher: SessionPublisher):
        session = await publisher.open_session("s-9", tenant_id="acme", provider_id="openai", model="gpt-x",
                                               ttl_secs=600, occurred_at=at(0))
        await session.activate(initial_token_count=1000, occurred_at=at(1))
        await session.record_round(delta_token_count=100, occurred_at=at(2))
        await session.record_round(delta_token_count=200, occurred_at=at(3))
        return session

    async with SessionPublisher(kafka_bootstrap, topic=topic) as before_restart:
        await first_steps(before_restart)
    async with SessionPublisher(kafka_bootstrap, topic=topic) as after_restart:
        session = await first_steps(after_restart)
        await session.record_round(delta_token_count=300, occurred_at=at(4))
        await session.close(occurred_at=at(5))

    records = await read_topic(kafka_bootstrap, topic, PARTITIONS)
    values = [record.value for record in records]
    assert len(values) == 10
    assert values[:4] == values[4:8]  # the repeated steps: the same bytes, event_ids included
    ids = Counter(orjson.loads(value)["event_id"] for value in values)
    assert sorted(ids.values()) == [1, 1, 2, 2, 2, 2]

    _, outputs = account(records, NOW)
    [closure] = closures(outputs)
    assert (closure.record.total_token_count, closure.record.round_count, closure.missing_rounds) == (1600, 3, 0)
    assert outcomes(outputs) == {"applied": 6, "duplicate": 4}


@pytest.mark.integration
async def test_a_send_the_broker_did_not_acknowledge_is_sent_again_before_the_next_event(
        private_kafka: LocalKafka, unique_name: Callable[[str], str]) -> None:
    bootstrap = private_kafka.bootstrap
    topic = unique_name("events")
    await create_topics(bootstrap, {topic: PARTITIONS})
    publisher = SessionPublisher(bootstrap, topic=topic, delivery_timeout_secs=3,
                                 client_options={"retry_backoff_ms": 100})
    async with publisher:
        session = await publisher.open_session("s-5", tenant_id="acme", provider_id="openai", model="gpt-x",
                                               ttl_secs=600, occurred_at=at(0))
        await session.activate(initial_token_count=1000, occurred_at=at(1))
        private_kafka.stop()
        with pytest.raises(PublishError):
            await session.record_round(delta_token_count=100, occurred_at=at(2))
        assert len(session.unacknowledged) == 1 and session.rounds_sent == 1
        with pytest.raises(PublishError):
            await session.resend()
        private_kafka.start()
        assert await session.record_round(delta_token_count=200, occurred_at=at(3)) == 2
        assert session.unacknowledged == []
        await session.close(occurred_at=at(4))

    records = await read_topic(bootstrap, topic, PARTITIONS)
    events = [orjson.loads(record.value) for record in records]
    rounds = [event["round"] for event in events if event["type"] == "round.completed"]
    # Round 1 up to three times (aiokafka may still deliver the two timed-out sends), then round 2.
    assert rounds[-1] == 2 and set(rounds[:-1]) == {1} and len(rounds) <= 4
    assert {event["event_id"] for event in events if event["type"] == "round.completed" and event["round"] == 1} == {
        event_id_for("s-5", "round 1")}
    _, outputs = account(records, NOW)
    [closure] = closures(outputs)
    assert (closure.record.total_token_count, closure.record.round_count) == (1300, 2)
