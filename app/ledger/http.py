"""The ledger process's small HTTP endpoint: /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.ledger.metrics import LedgerMetrics


def build_web_app(metrics: LedgerMetrics, status: Callable[[], dict[str, Any]]) -> web.Application:
    """``status()`` says whether the ledger is ready (schema migrated, partitions
    positioned) and what it owns; /healthz answers 200 while the process runs,
    database down or not (it is waiting, not broken)."""

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **status()})

    async def readyz(request: web.Request) -> web.Response:
        current = status()
        return web.json_response(current, status=200 if current.get("ready") else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
