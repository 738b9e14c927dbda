"""The JSON Schemas in app/schemas: valid 2020-12 schemas, true to what the
service emits, and `validate_event` refusing bad events by field."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from app import rules, schemas
from app.rules import Delivery, Source, decode_event, parse_timestamp
from app.schemas import FieldError, validate_event
from tests.gateway.examples import SESSION, example_events
from tests.gateway.reference import reference_validator

NOW = parse_timestamp("2024-05-01T12:00:05Z")


@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_each_schema_is_valid_against_the_2020_12_meta_schema(name: str) -> None:
    document = schemas.schema(name)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # check_schema validates against the meta-schema with formats asserted (patterns are regexes).
    Draft202012Validator.check_schema(document)
    Draft202012Validator.check_schema(schemas.resolved_schema(name))


def test_every_schema_file_is_listed_and_every_listed_name_has_a_file() -> None:
    files = {entry.name.removesuffix(".json") for entry in resources.files("app.schemas").iterdir()
             if entry.name.endswith(".json")}
    assert files == set(schemas.SCHEMA_NAMES)


@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_a_resolved_schema_stands_alone(name: str) -> None:
    text = json.dumps(schemas.resolved_schema(name))
    assert '"$ref"' not in text


# --------------------------------------------------------------------------
# Valid events


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
def test_a_valid_event_of_each_type_passes_its_own_schema_the_event_schema_and_validate_event(kind: str) -> None:
    event = example_events()[kind]
    reference_validator(kind).validate(event)
    reference_validator("event").validate(event)
    assert validate_event(event) == []


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
def test_an_event_of_one_type_fails_the_schemas_of_the_others(kind: str) -> None:
    event = example_events()[kind]
    for other in set(schemas.EVENT_TYPES) - {kind}:
        assert not reference_validator(other).is_valid(event)


def test_unknown_extra_fields_are_allowed() -> None:
    event = example_events()["round.completed"] | {"gateway": "gw-3", "trace": {"id": [1, 2]}}
    reference_validator("event").validate(event)
    assert validate_event(event) == []


@pytest.mark.parametrize("metadata", [None, 3, "text", [1, "a"], {"nested": {"x": None}}, True])
def test_metadata_may_be_any_json_value_or_absent(metadata: Any) -> None:
    event = example_events()["session.created"] | {"metadata": metadata}
    assert reference_validator("event").is_valid(event) and validate_event(event) == []
    del event["metadata"]
    assert reference_validator("event").is_valid(event) and validate_event(event) == []


@pytest.mark.parametrize("text", [
    "2024-05-01T12:00:00Z", "2024-05-01t12:00:00z", "2024-05-01T14:00:00+02:00", "2024-05-01T07:30:00-04:30",
    "2024-05-01T12:00:00.123456789Z", "2024-02-29T12:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
])
def test_rfc3339_timestamps_with_an_offset_are_valid(text: str) -> None:
    event = example_events()["session.activated"] | {"occurred_at": text}
    assert reference_validator("event").is_valid(event) and validate_event(event) == []


@pytest.mark.parametrize("kind, name, value", [
    ("session.created", "ttl_secs", 0), ("session.created", "ttl_secs", 2**32 + 1),
    ("session.created", "ttl_secs", "60"), ("session.extended", "ttl_secs", True),
    ("session.activated", "initial_token_count", -1), ("session.activated", "initial_token_count", 2**63),
    ("round.completed", "round", 0), ("round.completed", "delta_token_count", 2.5), ("round.completed", "model", ""),
    ("session.created", "provider_id", "p" * 1025), ("session.created", "model", 5),
    ("session.closed", "reason", "r" * 1025), ("session.closed", "reason", 5), ("session.activated", "event_id", ""),
    ("session.activated", "session_id", "s" * 129), ("session.activated", "tenant_id", None),
    ("session.activated", "type", "session.updated"),
    # SPEC §3 rev. 3: no U+0000 in ids and names.
    ("session.activated", "event_id", "e\x00"), ("session.activated", "session_id", "s-1\x00"),
    ("session.activated", "tenant_id", "\x00"), ("session.created", "provider_id", "open\x00ai"),
    ("session.created", "model", "gpt\x00"), ("round.completed", "model", "\x00m"),
    ("session.closed", "reason", "done\x00"),
    *(("session.activated", "occurred_at", value) for value in (
        "2024-05-01T12:00:00", "2024-02-30T12:00:00Z", "2023-02-29T12:00:00Z", "2024-05-01T12:00:60Z",
        "2024-05-01T12:00:00Z\n", "0000-01-01T00:00:00Z", "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00.1234567890Z",
        "2024-05-01T12:00:00+24:00", 1714564800, "\u0662\u0660\u0662\u0664-05-01T12:00:00Z")),
])
def test_a_bad_field_is_refused_by_both_validators_and_named(kind: str, name: str, value: Any) -> None:
    event = example_events()[kind] | {name: value}
    assert not reference_validator("event").is_valid(event)
    assert not reference_validator(kind).is_valid(event)
    errors = validate_event(event)
    assert [error.field for error in errors] == [name], errors
    assert f"field '{name}'" in errors[0].detail


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
def test_each_missing_required_field_is_named(kind: str) -> None:
    required = set(schemas.resolved_schema(kind)["allOf"][0]["required"])
    required |= set(schemas.resolved_schema(kind)["allOf"][1].get("required", ()))
    assert {"event_id", "type", "session_id", "tenant_id", "occurred_at"} <= required
    for name in required:
        event = example_events()[kind]
        del event[name]
        assert not reference_validator("event").is_valid(event)
        assert [error.field for error in validate_event(event)] == [name]
        assert validate_event(event)[0].detail == f"field '{name}' is required"


def test_every_bad_field_is_named_not_only_the_first() -> None:
    event = example_events()["round.completed"] | {"round": 0, "tenant_id": "", "occurred_at": "yesterday"}
    del event["delta_token_count"]
    assert sorted(error.field for error in validate_event(event)) == [
        "delta_token_count", "occurred_at", "round", "tenant_id"]


@pytest.mark.parametrize("value", [[], [example_events()["session.closed"]], 3, "x", None])
def test_a_value_that_is_not_an_object_is_refused_as_a_whole(value: Any) -> None:
    assert not reference_validator("event").is_valid(value)
    assert validate_event(value) == [FieldError("", "an event must be a JSON object")]


# What the schema cannot say, validate_event still refuses, as the worker would.


def test_metadata_over_the_size_bound_is_refused_and_the_bound_is_the_policy() -> None:
    metadata = {"k": "a" * (16 * 1024)}
    event = example_events()["session.created"] | {"metadata": metadata}
    assert reference_validator("event").is_valid(event)
    [error] = validate_event(event)
    assert error.field == "metadata" and "16384 bytes" in error.detail
    assert validate_event(event, rules.Policy(metadata_max_bytes=32 * 1024)) == []


def test_metadata_nested_past_the_depth_bound_is_refused() -> None:
    metadata: list = []
    for _ in range(200):
        metadata = [metadata]
    event = example_events()["session.created"] | {"metadata": metadata}
    assert reference_validator("event").is_valid(event)
    assert [error.field for error in validate_event(event)] == ["metadata"]


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_instant_outside_years_1_to_9999_in_utc_is_refused(text: str) -> None:
    event = example_events()["session.activated"] | {"occurred_at": text}
    assert reference_validator("event").is_valid(event)
    assert [error.field for error in validate_event(event)] == ["occurred_at"]


def test_an_integer_written_with_a_fraction_is_refused() -> None:
    event = example_events()["session.created"] | {"ttl_secs": 60.0}
    assert reference_validator("event").is_valid(event)  # JSON Schema: 60.0 is an integer
    assert [error.field for error in validate_event(event)] == ["ttl_secs"]


def test_a_python_value_json_cannot_carry_is_refused_not_raised() -> None:
    event = example_events()["session.created"] | {"metadata": {"big": 2**70}}
    [error] = validate_event(event)
    assert error.field == "" and "JSON" in error.detail


# --------------------------------------------------------------------------
# What the service emits matches the output schemas


def deliver(state: rules.Session | None, body: dict | bytes, offset: int) -> tuple:
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    delivery = Delivery(Source("session-events", 3, offset), decode_event(SESSION.encode(), value))
    return rules.apply(state, delivery, NOW)


def test_a_closure_and_its_record_match_their_schemas() -> None:
    state = None
    outputs: tuple = ()
    for offset, event in enumerate(example_events().values()):
        state, outputs = deliver(state, event, offset)
    [closure] = [output for output in outputs if isinstance(output, rules.Closure)]
    body = orjson.loads(orjson.dumps(closure.to_json(NOW)))
    reference_validator("closure").validate(body)
    reference_validator("session-record").validate(body["record"])
    open_record = body["record"] | {"closed_at": None}
    reference_validator("session-record").validate(open_record)
    assert not reference_validator("closure").is_valid(body | {"record": open_record})


@pytest.mark.parametrize("body", [
    example_events()["round.completed"],  # unknown session
    example_events()["round.completed"] | {"round": 0},  # parsed but invalid
    [1, 2],  # JSON but not an object
    b"\xff not json",  # does not parse: raw
])
def test_rejections_match_the_rejection_schema(body: dict | list | bytes) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    _, outputs = deliver(None, raw, 7)
    [rejection] = [output for output in outputs if isinstance(output, rules.Rejection)]
    reference_validator("rejection").validate(orjson.loads(orjson.dumps(rejection.to_json(NOW))))


def test_a_truncated_rejection_needs_raw_and_raw_size_and_no_event() -> None:
    truncated = {
        "reason": "invalid_event", "detail": "field 'metadata' is larger than 16384 bytes encoded",
        "raw": base64.b64encode(b"x" * 64).decode(), "raw_truncated": True, "raw_size": 300_000,
        "source": {"topic": "session-events", "partition": 0, "offset": 12}, "rejected_at": "2024-05-01T12:00:00Z",
    }
    reference_validator("rejection").validate(truncated)
    assert not reference_validator("rejection").is_valid({k: v for k, v in truncated.items() if k != "raw_size"})
    plain = {k: v for k, v in truncated.items() if k not in ("raw", "raw_truncated", "raw_size")}
    assert not reference_validator("rejection").is_valid(plain)  # neither event nor the truncated form
    reference_validator("rejection").validate(plain | {"event": None})
