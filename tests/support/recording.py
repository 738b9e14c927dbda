"""Stand-ins for the batch consumer, the sender and the transactions that
record every step an agent takes, in order (tests/agents/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from agents.sender import Record
from app.faust_compat import InputGap, ReadStart


@dataclass
class RecordingConsumer:
    """What the agent asks of the batch consumer."""

    steps: list[str]
    start: ReadStart = field(default_factory=lambda: ReadStart(0, 1))
    accounted: dict[int, int] = field(default_factory=dict)
    reseeks: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[InputGap] = field(default_factory=list)
    last_commit_at: float | None = None

    def read_start(self, tp: TP) -> ReadStart:
        return self.start

    def stable_end(self, tp: TP) -> int | None:
        return None

    def mark_accounted(self, tp: TP, offset: int) -> None:
        self.steps.append(f"accounted {offset}")
        self.accounted[tp.partition] = offset

    def take_gaps(self) -> list[InputGap]:
        gaps, self.gaps = self.gaps, []
        return gaps

    async def reseek(self, tp: TP, offset: int) -> ReadStart:
        self.reseeks.append((tp.partition, offset))
        self.start = ReadStart(offset, self.start.seek_epoch + 1)
        return self.start


class RecordingSender:
    def __init__(self, steps: list[str], changelog: str) -> None:
        self.steps = steps
        self.changelog = changelog
        #: Every send, in order: the records sent together.
        self.sends: list[list[Record]] = []

    async def send_all(self, records: list[Record]) -> list[Any]:
        kinds = sorted({"changelog" if record.topic == self.changelog else "outputs" for record in records})
        self.steps.append("acknowledged " + "+".join(kinds))
        self.sends.append(list(records))
        return [Ack(record.topic, record.partition or 0, offset) for offset, record in enumerate(records)]


@dataclass
class Ack:
    topic: str
    partition: int
    offset: int


class RecordingTransactions:
    """PartitionTransactions as the agent uses it, without a broker."""

    def __init__(self, steps: list[str], sender: RecordingSender) -> None:
        self.steps = steps
        self.sender = sender
        self.offsets: dict[int, int] = {}
        self.open: set[int] = set()
        self.committed: list[dict[int, int | None]] = []
        #: The partitions whose transactional id is owned (the tenant agent asks).
        self.fenced: set[int] = {0}

    async def send(self, by_partition: dict[int, list[Record]]) -> dict[int, list[Any]]:
        self.open |= set(by_partition)
        return {partition: await self.sender.send_all(records) for partition, records in by_partition.items()}

    def advance(self, partition: int, next_offset: int) -> None:
        self.open.add(partition)
        self.offsets[partition] = next_offset

    def due(self, interval_secs: float) -> list[int]:
        return []  # the test commits explicitly

    def __contains__(self, partition: int) -> bool:
        return partition in self.fenced

    def partitions(self) -> set[int]:
        return set(self.fenced)

    def pending(self) -> list[int]:
        return sorted(self.open)

    async def commit(self, partitions: list[int]) -> None:
        self.steps.append(f"committed transactions {sorted(partitions)}")
        self.committed.append({partition: self.offsets.pop(partition, None) for partition in partitions})
        self.open -= set(partitions)


def record_steps(agent: Any, steps: list[str]) -> tuple[RecordingConsumer, RecordingSender]:
    """Put the recording stand-ins in an agent (the accountant or the tenant
    agent): its consumer, its sender and, under exactly_once, its transactions."""
    consumer = RecordingConsumer(steps)
    agent.consumer = consumer
    sender = RecordingSender(steps, agent.table.changelog_topic.get_topic_name())
    agent.sender = sender
    if agent.transactions is not None:
        agent.transactions = RecordingTransactions(steps, sender)
    return consumer, sender
