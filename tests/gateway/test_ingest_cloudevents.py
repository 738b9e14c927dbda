"""`POST /events` spoken to by the CloudEvents Python SDK, a client no one
here wrote, in the three modes of the HTTP protocol binding: structured,
batch and binary; `datacontenttype` as a media type; an empty batch; and the
required attributes (which the SDK always sends, so their absence is tested
with hand-made requests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from app.rules import parse_timestamp
from app.web.ingest import CLOUDEVENT_BATCH, CLOUDEVENT_FIELDS, IngestSettings
from tests.gateway.examples import example_events
from tests.gateway.ingest_app import BEARER, IngestApi, ingest_api
from tests.gateway.topics import PARTITIONS, read_topic

pytestmark = pytest.mark.integration

JSON_UTF8 = "application/json; charset=utf-8"


def sdk_event(event: dict[str, Any], datacontenttype: str = JSON_UTF8) -> CloudEvent:
    """`event` as the SDK's CloudEvent: id, type, subject and time as attributes, the rest as data."""
    return CloudEvent(
        attributes={"id": event["event_id"], "type": event["type"], "source": "//gateway/gw-sdk",
                    "subject": event["session_id"], "datacontenttype": datacontenttype,
                    "time": datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))},
        data={name: value for name, value in event.items() if name not in CLOUDEVENT_FIELDS.values()})


async def send(api: IngestApi, message: HTTPMessage) -> tuple[int, Any]:
    response = await api.client.post("/events", data=message.body, headers={**message.headers, **BEARER})
    return response.status, await response.json()


def same_event(produced: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Equal, the time compared as an instant (the SDK writes it in its own form)."""
    return (parse_timestamp(produced["occurred_at"]) == parse_timestamp(sent["occurred_at"])
            and {**produced, "occurred_at": ""} == {**sent, "occurred_at": ""})


async def test_the_sdk_in_structured_batch_and_binary_mode(kafka_bootstrap: str, topic: str) -> None:
    events = list(example_events("s-sdk").values())
    created, activated, round_1, extended, closed = events
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        assert await send(api, to_structured(sdk_event(created), JSONFormat())) == (
            202, {"accepted": 1, "refused": []})
        batch = [orjson.loads(to_structured(sdk_event(event), JSONFormat()).body)
                 for event in (activated, round_1)]
        assert await send(api, HTTPMessage({"Content-Type": CLOUDEVENT_BATCH}, orjson.dumps(batch))) == (
            202, {"accepted": 2, "refused": []})
        for event in (extended, closed):
            message = to_binary(sdk_event(event), JSONFormat())
            assert "ce-id" in message.headers and message.headers["content-type"] == JSON_UTF8
            assert await send(api, message) == (202, {"accepted": 1, "refused": []})
        records = await read_topic(kafka_bootstrap, topic, PARTITIONS)
    produced = sorted((orjson.loads(record.value) for record in records), key=lambda event: event["event_id"])
    expected = sorted(events, key=lambda event: event["event_id"])
    assert len(produced) == 5 and all(same_event(p, e) for p, e in zip(produced, expected, strict=True))


async def test_an_empty_batch_is_accepted_with_nothing_in_it(kafka_bootstrap: str, topic: str) -> None:
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        assert await send(api, HTTPMessage({"Content-Type": CLOUDEVENT_BATCH}, b"[]")) == (
            202, {"accepted": 0, "refused": []})
        assert await read_topic(kafka_bootstrap, topic, PARTITIONS) == []


async def test_required_attributes_and_data_media_types(kafka_bootstrap: str, topic: str) -> None:
    event = example_events("s-attrs")["round.completed"]
    structured = orjson.loads(to_structured(sdk_event(event), JSONFormat()).body)
    without_id_and_type = {name: value for name, value in structured.items() if name not in ("id", "type")}
    # Both fields in data would have made an event before; a CloudEvent must carry them as attributes.
    without_id_and_type["data"] |= {"event_id": event["event_id"], "type": event["type"]}
    binary = to_binary(sdk_event(event), JSONFormat())
    binary_without_id = {name: value for name, value in binary.headers.items() if name != "ce-id"}
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic)) as api:
        status, answer = await send(api, HTTPMessage({"Content-Type": "application/cloudevents+json"},
                                                     orjson.dumps(without_id_and_type)))
        assert status == 422 and [error["field"] for error in answer["refused"][0]["errors"]] == ["id", "type"]
        status, answer = await send(api, HTTPMessage(binary_without_id, binary.body))
        assert status == 422 and [error["field"] for error in answer["refused"][0]["errors"]] == ["id"]
        not_json = to_binary(sdk_event(event, "text/plain"), JSONFormat())
        status, answer = await send(api, HTTPMessage(not_json.headers, b"round one"))
        assert status == 422 and answer["refused"][0]["errors"][0]["field"] == "datacontenttype"
        latin1 = {**structured, "datacontenttype": "application/json; charset=iso-8859-1"}
        status, answer = await send(api, HTTPMessage({"Content-Type": "application/cloudevents+json"},
                                                     orjson.dumps(latin1)))
        assert status == 422 and answer["refused"][0]["errors"][0]["field"] == "datacontenttype"
        vendor_json = {**structured, "datacontenttype": "application/vnd.gateway+json"}
        assert await send(api, HTTPMessage({"Content-Type": "application/cloudevents+json; charset=utf-8"},
                                           orjson.dumps(vendor_json))) == (202, {"accepted": 1, "refused": []})
        assert len(await read_topic(kafka_bootstrap, topic, PARTITIONS)) == 1
