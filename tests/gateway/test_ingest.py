"""`POST /events` against a real broker: every body kind, mixed valid and
invalid events, limits, the token, and what the rules make of the result."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from app import rules
from app.rules import parse_timestamp
from app.web.ingest import IngestSettings
from tests.gateway.examples import example_events
from tests.gateway.ingest_app import IngestApi, ingest_api
from tests.gateway.topics import PARTITIONS, account, read_topic

pytestmark = pytest.mark.integration

NOW = parse_timestamp("2024-05-01T12:05:00Z")


def cloudevent(event: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    """`event` as a structured-mode CloudEvent (docs/ingest.md)."""
    data = {name: value for name, value in event.items()
            if name not in ("event_id", "type", "session_id", "occurred_at")}
    return {"specversion": "1.0", "id": event["event_id"], "source": "//gateway/gw-1", "type": event["type"],
            "subject": event["session_id"], "time": event["occurred_at"], "data": data, **attributes}


async def produced(api: IngestApi, bootstrap: str) -> list[dict[str, Any]]:
    records = await read_topic(bootstrap, api.topic, PARTITIONS)
    assert all(record.key == orjson.loads(record.value)["session_id"].encode() for record in records)
    return [orjson.loads(record.value) for record in records]


async def test_one_json_event(kafka_bootstrap: str, topic: str) -> None:
    event = example_events()["session.created"]
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        assert (await api.post(event))[:2] == (202, {"accepted": 1, "refused": []})
        assert await produced(api, kafka_bootstrap) == [event]


async def test_an_array_with_invalid_events_produces_the_valid_ones_and_names_the_rest(kafka_bootstrap: str,
                                                                                       topic: str) -> None:
    events = list(example_events().values())
    events.insert(2, events[2] | {"round": 0})
    events.insert(4, {"type": "round.completed"})
    events.insert(5, "not an event")
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        status, answer, _ = await api.post(events)
        assert status == 202 and answer["accepted"] == 5
        assert [(refusal["index"], sorted(error["field"] for error in refusal["errors"]))
                for refusal in answer["refused"]] == [
            (2, ["round"]), (4, ["delta_token_count", "event_id", "occurred_at", "round", "session_id", "tenant_id"]),
            (5, [""])]
        assert "field 'round'" in answer["refused"][0]["errors"][0]["detail"]
        valid = [event for index, event in enumerate(events) if index not in (2, 4, 5)]
        assert await produced(api, kafka_bootstrap) == valid


async def test_ndjson_with_a_line_that_is_not_json(kafka_bootstrap: str, topic: str) -> None:
    events = list(example_events().values())
    lines = [orjson.dumps(event) for event in events[:3]] + [b"{not json", b""] + [
        orjson.dumps(event) for event in events[3:]]
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        status, answer, _ = await api.post(b"\n".join(lines) + b"\n", "application/x-ndjson")
        assert status == 202 and answer["accepted"] == 5
        [refusal] = answer["refused"]
        assert refusal["index"] == 3 and refusal["errors"][0]["field"] == "" and "not UTF-8 JSON" in refusal[
            "errors"][0]["detail"]
        assert await produced(api, kafka_bootstrap) == events


async def test_cloudevents_structured_and_batch_map_onto_events(kafka_bootstrap: str, topic: str) -> None:
    events = example_events()
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        single = cloudevent(events["session.created"])
        assert (await api.post(single, "application/cloudevents+json"))[:2] == (202, {"accepted": 1, "refused": []})
        batch = [
            cloudevent(events["session.activated"]),
            cloudevent(events["round.completed"] | {"round": 0}),  # invalid data field
            cloudevent(events["round.completed"], time="2024-05-01 12:00:02Z"),  # invalid attribute
            cloudevent(events["round.completed"]) | {"data": events["round.completed"] | {"session_id": "other"}},
            cloudevent(events["round.completed"], specversion="0.3", source=""),
            cloudevent(events["round.completed"]) | {"data_base64": "e30="},
            # The envelope may leave a field to data; equal in both is fine too.
            {name: value for name, value in cloudevent(events["round.completed"]).items() if name != "subject"}
            | {"data": events["round.completed"]},
            cloudevent(events["session.closed"]),
        ]
        status, answer, _ = await api.post(batch, "application/cloudevents-batch+json")
        assert status == 202 and answer["accepted"] == 3
        assert {refusal["index"]: sorted(error["field"] for error in refusal["errors"])
                for refusal in answer["refused"]} == {
            1: ["data.round"], 2: ["time"], 3: ["data.session_id"], 4: ["source", "specversion"],
            5: ["data_base64"]}
        time_error = answer["refused"][1]["errors"][0]["detail"]
        assert time_error.startswith("field 'time' ")
        status, answer, _ = await api.post(cloudevent(events["session.closed"]), "application/cloudevents-batch+json")
        assert status == 400 and "JSON array" in answer["detail"]
        assert await produced(api, kafka_bootstrap) == [
            events["session.created"], events["session.activated"], events["round.completed"],
            events["session.closed"]]


async def test_what_was_accepted_is_accounted_once_whatever_the_body(kafka_bootstrap: str, topic: str) -> None:
    """A session sent in pieces through every body kind, some of it twice: the
    rules close it with the right totals."""
    events = example_events("s-ingest")
    rounds = [events["round.completed"] | {"event_id": f"r-{n}", "round": n, "delta_token_count": 10 * n}
              for n in range(1, 5)]
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        assert (await api.post(events["session.created"]))[0] == 202
        assert (await api.post([events["session.activated"], rounds[0]]))[0] == 202
        ndjson = b"\n".join(orjson.dumps(event) for event in (rounds[1], rounds[0]))  # round 1 re-sent
        assert (await api.post(ndjson, "application/x-ndjson"))[0] == 202
        assert (await api.post(cloudevent(rounds[2]), "application/cloudevents+json"))[0] == 202
        batch = [cloudevent(rounds[3]), cloudevent(events["session.closed"])]
        assert (await api.post(batch, "application/cloudevents-batch+json"))[0] == 202
        records = await read_topic(kafka_bootstrap, topic, PARTITIONS)
    _, outputs = account(records, NOW)
    [closure] = [output for output in outputs if isinstance(output, rules.Closure)]
    assert closure.record.session_id == "s-ingest"
    assert (closure.record.total_token_count, closure.record.round_count, closure.missing_rounds) == (1300, 4, 0)
    assert Counter(o.result.value for o in outputs if isinstance(o, rules.Outcome)) == {"applied": 7, "duplicate": 1}


async def test_limits_bad_bodies_and_the_token(kafka_bootstrap: str, topic: str) -> None:
    event = example_events()["session.created"]
    settings = IngestSettings(topic=topic, max_events=3, max_bytes=4096)
    async with ingest_api(kafka_bootstrap, settings) as api:
        status, answer, _ = await api.post([event] * 4)
        assert status == 413 and "ACCOUNTANT_INGEST_MAX_EVENTS" in answer["detail"]
        status, answer, _ = await api.post(event | {"metadata": {"blob": "x" * 5000}})
        assert status == 413 and "ACCOUNTANT_INGEST_MAX_BYTES" in answer["detail"]
        assert (await api.post(event, "text/plain"))[0] == 415
        assert (await api.post(b"{", "application/json"))[0] == 400
        assert (await api.post([]))[0] == 400
        status, answer, _ = await api.post([event | {"ttl_secs": 0}, event | {"model": ""}])
        assert status == 422 and answer["accepted"] == 0 and len(answer["refused"]) == 2
        response = await api.client.post("/events", data=orjson.dumps(event),
                                         headers={"Content-Type": "application/json"})
        assert response.status == 401 and (await response.json())["error"] == "unauthorized"
        response = await api.client.post("/events", data=orjson.dumps(event),
                                         headers={"Content-Type": "application/json", "Authorization": "Bearer no"})
        assert response.status == 401
        assert await produced(api, kafka_bootstrap) == []
