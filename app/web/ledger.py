"""GET /ledger: whether the ledger (`accountant ledger`, app/ledger/) has
caught up with the closures topic, for the dashboard.

The ledger is one for the whole group, so any worker answers alone (no
fan-out). When ACCOUNTANT_LEDGER_DSN is not set the answer says the ledger is
not configured; when the lag cannot be read it says why, still with 200: the
worker is fine, the figure is unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from app.ledger.database_errors import describe_database_error
from app.ledger.lag import LedgerLagReader
from app.settings import Settings
from app.web.errors import json_response
from app.web.openapi import LedgerStatus
from app.web.params import NoParams, parse

__all__ = ["LedgerLag", "LedgerView"]

log = logging.getLogger(__name__)


class LedgerLag(Protocol):
    """Where the ledger's lag comes from (`app.ledger.LedgerLagReader`)."""

    async def lag(self) -> Mapping[int, int]:
        """partition -> closures not yet in the ledger; raises when it cannot be read."""
        ...

    async def close(self) -> None: ...


class LedgerView:
    """The /ledger view over `source`, or over no ledger (None)."""

    def __init__(self, source: LedgerLag | None) -> None:
        self.source = source

    @classmethod
    def from_settings(cls, settings: Settings) -> LedgerView:
        return cls(LedgerLagReader.from_settings(settings) if settings.ledger_dsn else None)

    async def ledger_status(self, request: web.Request) -> web.Response:
        parse(NoParams, request.path, request.query, request.match_info)
        return json_response(await self.status())

    async def status(self) -> LedgerStatus:
        if self.source is None:
            return {"configured": False, "lag_records": None, "caught_up": None, "error": None}
        try:
            lag = await self.source.lag()
        except Exception as error:  # the figure is unknown; the answer says why
            log.debug("reading the ledger's lag failed", exc_info=True)
            # One line, never a database error's DETAIL (row contents).
            return {"configured": True, "lag_records": None, "caught_up": None,
                    "error": describe_database_error(error)}
        total = sum(lag.values())
        return {"configured": True, "lag_records": total, "caught_up": total == 0, "error": None}

    async def close(self, app: web.Application | None = None) -> None:
        """Close the source's clients (an aiohttp on_cleanup handler)."""
        if self.source is not None:
            await self.source.close()
