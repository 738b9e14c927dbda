"""`POST /events` on a web app of its own, for tests and benchmarks that
measure or probe the ingest API alone: the real handler, the real error and
token middleware, a real producer; only the worker around them is missing
(`app.web.register_views` serves the same pieces on every worker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from app.metrics import IngestMetrics
from app.publisher import reliable_producer
from app.web import middlewares
from app.web.ingest import INGEST_PATH, IngestSettings, ingest_handler
from app.web.ingest_producer import IngestProducer

__all__ = ["INGEST_PRODUCER", "ingest_application"]

INGEST_PRODUCER = web.AppKey("ingest_producer", IngestProducer)


def ingest_application(bootstrap: str, settings: IngestSettings, *, token: str,
                       client_options: Mapping[str, Any] | None = None, metrics: IngestMetrics | None = None,
                       max_concurrent_requests: int = 256) -> web.Application:
    """An aiohttp app answering `POST /events` (with `token`), producing to
    `settings.topic`, with the worker's middlewares; its producer starts and
    stops with the app (`app[INGEST_PRODUCER]`)."""
    producer = IngestProducer(lambda: reliable_producer(bootstrap, client_options),
                              lambda: AIOKafkaAdminClient(bootstrap_servers=bootstrap), settings.topic)
    metrics = metrics or IngestMetrics(CollectorRegistry())
    app = web.Application(middlewares=middlewares(metrics, max_concurrent_requests, token))
    app.router.add_post(INGEST_PATH, ingest_handler(producer, settings, metrics))
    app[INGEST_PRODUCER] = producer
    app.on_startup.append(producer.on_startup)
    app.on_cleanup.append(producer.on_cleanup)
    return app
