"""`ACCOUNTANT_WEB_MAX_CONCURRENT_REQUESTS`: a cap on the requests a worker
answers at once, so that a flood of them queues in the clients, not in the
worker's memory and event loop (which also runs the agent)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.web.errors import Handler, json_response

__all__ = ["UNCAPPED_PATHS", "concurrency_cap"]

#: The probes and the scrape answer past the cap: an overloaded worker is
#: neither dead nor unready, and its metrics are what shows the overload.
UNCAPPED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Seconds a refused client is told to wait: requests last milliseconds to a few seconds.
RETRY_AFTER_SECS = 1


def concurrency_cap(limit: int) -> Middleware:
    """Answers 503 with Retry-After to a request beyond `limit` in progress."""
    in_progress = 0

    @web.middleware
    async def cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_progress
        if request.path in UNCAPPED_PATHS:
            return await handler(request)
        if in_progress >= limit:
            return json_response({"error": "overloaded", "detail": f"{limit} requests are in progress "
                                  "(ACCOUNTANT_WEB_MAX_CONCURRENT_REQUESTS); send this one again later"},
                                 503, {"Retry-After": str(RETRY_AFTER_SECS)})
        in_progress += 1
        try:
            return await handler(request)
        finally:
            in_progress -= 1

    return cap
