"""The producer `POST /events` sends with: its own aiokafka producer, idempotent
and `acks="all"` (`app.publisher.reliable_producer`), not Faust's.

It belongs to the web server: the start-up of the web app starts a task that
starts it, without holding the server up (the probes must answer while the
broker is slow to), and the clean-up stops it. Until it has started, requests
are answered 503 at once, so the start never eats into a request's delivery
timeout. Once started, the task keeps asking the broker for the topic's
metadata: when the broker last answered is what /readyz reports, and the
topic's `max.message.bytes` is what `POST /events` holds each record to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

__all__ = ["IngestProducer"]

log = logging.getLogger(__name__)

#: How often the broker is asked whether it still answers.
WATCH_INTERVAL_SECS = 2.0
#: Silence after which the broker no longer counts as answering (two watch
#: intervals: a healthy broker answers every one).
SILENCE_SECS = 2 * WATCH_INTERVAL_SECS
#: How long a failed start waits before the next try.
RESTART_DELAY_SECS = 1.0


class IngestProducer:
    """Starts, watches and stops the ingest API's producer."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], make_admin: Callable[[], AIOKafkaAdminClient],
                 topic: str) -> None:
        self._make_producer = make_producer
        self._make_admin = make_admin
        self._topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        #: When the broker last answered (a start, a metadata request, an acknowledgement).
        self._reached_at: float | None = None
        #: Since when the broker has answered every question (None: the last went unanswered).
        self._answering_since: float | None = None
        #: The topic's max.message.bytes, once read.
        self.record_limit: int | None = None
        self._discarded = asyncio.Event()

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The started producer, or None until it has reached the broker."""
        return self._producer

    def reached(self) -> None:
        """The broker just answered (the ingest handler calls it on every acknowledgement)."""
        now = time.monotonic()
        if self._answering_since is None or self.silent_secs() > SILENCE_SECS:
            self._answering_since = now  # answering again after a silence
        self._reached_at = now

    def silent_secs(self) -> float:
        """Seconds since the broker last answered (since start-up, when it never did)."""
        return time.monotonic() - (self._reached_at if self._reached_at is not None else self._started_at)

    def answering_secs(self) -> float:
        """Seconds the broker has answered every question for (0 once it has
        been silent for SILENCE_SECS: a frozen broker leaves a metadata request
        hanging rather than failing it)."""
        if self._answering_since is None or self.silent_secs() > SILENCE_SECS:
            return 0.0
        return time.monotonic() - self._answering_since

    async def read_record_limit(self) -> int | None:
        """The topic's `max.message.bytes` as the broker says now (None when it cannot be read)."""
        admin = self._make_admin()
        try:
            async with asyncio.timeout(10):
                await admin.start()
                [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, self._topic)])
        except (KafkaError, TimeoutError, OSError) as error:
            log.warning("POST /events: could not read max.message.bytes of %s (%r)", self._topic, error)
            return None
        finally:
            await admin.close()
        # resources: [(error_code, error_message, type, name, [(name, value, read_only, ...), ...])]
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    self.record_limit = int(entry[1])
        return self.record_limit

    async def on_startup(self, app: web.Application) -> None:
        self._started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="ingest producer")

    async def on_cleanup(self, app: web.Application) -> None:
        # Faust's web driver runs the clean-up twice: the second finds nothing to do.
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._producer = None  # the task stopped it

    def discard(self, producer: AIOKafkaProducer) -> None:
        """Replace `producer` after a record failed for good: an idempotent
        producer's sequence numbers no longer match the broker's for that
        partition (OutOfOrderSequenceNumber for every later record), and
        only a new producer id starts them afresh."""
        if self._producer is producer:
            self._producer = None
            self._discarded.set()

    async def _run(self) -> None:
        while True:
            producer = await self._start()
            try:
                await self._watch()
            finally:
                await producer.stop()

    async def _watch(self) -> None:
        """Until the producer is discarded: note whether the broker answers."""
        self._discarded.clear()
        while (producer := self._producer) is not None:
            try:
                await asyncio.wait_for(self._discarded.wait(), WATCH_INTERVAL_SECS)
                return
            except TimeoutError:
                pass
            try:
                async with asyncio.timeout(WATCH_INTERVAL_SECS * 2):
                    answered = await producer.client.force_metadata_update()
            except TimeoutError:
                answered = False
            if answered:
                self.reached()
            else:
                self._answering_since = None

    async def _start(self) -> AIOKafkaProducer:
        warned = False
        while True:
            producer = self._make_producer()
            try:
                await producer.start()
            except KafkaError as error:
                await producer.stop()
                if not warned:
                    log.warning("POST /events: the producer cannot reach the broker yet (%r); it keeps trying, and "
                                "requests are answered 503 until it does", error)
                    warned = True
                await asyncio.sleep(RESTART_DELAY_SECS)
                continue
            # Requests wait for the limit too: a record above it would fail
            # its batch, other requests' records included.
            await self.read_record_limit()
            self._producer = producer
            self.reached()
            return producer
