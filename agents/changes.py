"""What one batch (or one timer tick) changes, held apart from the store until
the broker has acknowledged it.

The agent applies every event of a batch against these changes, then
publishes the outputs, then writes the changelog, and only then the store.
State therefore never runs ahead of its outputs: after a crash at any point,
the events come again and are applied to the state that was stored before
them, giving the same outputs again (docs/design.md, "Outputs before state").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from agents.sender import Record
from app.rules.usage import UsageEntry


class Lookup(Protocol):
    def get(self, session_id: str) -> Any: ...


@dataclass(slots=True)
class Change:
    partition: int
    #: The state stored before this batch.
    before: Any
    #: The state after it; None deletes the session.
    after: Any


class BatchChanges:
    def __init__(self, store: Lookup) -> None:
        self._store = store
        self.states: dict[str, Change] = {}
        self._read: dict[str, Any] = {}
        #: Closures and rejections, by the input partition that caused them.
        self.outputs: dict[int, list[Record]] = {}
        #: How the batch's events ended, counted once the batch is written.
        self.outcomes: Counter[Any] = Counter()
        #: What the changes add to tenants' usage, by (input partition, tenant), in order.
        self.usage: dict[tuple[int, str], list[UsageEntry]] = {}

    def __bool__(self) -> bool:
        return bool(self.states or self.outputs)

    def get(self, session_id: str) -> Any:
        change = self.states.get(session_id)
        if change is not None:
            return change.after
        if session_id not in self._read:
            # The store decodes on every read; a batch reads a session once.
            self._read[session_id] = self._store.get(session_id)
        return self._read[session_id]

    def put(self, session_id: str, partition: int, before: Any, after: Any) -> None:
        change = self.states.get(session_id)
        if change is None:
            self.states[session_id] = Change(partition, before, after)
        else:
            change.after = after

    def count_usage(self, partition: int, entry: UsageEntry) -> None:
        self.usage.setdefault((partition, entry.step.tenant_id), []).append(entry)

    def publish(self, record: Record, source_partition: int) -> None:
        self.outputs.setdefault(source_partition, []).append(record)

    def all_outputs(self) -> list[Record]:
        return [record for records in self.outputs.values() for record in records]
