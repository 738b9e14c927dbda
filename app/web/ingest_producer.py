"""The producer `POST /events` sends with: its own aiokafka producer, idempotent
and `acks="all"` (`app.publisher.reliable_producer`), not Faust's.

It belongs to the web server: the start-up of the web app begins starting it,
without holding the server up (the probes must answer while the broker is
slow to), and the clean-up stops it. A request waits for that start; when the
broker could not be reached, the request is answered 503 and the next one
tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = ["IngestProducer"]

log = logging.getLogger(__name__)


class IngestProducer:
    """Makes (with `make`), starts and stops the ingest API's producer."""

    def __init__(self, make: Callable[[], AIOKafkaProducer]) -> None:
        self._make = make
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._warm_up: asyncio.Task[None] | None = None

    async def started(self) -> AIOKafkaProducer:
        """The started producer, starting it first if need be; raises the
        client's `KafkaError` when the broker cannot be reached."""
        if self._producer is None:
            async with self._starting:
                if self._producer is None:
                    producer = self._make()
                    try:
                        await producer.start()
                    except BaseException:
                        await producer.stop()
                        raise
                    self._producer = producer
        return self._producer

    async def on_startup(self, app: web.Application) -> None:
        self._warm_up = asyncio.create_task(self._start_early(), name="ingest producer start")

    async def on_cleanup(self, app: web.Application) -> None:
        # Faust's web driver runs the clean-up twice: the second finds nothing to do.
        if self._warm_up is not None:
            self._warm_up.cancel()
            await asyncio.gather(self._warm_up, return_exceptions=True)
            self._warm_up = None
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _start_early(self) -> None:
        try:
            await self.started()
        except KafkaError as error:
            log.warning("POST /events: the producer could not start yet (%r); each request tries again", error)
