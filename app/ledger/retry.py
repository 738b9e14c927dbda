"""Waiting out a database that is down, restarting or busy: retry, never skip; stop on a permanent error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from app.ledger.database_errors import (
    TRANSIENT_ERRORS,
    PermanentDatabaseError,
    describe_database_error,
    permanent_problem,
)
from app.ledger.metrics import LedgerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

class Stopped(Exception):
    """The service was asked to stop while waiting for the database."""


class DatabaseRetry:
    """Runs database operations until they succeed, backing off from
    ``first_delay`` to ``max_delay`` seconds between attempts."""

    def __init__(self, stop: asyncio.Event, metrics: LedgerMetrics, *, first_delay: float = 0.1,
                 max_delay: float = 2.0) -> None:
        self._stop = stop
        self._metrics = metrics
        self._first_delay = first_delay
        self._max_delay = max_delay
        #: Since when the database has failed with no success in between (monotonic); None: it answers.
        self._failing_since: float | None = None

    def failing_secs(self) -> float:
        """Seconds the database has failed every operation; 0 while it answers."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

    async def __call__(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """The operation's result; transient errors are logged, counted and
        retried; permanent ones raise `PermanentDatabaseError`; others propagate."""
        delay = self._first_delay
        failing_since: float | None = None
        while True:
            if self._stop.is_set():
                raise Stopped(what)
            try:
                result = await operation()
            except psycopg.Error as error:
                problem = permanent_problem(error)
                if problem is not None:
                    self._metrics.database_up.set(0)
                    raise PermanentDatabaseError(problem) from None
                if not isinstance(error, TRANSIENT_ERRORS):
                    raise
                self._metrics.database_retries.inc()
                if failing_since is None:
                    failing_since = time.monotonic()
                if not isinstance(error, psycopg.errors.UniqueViolation):
                    self._metrics.database_up.set(0)
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                log.warning("%s failed (%s); retrying in %.1f s (failing for %.0f s)", what,
                            describe_database_error(error), delay, time.monotonic() - failing_since)
                await self.wait(delay)
                delay = min(self._max_delay, delay * 2)
                continue
            if failing_since is not None:
                log.info("%s succeeded after %.1f s of failures", what, time.monotonic() - failing_since)
            self._failing_since = None
            self._metrics.database_up.set(1)
            return result

    async def wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the service stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
