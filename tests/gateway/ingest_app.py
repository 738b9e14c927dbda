"""`POST /events` served on loopback for the tests: the real handler, the
real error and token middleware, a real producer, on a topic of the test's
own (the whole worker is in tests/gateway/test_reordered_rounds.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.publisher import reliable_producer
from app.web.auth import token_middleware
from app.web.errors import json_errors
from app.web.ingest import INGEST_PATH, IngestSettings, ingest_handler
from app.web.ingest_producer import IngestProducer
from app.web.openapi import build_openapi

TOKEN = "ingest-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class IngestApi:
    client: TestClient
    topic: str

    async def post(self, body: Any, content_type: str = "application/json", *,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.client.post(INGEST_PATH, data=data,
                                          headers={"Content-Type": content_type, **BEARER, **(headers or {})})
        return response.status, await response.json(), dict(response.headers)


@asynccontextmanager
async def ingest_api(bootstrap: str, settings: IngestSettings, *, port: int | None = None,
                     client_options: dict[str, Any] | None = None) -> AsyncIterator[IngestApi]:
    producer = IngestProducer(lambda: reliable_producer(bootstrap, client_options))
    app = web.Application(middlewares=[json_errors, token_middleware(TOKEN)])
    app.router.add_post(INGEST_PATH, ingest_handler(producer, settings))
    app.on_startup.append(producer.on_startup)
    app.on_cleanup.append(producer.on_cleanup)
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


def openapi_document(*, token_required: bool = True) -> dict[str, Any]:
    """The service's document with `POST /events` as its only operation, for fuzzing this app."""
    document = build_openapi(token_required=token_required)
    document["paths"] = {INGEST_PATH: document["paths"][INGEST_PATH]}
    return document
