"""Check a response body against what the OpenAPI document says it is."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

# jsonschema checks "format": "date-time" only with rfc3339-validator installed;
# without it the timestamps would pass unchecked.
assert "date-time" in Draft202012Validator.FORMAT_CHECKER.checkers, "pip install rfc3339-validator"


def documented_schema(document: dict, path: str, status: int, content_type: str = "application/json") -> dict:
    responses = document["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"GET {path} does not document status {status}"
    return responses[str(status)]["content"][content_type]["schema"]


def validate_response(document: dict, path: str, status: int, body: Any) -> None:
    """Raise jsonschema.ValidationError unless `body` is what GET `path` documents for `status`."""
    schema = {**documented_schema(document, path, status), "components": document["components"]}
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(body)
