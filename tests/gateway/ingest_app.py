"""`POST /events` served on loopback for the tests (tests/support/ingest.py),
on a topic of the test's own; the whole worker serves it in
tests/gateway/test_reordered_rounds.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.metrics import IngestMetrics
from app.web.ingest import INGEST_PATH, IngestSettings
from app.web.openapi import build_openapi
from tests.support.ingest import INGEST_PRODUCER, ingest_application

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
                     client_options: dict[str, Any] | None = None, metrics: IngestMetrics | None = None,
                     max_concurrent_requests: int = 256, wait_for_producer: bool = True) -> AsyncIterator[IngestApi]:
    """The app on loopback; by default once its producer has reached the broker (before, it answers 503)."""
    app = ingest_application(bootstrap, settings, token=TOKEN, client_options=client_options, metrics=metrics,
                             max_concurrent_requests=max_concurrent_requests)
    document = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        if wait_for_producer:
            async with asyncio.timeout(30):  # the producer's start
                while app[INGEST_PRODUCER].producer is None:
                    await asyncio.sleep(0.02)
        yield IngestApi(client, settings.topic)
    finally:
        await client.close()


def openapi_document(*, token_required: bool = True) -> dict[str, Any]:
    """The service's document with `POST /events` as its only operation, for fuzzing this app."""
    document = build_openapi(token_required=token_required)
    document["paths"] = {INGEST_PATH: document["paths"][INGEST_PATH]}
    return document
