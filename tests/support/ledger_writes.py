"""Closures written straight into a ledger database through the PostgreSQL
store (no Kafka): for the tests of what billing reads from it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from app.ledger.batch import LedgerBatch, OffsetAdvance
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.postgres_store import PostgresLedgerStore
from tests.support.closures import encode

__all__ = ["LedgerWriter"]

TOPIC = "session-closures"
GROUP = "ledger-test"


class LedgerWriter:
    """Writes closures as the ledger would, batch after batch on partition 0."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.next_offset = 0

    def write(self, closures: Iterable[dict[str, Any]]) -> None:
        asyncio.run(self._write([encode(item) for item in closures]))

    async def _write(self, values: list[bytes]) -> None:
        decoded = [decode_closure(SourceOffset(TOPIC, 0, self.next_offset + index), None, value)
                   for index, value in enumerate(values)]
        expected = self.next_offset or None
        store = PostgresLedgerStore(self.dsn)
        try:
            await store.migrate()
            await store.write(LedgerBatch(GROUP, tuple(item for item in decoded if isinstance(item, ClosureRow)),
                                          tuple(item for item in decoded if isinstance(item, LedgerReject)),
                                          (OffsetAdvance(TOPIC, 0, expected, self.next_offset + len(values)),)))
        finally:
            await store.close()
        self.next_offset += len(values)
