"""Gaps: closures the ledger can no longer read. Pure: no I/O.

The ledger's stored offset of a partition says where it resumes. Kafka keeps
a partition from its start offset (retention deletes what is older) to its
end offset. A stored offset below the start means closures were deleted
before the ledger wrote them; one past the end means the topic was recreated
or truncated. Either way, resuming would skip closures without anyone
learning of it, so the ledger refuses until a person accepts that one gap
(`accountant ledger --accept-gap PARTITION:FROM-TO`), which is recorded in
``ledger_gaps``. Nothing stored yet counts as offset 0: a new ledger on a
topic that already lost its first closures has a gap too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_ACCEPTED = re.compile(r"(\d+):(\d+)-(\d+)\Z")


class GapKind(StrEnum):
    #: Closures deleted (by retention) before the ledger wrote them.
    DELETED = "deleted"
    #: The stored offset lies past the partition's end: the topic was recreated or truncated.
    PAST_END = "past_end"


@dataclass(frozen=True, slots=True)
class Gap:
    """The ledger stands at ``from_offset`` of a partition and can only resume at ``to_offset``."""

    topic: str
    partition: int
    from_offset: int
    to_offset: int
    kind: GapKind

    @property
    def flag(self) -> str:
        """What `--accept-gap` takes to accept this gap."""
        return f"{self.partition}:{self.from_offset}-{self.to_offset}"

    def describe(self) -> str:
        where = f"partition {self.partition} of {self.topic}"
        if self.kind is GapKind.DELETED:
            return (f"{where}: the closures at offsets {self.from_offset}..{self.to_offset - 1} were deleted before "
                    f"the ledger wrote them ({self.to_offset - self.from_offset} records)")
        return (f"{where}: the ledger's offset {self.from_offset} lies past the partition's end: the topic was "
                f"recreated or truncated; its closures from offset {self.to_offset} were never read")


def find_gap(topic: str, partition: int, stored: int | None, start: int, end: int) -> Gap | None:
    """The gap between the ``stored`` offset (None: nothing stored) and the
    partition's ``start`` .. ``end`` offsets, or None when the ledger can resume."""
    position = 0 if stored is None else stored
    if position < start:
        return Gap(topic, partition, position, start, GapKind.DELETED)
    if position > end:
        return Gap(topic, partition, position, start, GapKind.PAST_END)
    return None


def accepted_gap_flag(text: str) -> str:
    """``PARTITION:FROM-TO`` as `Gap.flag` spells it; ValueError naming the form."""
    match = _ACCEPTED.match(text.strip())
    if match is None:
        raise ValueError(f"--accept-gap {text!r}: must be PARTITION:FROM-TO, as the ledger's GAP log line prints it")
    partition, from_offset, to_offset = (int(group) for group in match.groups())
    return f"{partition}:{from_offset}-{to_offset}"
