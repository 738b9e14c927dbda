"""`POST /events` on a web app of its own, for tests and benchmarks that
measure or probe the ingest API alone: the real handler, the real error and
token middleware, a real producer; only the worker around them is missing
(`app.web.register_views` serves the same pieces on every worker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from app.publisher import reliable_producer
from app.web.auth import token_middleware
from app.web.errors import json_errors
from app.web.ingest import INGEST_PATH, IngestSettings, ingest_handler
from app.web.ingest_producer import IngestProducer

__all__ = ["ingest_application"]


def ingest_application(bootstrap: str, settings: IngestSettings, *, token: str,
                       client_options: Mapping[str, Any] | None = None) -> web.Application:
    """An aiohttp app answering `POST /events` (with `token`), producing to
    `settings.topic`; its producer starts and stops with the app."""
    producer = IngestProducer(lambda: reliable_producer(bootstrap, client_options))
    app = web.Application(middlewares=[json_errors, token_middleware(token)])
    app.router.add_post(INGEST_PATH, ingest_handler(producer, settings))
    app.on_startup.append(producer.on_startup)
    app.on_cleanup.append(producer.on_cleanup)
    return app
