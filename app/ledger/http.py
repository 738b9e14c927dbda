"""The ledger process's small HTTP endpoint: /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.ledger.metrics import LedgerMetrics


def build_web_app(metrics: LedgerMetrics, status: Callable[[], dict[str, Any]]) -> web.Application:
    """``status()`` says whether the ledger is ready (schema migrated, partitions
    positioned), what it owns, and whether it is ``healthy``: /healthz answers
    503 when not (stalled: closures wait and no batch committed for the stall
    timeout, the database down included), so that a stuck ledger is restarted."""

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        current = status()
        healthy = current.get("healthy", True)
        return web.json_response({"status": "ok" if healthy else "unhealthy", **current},
                                 status=200 if healthy else 503)

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
