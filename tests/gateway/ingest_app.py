"""`POST /events` served on loopback for the tests: the real handler, the
real token middleware, a real producer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.publisher import reliable_producer
from app.web import json_errors, token_middleware  # app.web.auth / app.web.errors once the package lands
from app.web.ingest import IngestSettings, ingest_handler, ingest_openapi

TOKEN = "ingest-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class IngestApi:
    client: TestClient
    topic: str

    async def post(self, body: Any, content_type: str = "application/json", *,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.client.post("/events", data=data,
                                          headers={"Content-Type": content_type, **BEARER, **(headers or {})})
        return response.status, await response.json(), dict(response.headers)


@asynccontextmanager
async def ingest_api(bootstrap: str, settings: IngestSettings, *, port: int | None = None,
                     client_options: dict[str, Any] | None = None) -> AsyncIterator[IngestApi]:
    producer = reliable_producer(bootstrap, client_options)
    await producer.start()
    app = web.Application(middlewares=[json_errors, token_middleware(TOKEN)])
    app.router.add_post("/events", ingest_handler(producer, settings))
    document = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield IngestApi(client, settings.topic)
    finally:
        await client.close()
        await producer.stop()


def openapi_document() -> dict[str, Any]:
    """A document of the ingest operation alone, as the service's will merge it."""
    fragment = ingest_openapi(token_required=True)
    return {
        "openapi": "3.1.0",
        "info": {"title": "usage-accountant ingest", "version": "test"},
        "paths": fragment["paths"],
        "components": fragment["components"] | {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
    }
