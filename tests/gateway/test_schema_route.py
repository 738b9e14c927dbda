"""`GET /schemas/{name}.json` serves the files, and they resolve from there."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from app import schemas
from app.web.schemas import SCHEMA_MEDIA_TYPE, SCHEMAS_PATH, get_schema
from tests.gateway.examples import example_events


async def test_every_schema_is_served_and_resolves_relative_to_its_url() -> None:
    app = web.Application()
    app.router.add_get(SCHEMAS_PATH, get_schema)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        served = {}
        for name in schemas.SCHEMA_NAMES:
            response = await client.get(f"/schemas/{name}.json")
            assert response.status == 200 and response.content_type == SCHEMA_MEDIA_TYPE
            served[name] = orjson.loads(await response.read())
            assert served[name] == schemas.schema(name)
        for wrong in ("/schemas/nothing.json", "/schemas/event", "/schemas/..%2Fsettings.json"):
            response = await client.get(wrong)
            assert response.status == 404 and "event.json" in (await response.json())["detail"]
        base = str(client.make_url("/schemas/"))
    # As a tool that fetched /schemas/event.json would resolve its references.
    registry = Registry().with_resources(
        (f"{base}{name}.json", Resource.from_contents(document)) for name, document in served.items())
    validator = Draft202012Validator({"$ref": f"{base}event.json"}, registry=registry)
    for event in example_events().values():
        validator.validate(event)
    assert not validator.is_valid(example_events()["round.completed"] | {"round": 0})
