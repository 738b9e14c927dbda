"""The generator of schema instances: valid, varied, and loud about keywords it does not know."""

from __future__ import annotations

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from app import schemas
from tests.gateway.reference import reference_validator
from tests.gateway.schema_strategies import UnsupportedSchema, instances
from tests.gateway.test_schema_agreement import events_of

TIMES = st.just("2024-05-01T12:00:00Z")


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_every_instance_is_valid_under_the_reference_validator(kind: str, data: st.DataObject) -> None:
    reference_validator(kind).validate(data.draw(events_of(kind)))


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
def test_optional_fields_come_and_go_and_unknown_fields_come(kind: str) -> None:
    schema = schemas.resolved_schema(kind)
    events = events_of(kind)
    named = {name for part in schema["allOf"] for name in part.get("properties", {})}
    required = {name for part in schema["allOf"] for name in part.get("required", ())}
    for name in named - required:
        find(events, lambda event, name=name: name in event)
        find(events, lambda event, name=name: name not in event)
    find(events, lambda event: set(event) - named)


def test_integers_are_sometimes_written_with_a_fraction() -> None:
    find(events_of("session.activated"), lambda event: isinstance(event["initial_token_count"], float))


def test_bounds_of_every_part_of_an_all_of_hold() -> None:
    rounds = instances({"allOf": [{"type": "integer", "minimum": 0, "maximum": 10}, {"minimum": 3}]}, TIMES)
    assert find(rounds, lambda _: True, settings=settings(database=None)) == 3
    assert find(rounds, lambda value: value >= 10) == 10


@pytest.mark.parametrize("schema", [
    {"type": "object", "additionalProperties": False},
    {"type": "string", "pattern": "^a+$"},
    {"type": "array"},
    {"allOf": [{"const": 1}, {"const": 2}]},
    {"minimum": 3},
])
def test_a_schema_beyond_the_generator_is_refused(schema: dict) -> None:
    with pytest.raises(UnsupportedSchema):
        instances(schema, TIMES)
