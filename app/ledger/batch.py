"""One fetched batch on its way into the ledger, and what writing it did."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from app.ledger.closure_row import ClosureRow, LedgerReject
from app.ledger.conflicts import Conflict

#: (topic, partition)
Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """A partition's consumed position moving from ``expected`` to ``next_offset``.

    ``expected`` is what the database must hold for the batch to be this
    consumer's to write (None: nothing stored yet). When it holds something
    else, another consumer has written this partition since we read it, and
    our records of it are not written (they are fenced).
    """

    topic: str
    partition: int
    expected: int | None
    next_offset: int

    @property
    def key(self) -> Partition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class LedgerBatch:
    """Everything read from the closures topic since the last write, for one consumer group."""

    group: str
    rows: tuple[ClosureRow, ...]
    rejects: tuple[LedgerReject, ...]
    advances: tuple[OffsetAdvance, ...]

    def __post_init__(self) -> None:
        # Records are written only under their partition's offset check (fencing).
        moved = {advance.key for advance in self.advances}
        sources = [row.source for row in self.rows] + [reject.source for reject in self.rejects]
        unmoved = {(source.topic, source.partition) for source in sources} - moved
        if unmoved:
            raise ValueError(f"records of {sorted(unmoved)} without an offset advance for their partition")

    def without(self, partitions: Collection[Partition]) -> LedgerBatch:
        """The batch minus everything read from ``partitions``."""
        return LedgerBatch(
            group=self.group,
            rows=tuple(row for row in self.rows if (row.source.topic, row.source.partition) not in partitions),
            rejects=tuple(reject for reject in self.rejects
                          if (reject.source.topic, reject.source.partition) not in partitions),
            advances=tuple(advance for advance in self.advances if advance.key not in partitions),
        )

    @property
    def partitions(self) -> frozenset[Partition]:
        """Every partition the batch moves (each partition it holds records of moves)."""
        return frozenset(advance.key for advance in self.advances)

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejects)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a committed write did."""

    written: int = 0
    duplicates: int = 0
    conflicts: tuple[Conflict, ...] = ()
    rejects: tuple[LedgerReject, ...] = ()
    #: Partitions left out because the database held another offset than
    #: expected -> the offset it held (where to resume reading them).
    fenced: dict[Partition, int | None] = field(default_factory=dict)
    #: Partitions written -> the offset the database now holds.
    committed: dict[Partition, int] = field(default_factory=dict)
