"""schemathesis over `POST /events` with the token on: no server error, and
every answer as the service's OpenAPI document says."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from app import schemas
from app.dev.kafka import create_topics
from app.dev.processes import pick_free_loopback_port
from app.web.ingest import CLOUDEVENT, CLOUDEVENT_FIELDS, IngestSettings, screen
from app.web.openapi import build_openapi
from tests.gateway.ingest_app import TOKEN, ingest_api, openapi_document
from tests.gateway.schema_strategies import instances
from tests.gateway.test_schema_agreement import documented_exception, timestamps


@pytest.mark.integration
async def test_schemathesis_finds_no_server_error(kafka_bootstrap: str, unique_name: Callable[[str], str],
                                                  tmp_path: Path) -> None:
    topic = unique_name("events")
    await create_topics(kafka_bootstrap, {topic: 3})
    port = pick_free_loopback_port()
    async with ingest_api(kafka_bootstrap, IngestSettings(topic=topic, max_events=20, max_bytes=64 * 1024),
                          port=port):
        fuzz = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{port}/openapi.json",
            "--header", f"Authorization: Bearer {TOKEN}",
            # Not positive_data_acceptance: the NDJSON body is documented as a string and a CloudEvent's
            # `data` as an object, so schema-valid bodies may hold events the endpoint rightly refuses.
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_headers_conformance,response_schema_conformance,ignored_auth",
            "--max-examples", "100", "--generation-database", "none", "--workers", "1", "--no-color",
            "--request-timeout", "20",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(fuzz.communicate(), timeout=280)
    text = output.decode(errors="replace")
    assert fuzz.returncode == 0, text[-8000:]
    assert re.search(r"Tested: *1\b", text), text[-3000:]


@pytest.mark.parametrize("token_required", [True, False])
def test_the_operation_alone_makes_a_valid_openapi_3_1_document(token_required: bool) -> None:
    document = openapi_document(token_required=token_required)
    assert ("401" in document["paths"]["/events"]["post"]["responses"]) is token_required
    validate(document)


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_cloudevent_valid_under_the_document_is_accepted(kind: str, data: st.DataObject) -> None:
    """The documented CloudEvent is exact enough that a valid one is accepted
    (but for the rules JSON Schema cannot express, as for plain events)."""
    variants = build_openapi(token_required=False)["components"]["schemas"]["CloudEvent"]["oneOf"]
    cloudevent = data.draw(instances(variants[schemas.EVENT_TYPES.index(kind)], timestamps()), label="cloudevent")
    accepted, refused = screen(CLOUDEVENT, json.dumps(cloudevent).encode(), IngestSettings())
    event = cloudevent["data"] | {field: cloudevent[attribute] for attribute, field in CLOUDEVENT_FIELDS.items()}
    assert bool(refused) == (documented_exception(event) is not None), refused
    assert accepted == ([] if refused else [event])
