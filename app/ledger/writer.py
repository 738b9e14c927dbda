"""Writing batches into the store: in order, one at a time, until each commits.

Each write runs as a task of its own, so the consumer reads and decodes the
next batch (in a thread) while PostgreSQL works on this one: the two use
different cores. Transient database errors are retried until they pass; a
batch the database refuses for its data is written again row by row, the
refused rows kept as rejects. Nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg

from app.ledger.batch import BatchOutcome, LedgerBatch
from app.ledger.database_errors import describe_database_error
from app.ledger.metrics import LedgerMetrics
from app.ledger.retry import DatabaseRetry
from app.ledger.store import LedgerStore

log = logging.getLogger(__name__)


class BatchWriter:
    def __init__(self, store: LedgerStore, metrics: LedgerMetrics, retry: DatabaseRetry,
                 on_written: Callable[[BatchOutcome], Awaitable[None]]) -> None:
        self._store = store
        self._metrics = metrics
        self._retry = retry
        self._on_written = on_written
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, batch: LedgerBatch) -> None:
        """Start writing ``batch`` once the previous write has committed."""
        await self.drain()
        self._idle.clear()
        self._task = asyncio.create_task(self._write(batch), name="ledger-write")

    async def drain(self) -> None:
        """Wait for the write in flight, if any; its errors surface here."""
        task, self._task = self._task, None
        if task is not None:
            await task

    @property
    def busy(self) -> bool:
        """Whether a write is in flight."""
        return not self._idle.is_set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no write is in flight; False if that takes over ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Abandon a write in flight (its transaction rolls back: nothing of it is kept)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # abandoned: its outcome is moot
                await task

    async def _write(self, batch: LedgerBatch) -> None:
        started = time.monotonic()
        isolate = False
        try:
            while True:
                try:
                    outcome = await self._retry(functools.partial(self._store.write, batch, isolate=isolate),
                                                "writing a batch")
                    break
                except psycopg.Error as error:  # not transient: about the data, or a fault of ours
                    if not isolate:
                        log.warning("the database refused a batch of %d records (%s); writing it row by row",
                                    len(batch), describe_database_error(error))
                        isolate = True
                    else:
                        log.error("writing a batch row by row failed: %s; retrying", describe_database_error(error))
                        self._metrics.database_retries.inc()
                        await self._retry.wait(2.0)
            self._metrics.batch_write_seconds.observe(time.monotonic() - started)
            self._metrics.count(outcome)
            await self._on_written(outcome)
        finally:
            self._idle.set()
