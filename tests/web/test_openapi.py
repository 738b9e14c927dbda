"""The OpenAPI document: valid 3.1, and its record schemas follow the dataclass."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import ValidationError
from openapi_spec_validator import OpenAPIV31SpecValidator

from app.rules import MAX_COUNT, SECOND, SessionRecord
from app.web.openapi import build_openapi
from app.web.paging import CURSOR_PATTERN
from tests.web.openapi_check import validate_response

DOCUMENT = build_openapi(token_required=False)
SCHEMAS = DOCUMENT["components"]["schemas"]

micros = st.integers(0, 4_000_000_000 * SECOND)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
records = st.builds(
    SessionRecord,
    session_id=st.text(min_size=1, max_size=128), tenant_id=st.text(min_size=1, max_size=128),
    provider_id=st.text(min_size=1), model=st.text(min_size=1), created_at=micros,
    activated_at=st.none() | micros, closed_at=st.none() | micros, ttl_secs=st.integers(1, 2**32),
    round_count=st.integers(0, MAX_COUNT), initial_token_count=st.integers(0, MAX_COUNT // 2),
    delta_token_count=st.integers(0, MAX_COUNT // 2), metadata=json_values,
)


@pytest.mark.parametrize("token_required", [False, True])
def test_the_document_is_valid_openapi_3_1(token_required: bool) -> None:
    document = build_openapi(token_required=token_required)
    assert document["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(document).validate()


def test_session_record_is_a_named_schema_with_the_dataclass_fields() -> None:
    schema = SCHEMAS["SessionRecord"]
    fields = [field.name for field in dataclasses.fields(SessionRecord)]
    assert list(schema["properties"]) == fields and schema["required"] == fields
    assert schema["additionalProperties"] is False


def test_timestamps_are_rfc3339_strings_and_may_be_null_only_where_optional() -> None:
    properties = SCHEMAS["SessionView"]["properties"]
    assert properties["created_at"] == {"type": "string", "format": "date-time", "title": "Created At"}
    assert properties["expires_at"]["format"] == "date-time"
    for optional in ("activated_at", "closed_at"):
        assert {"type": "null"} in properties[optional]["anyOf"]
    assert properties["ttl_secs"]["type"] == "integer"


def test_the_view_adds_the_derived_fields() -> None:
    view = SCHEMAS["SessionView"]
    sample = SessionRecord("s", "t", "p", "m", 0, None, None, 1, 0, 0, 0, {})
    assert set(view["properties"]) == set(sample.to_view())
    assert set(view["required"]) == set(sample.to_view())
    assert view["properties"]["state"] == {"$ref": "#/components/schemas/State"}
    assert SCHEMAS["State"]["enum"] == ["pending", "active", "closed"]


@given(records)
def test_every_record_the_api_shows_matches_the_document(record: SessionRecord) -> None:
    validate_response(DOCUMENT, "/sessions/{session_id}", 200, record.to_view())
    validate_response(DOCUMENT, "/sessions", 200, {"sessions": [record.to_view()], "next_cursor": None})


def test_the_schema_is_strict_about_what_it_accepts() -> None:
    view = SessionRecord("s", "t", "p", "m", 0, None, None, 1, 0, 0, 0, {}).to_view()
    for broken in ({**view, "created_at": 0},                     # the stored integer leaked out
                   {**view, "closed_at": "yesterday"},            # not RFC 3339
                   {**view, "state": "open"},
                   {**view, "extra": 1},
                   {key: value for key, value in view.items() if key != "metadata"}):
        with pytest.raises(ValidationError):
            validate_response(DOCUMENT, "/sessions/{session_id}", 200, broken)


def test_with_a_token_every_operation_but_the_probes_documents_401() -> None:
    document = build_openapi(token_required=True)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        responses = item["get"]["responses"]
        if path in ("/healthz", "/readyz"):
            assert item["get"]["security"] == [] and "401" not in responses
        else:
            assert "401" in responses, path


def test_the_parameters_are_written_from_the_models_the_views_validate_with() -> None:
    cursor = {"name": "cursor", "in": "query", "required": False,
              "schema": {"type": "string", "minLength": 2, "pattern": f"^{CURSOR_PATTERN.pattern}$"},
              "description": "Opaque: the `next_cursor` of the previous page."}
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
             "description": "Items per page, 1..1000."}
    identifier = {"type": "string", "minLength": 1, "maxLength": 128}
    paths = DOCUMENT["paths"]
    assert paths["/sessions"]["get"]["parameters"] == [
        {"name": "tenant_id", "in": "query", "required": False, "schema": identifier},
        {"name": "state", "in": "query", "required": False, "style": "form", "explode": False,
         "schema": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/State"}},
         "description": "Comma-separated states to include, e.g. `pending,active`."},
        limit,
        cursor,
    ]
    assert paths["/tenants"]["get"]["parameters"] == [limit, cursor]
    assert paths["/sessions/{session_id}"]["get"]["parameters"] == [
        {"name": "session_id", "in": "path", "required": True, "schema": identifier}]
    assert paths["/tenants/{tenant_id}/usage"]["get"]["parameters"] == [
        {"name": "tenant_id", "in": "path", "required": True, "schema": identifier}]
    for path in ("/", "/stats", "/metrics", "/openapi.json", "/healthz", "/readyz"):
        assert "parameters" not in paths[path]["get"], path
    # The dashboard's sign-in parameter exists only when there is a token to sign in with.
    (token,) = build_openapi(token_required=True)["paths"]["/"]["get"]["parameters"]
    assert token["name"] == "token" and token["in"] == "query" and token["schema"] == {"type": "string"}
