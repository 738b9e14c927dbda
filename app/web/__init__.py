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
from aiohttp.typedefs import Middleware
from aiokafka.admin import AIOKafkaAdminClient
from faust.web import View
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app.kafka_config import client_options, security_options
from app.metrics import IngestMetrics
from app.publisher import reliable_producer
from app.web.api import Api
from app.web.assets import STATIC_DIR
from app.web.auth import token_middleware
from app.web.concurrency import concurrency_cap
from app.web.errors import Handler, json_errors
from app.web.ingest import INGEST_PATH, IngestSettings, count_ingest_answers, ingest_handler
from app.web.ingest_producer import IngestProducer
from app.web.ledger import LedgerView
from app.web.params import BUDGET_PATH
from app.web.schemas import SCHEMAS_PATH, get_schema
from app.web.worker import Worker

__all__ = ["Worker", "middlewares", "register_views"]


def register_views(app: faust.App, worker: Worker) -> None:
    """Serve the API and the dashboard on `app`'s web server, answering from `worker`."""
    settings = worker.settings
    client_id = f"{settings.app_id}-ingest"
    producer = IngestProducer(
        lambda: reliable_producer(settings.bootstrap_servers, {**security_options(settings), "client_id": client_id}),
        lambda: AIOKafkaAdminClient(**client_options(settings), client_id=client_id), settings.events_topic)
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
    post_events = ingest_handler(producer, IngestSettings.from_settings(settings), worker.metrics.ingest)
    app.page(INGEST_PATH, name=post_events.__name__)(_faust_view("post_events", {"post": post_events}))
    app.page(BUDGET_PATH, name="tenant_budget")(_faust_view("tenant_budget", {
        "get": api.get_budget, "put": api.put_budget, "delete": api.delete_budget}))
    server = app.web
    assert isinstance(server, AiohttpWeb), "Faust's web driver is aiohttp, the only one it ships"
    server.add_static("/static/", str(STATIC_DIR))
    server.web_app.on_startup.append(producer.on_startup)
    server.web_app.on_cleanup.append(producer.on_cleanup)
    server.web_app.on_cleanup.append(ledger.close)
    server.web_app.middlewares.extend(middlewares(worker.metrics.ingest, settings.web_max_concurrent_requests,
                                                  settings.api_token, settings.peer_token.get_secret_value()))


def middlewares(ingest_metrics: IngestMetrics, max_concurrent_requests: int, api_token: str,
                peer_token: str = "") -> list[Middleware]:
    """The web server's middlewares, outermost first (no token: no authentication)."""
    layers = [
        count_ingest_answers(ingest_metrics),  # outermost: sees every answer to POST /events
        concurrency_cap(max_concurrent_requests),
        json_errors,  # also turns a 401 into JSON
    ]
    if api_token:
        layers.append(token_middleware(api_token, peer_token))
    return layers


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
