"""The conflict rule: what a delivered closure does to the ledger. Pure.

SPEC §6: a closure may repeat, and repeats carry the same ``closure_id`` and
the same content except ``emitted_at``. So for each delivery, in offset order:

- a ``closure_id`` the ledger does not hold is NEW: it becomes the row;
- the same content again is a DUPLICATE: counted, otherwise ignored;
- other content under a held ``closure_id`` is a CONFLICT: the stored row
  stands untouched, and the delivery is kept aside for a person (and raises
  an alert), because billing must never silently pick one of two figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from app.ledger.closure_row import ClosureRow


class Verdict(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def judge(stored_sha256: bytes | None, incoming_sha256: bytes) -> Verdict:
    """The verdict on a delivery, given the content digest of the row held under its id (if any)."""
    if stored_sha256 is None:
        return Verdict.NEW
    return Verdict.DUPLICATE if stored_sha256 == incoming_sha256 else Verdict.CONFLICT


@dataclass(frozen=True, slots=True)
class Conflict:
    """A delivery whose content differs from the row that stands."""

    row: ClosureRow
    stored_sha256: bytes


@dataclass(slots=True)
class BatchPlan:
    """What one batch of deliveries does, in offset order."""

    new_rows: list[ClosureRow] = field(default_factory=list)
    #: closure_id -> identical deliveries beyond the row that stands.
    duplicates: Counter[str] = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)


def plan_batch(stored: Mapping[str, bytes], rows: Iterable[ClosureRow]) -> BatchPlan:
    """Apply the rule to ``rows`` (in offset order) against the digests the
    ledger holds (``stored``: closure_id -> content_sha256). A batch may carry
    one closure_id several times: its first delivery stands for the later ones."""
    standing = dict(stored)
    plan = BatchPlan()
    for row in rows:
        held = standing.get(row.closure_id)
        verdict = judge(held, row.content_sha256)
        if verdict is Verdict.NEW:
            standing[row.closure_id] = row.content_sha256
            plan.new_rows.append(row)
        elif verdict is Verdict.DUPLICATE:
            plan.duplicates[row.closure_id] += 1
        else:
            assert held is not None
            plan.conflicts.append(Conflict(row, held))
    return plan
