"""ACCOUNTANT_WEB_MAX_CONCURRENT_REQUESTS: beyond the cap, 503 with
Retry-After and a JSON body; the probes and /metrics answer past it."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.web.concurrency import concurrency_cap


async def test_requests_beyond_the_cap_are_503_with_retry_after_and_the_probes_still_answer() -> None:
    release = asyncio.Event()
    inside = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal inside
        inside += 1
        await release.wait()
        return web.json_response({"ok": True})

    async def probe(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[concurrency_cap(2)])
    app.router.add_get("/sessions", slow)
    for path in ("/healthz", "/readyz", "/metrics"):
        app.router.add_get(path, probe)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        in_progress = [asyncio.create_task(client.get("/sessions")) for _ in range(2)]
        async with asyncio.timeout(10):
            while inside < 2:
                await asyncio.sleep(0.01)
        refused = await client.get("/sessions")
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        body = await refused.json()
        assert body["error"] == "overloaded" and "ACCOUNTANT_WEB_MAX_CONCURRENT_REQUESTS" in body["detail"]
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status == 200, path
        release.set()
        assert [response.status for response in await asyncio.gather(*in_progress)] == [200, 200]
        assert (await client.get("/sessions")).status == 200  # the slots are free again
