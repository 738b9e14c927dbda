"""What the ledger needs from its database (interface; app/ledger/postgres_store.py implements it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from app.ledger.batch import BatchOutcome, LedgerBatch, Partition
from app.ledger.gaps import Gap


class LedgerStore(Protocol):
    async def migrate(self) -> list[str]:
        """Bring the schema up to date (safe when several processes start
        together); the names of the migrations this call applied."""
        ...

    async def claim(self, group: str, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """Where ``group`` resumes each partition: the next offset stored by
        the last committed batch, or None when nothing was consumed yet."""
        ...

    async def write(self, batch: LedgerBatch, *, isolate: bool = False) -> BatchOutcome:
        """Write the batch's closures, rejects and offsets in ONE transaction,
        or nothing. Partitions whose stored offset is not the batch's
        ``expected`` one are left out (fenced) and reported.

        ``isolate`` writes row by row, turning rows the database refuses into
        rejects: for a batch that failed with a data error, so that one bad
        row never stops the ledger.
        """
        ...

    async def accept_gap(self, group: str, gap: Gap, accepted_by: str) -> bool:
        """Move ``group``'s stored offset of the gap's partition from
        ``gap.from_offset`` to ``gap.to_offset`` and record the gap in
        ``ledger_gaps``, in one transaction; False (nothing done) when the
        stored offset is no longer ``gap.from_offset``."""
        ...

    async def close(self) -> None: ...
