"""HTTP views on the Faust web server (SPEC §8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.faust_app import Service


def register_views(service: "Service") -> None:
    app = service.app

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web, request):
        ready = service.accountant.recovered and not app.rebalancing
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/stats")
    async def stats(web, request):
        body = service.metrics.snapshot()
        body["live_sessions"] = sum(service.accountant.open_sessions.values())
        return web.json(body)
