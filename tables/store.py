"""What the agent needs of the table's store, whichever backs it.

Faust's stores write a key to the partition of the event being processed
(`current_event()`); the agent handles whole batches and writes each session
to its own partition explicitly, after the broker has acknowledged the
batch's outputs and changelog records (agents/changes.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from faust.types import TP

#: A table value: a session or its tombstone (app/rules); None deletes it.
StateValue = Any


class SessionStore(Protocol):
    def get(self, session_id: str) -> StateValue | None:
        """The stored state of a session, None when there is none."""

    def write(self, partition: int, values: Mapping[str, bytes | None]) -> None:
        """Store these sessions of `partition`: their changelog bytes
        (`app.rules.encode_state`), None to delete."""

    def items_in(self, partitions: Iterable[int]) -> Iterator[tuple[str, StateValue]]:
        """Every stored session of these partitions."""

    def items_after(self, partitions: Iterable[int], after: bytes | None) -> Iterator[tuple[str, StateValue]]:
        """The sessions of these partitions whose id's UTF-8 sorts after
        `after`, in that order, read lazily: a page costs what it reads."""

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """The store holds every changelog record of `tp` up to `offset`."""
