"""HTTP on the Faust web server (SPEC §8): the JSON API, metrics, the OpenAPI
document and the dashboard.

- `worker`: what the views need of the worker they run in (the interface);
- `api`: the views; `fanout`: asking the other workers and merging their
  answers; `paging`: cursors and pages; `params`: every operation's
  parameters, one pydantic model each, validated and documented from it;
- `ledger`: whether the ledger caught up with the closures (its lag);
- `openapi`: the response shapes and the document; `errors`: JSON errors;
  `auth`: the API token; `assets` and `static/`: the dashboard's files;
- `ingest`: `POST /events`, gateways' events over HTTP, produced with the
  producer of `ingest_producer`; `schemas`: `GET /schemas/{name}.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from aiohttp import web
from faust.web import View
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app.kafka_config import security_options
from app.publisher import reliable_producer
from app.web.api import Api
from app.web.assets import STATIC_DIR
from app.web.auth import token_middleware
from app.web.errors import Handler, json_errors
from app.web.ingest import INGEST_PATH, IngestSettings, ingest_handler
from app.web.ingest_producer import IngestProducer
from app.web.ledger import LedgerView
from app.web.params import BUDGET_PATH
from app.web.schemas import SCHEMAS_PATH, get_schema
from app.web.worker import Worker

__all__ = ["Worker", "register_views"]


def register_views(app: faust.App, worker: Worker) -> None:
    """Serve the API and the dashboard on `app`'s web server, answering from `worker`."""
    settings = worker.settings
    producer = IngestProducer(lambda: reliable_producer(
        settings.bootstrap_servers, {**security_options(settings), "client_id": f"{settings.app_id}-ingest"}))
    api = Api(worker, producer)
    ledger = LedgerView.from_settings(worker.settings)
    routes: dict[str, Handler] = {
        "/": api.dashboard_page,
        "/healthz": api.healthz,
        "/readyz": api.readyz,
        "/sessions": api.list_sessions,
        "/sessions/{session_id}": api.get_session,
        "/tenants": api.list_tenants,
        "/tenants/{tenant_id}/usage": api.tenant_usage,
        "/stats": api.stats,
        "/ledger": ledger.ledger_status,
        "/metrics": api.metrics,
        "/openapi.json": api.openapi_document,
        SCHEMAS_PATH: get_schema,
    }
    for path, handler in routes.items():
        app.page(path, name=handler.__name__)(_faust_handler(handler))
    post_events = ingest_handler(producer, IngestSettings.from_settings(settings))
    app.page(INGEST_PATH, name=post_events.__name__)(_faust_view("post_events", {"post": post_events}))
    app.page(BUDGET_PATH, name="tenant_budget")(_faust_view("tenant_budget", {
        "get": api.get_budget, "put": api.put_budget, "delete": api.delete_budget}))
    server = app.web
    assert isinstance(server, AiohttpWeb), "Faust's web driver is aiohttp, the only one it ships"
    server.add_static("/static/", str(STATIC_DIR))
    server.web_app.on_startup.append(producer.on_startup)
    server.web_app.on_cleanup.append(producer.on_cleanup)
    server.web_app.on_cleanup.append(ledger.close)
    middlewares = server.web_app.middlewares
    middlewares.append(json_errors)  # outermost: also turns a 401 into JSON
    if worker.settings.api_token:
        middlewares.append(token_middleware(worker.settings.api_token))


def _faust_handler(handler: Handler) -> Callable[..., Any]:
    """Faust calls a page's function with its View first; ours need the request only."""

    async def get(view: Any, request: web.Request, **match_info: str) -> web.StreamResponse:
        return await handler(request)

    get.__name__ = handler.__name__
    return get


def _faust_view(name: str, handlers: dict[str, Handler]) -> type[View]:
    """A Faust view answering each method with its handler (Faust answers 405 to the others)."""

    def method(handler: Handler) -> Callable[..., Any]:
        async def answer(view: View, request: web.Request, **match_info: str) -> web.StreamResponse:
            return await handler(request)
        return answer

    return type(name, (View,), {verb: method(handler) for verb, handler in handlers.items()})
