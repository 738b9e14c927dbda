"""`GET /schemas/{name}.json` on a worker's web server (its real views and
middleware): the files as stored, resolving from there, behind the token."""

from __future__ import annotations

from pathlib import Path

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from app import schemas
from app.web.schemas import SCHEMA_MEDIA_TYPE
from tests.gateway.examples import example_events
from tests.web.inprocess import InProcessWorker

TOKEN = "schema-secret"


async def test_every_schema_is_served_and_resolves_relative_to_its_url(tmp_path: Path) -> None:
    worker = await InProcessWorker(tmp_path, api_token=TOKEN).start()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        served = {}
        for name in schemas.SCHEMA_NAMES:
            status, body, response = await worker.get(f"/schemas/{name}.json", headers=bearer)
            assert status == 200 and response.content_type == SCHEMA_MEDIA_TYPE
            served[name] = orjson.loads(body)
            assert served[name] == schemas.schema(name)
        status, body, _ = await worker.get("/schemas/event.json")
        assert (status, body["error"]) == (401, "unauthorized")
        status, body, _ = await worker.get("/schemas/nothing.json", headers=bearer)
        assert status == 404 and "event.json" in body["detail"]
        for wrong in ("/schemas/event", "/schemas/..%2Fsettings.json"):
            status, body, _ = await worker.get(wrong, headers=bearer)
            assert status == 404 and body["error"] == "not_found", wrong
        base = f"{worker.url}/schemas/"
    finally:
        await worker.stop()
    # As a tool that fetched /schemas/event.json would resolve its references.
    registry = Registry().with_resources(
        (f"{base}{name}.json", Resource.from_contents(document)) for name, document in served.items())
    validator = Draft202012Validator({"$ref": f"{base}event.json"}, registry=registry)
    for event in example_events().values():
        validator.validate(event)
    assert not validator.is_valid(example_events()["round.completed"] | {"round": 0})
