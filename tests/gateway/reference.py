"""A second opinion on the schemas: the `jsonschema` package (pure Python, a
different implementation from the `jsonschema_rs` the service validates
with), `format` asserted, the files resolved from each other by name."""

from __future__ import annotations

from functools import cache

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from app import schemas

_BASE = "https://usage-accountant.invalid/test-schemas/"


@cache
def reference_validator(name: str) -> Draft202012Validator:
    """The validator of the schema file `name` (e.g. "event", "closure")."""
    registry = Registry().with_resources(
        (f"{_BASE}{other}.json", Resource.from_contents(schemas.schema(other))) for other in schemas.SCHEMA_NAMES
    )
    return Draft202012Validator({"$ref": f"{_BASE}{name}.json"}, registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)
