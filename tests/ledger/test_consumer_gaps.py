"""The consumer meets a gap while it runs (retention deleted closures ahead
of it, so Kafka answers "offset out of range"): it stops that partition,
writes nothing of it, and says so, rather than jump to the new start as
``auto_offset_reset`` would. Kafka and the database are stand-ins here: the
real broker cannot be made to delete records under a running fetcher on cue."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from app.ledger.batch import BatchOutcome, LedgerBatch, Partition
from app.ledger.consumer import LedgerConsumer
from app.ledger.gaps import Gap, GapKind
from app.ledger.metrics import LedgerMetrics
from app.ledger.retry import DatabaseRetry

TP = TopicPartition("session-closures", 0)


class Kafka:
    """What the consumer asks of AIOKafkaConsumer, for one partition whose start moves."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.start, self.end = 0, 20
        self.out_of_range_at: int | None = None
        self.seeks: list[int] = []
        self.paused: set[TopicPartition] = set()
        self._stop = stop

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if self.out_of_range_at is not None:
            at, self.out_of_range_at = self.out_of_range_at, None
            raise OffsetOutOfRangeError({TP: at})
        self._stop.set()
        return {}

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict:
        return dict.fromkeys(partitions, self.start)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict:
        return dict.fromkeys(partitions, self.end)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.seeks[-1]

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.end

    def highwater(self, tp: TopicPartition) -> int:
        return self.end


class Database:
    def __init__(self, stored: int) -> None:
        self.stored = stored
        self.writes: list[LedgerBatch] = []
        self.accepted: list[Gap] = []

    async def claim(self, group: str, partitions: Any) -> dict[Partition, int | None]:
        return dict.fromkeys(partitions, self.stored)

    async def write(self, batch: LedgerBatch, *, isolate: bool = False) -> BatchOutcome:
        self.writes.append(batch)
        return BatchOutcome()

    async def accept_gap(self, group: str, gap: Gap, accepted_by: str) -> bool:
        self.accepted.append(gap)
        self.stored = gap.to_offset
        return True


async def run_into_a_gap(accepted: tuple[str, ...] = ()) -> tuple[LedgerConsumer, Kafka, Database, LedgerMetrics]:
    stop = asyncio.Event()
    kafka, database, metrics = Kafka(stop), Database(stored=5), LedgerMetrics()
    consumer = LedgerConsumer(kafka, database, "group", metrics, DatabaseRetry(stop, metrics),  # type: ignore[arg-type]
                              stop, batch_max_records=100, revoke_wait_secs=1, accepted_gaps=accepted,
                              accepted_by="alice")
    await consumer.partitions_assigned([TP])
    assert kafka.seeks == [5] and consumer.stored_offsets == {("session-closures", 0): 5}
    # Retention deletes offsets 5..11 while the ledger stands at 5: the next fetch is out of range.
    kafka.start, kafka.out_of_range_at = 12, 5
    await consumer.run()
    return consumer, kafka, database, metrics


async def test_a_gap_met_while_running_stops_the_partition_and_skips_nothing() -> None:
    consumer, kafka, database, metrics = await run_into_a_gap()
    assert consumer.gaps == [Gap("session-closures", 0, 5, 12, GapKind.DELETED)]
    assert kafka.paused == {TP} and consumer.stored_offsets == {}
    assert database.writes == [] and database.accepted == []
    assert metrics.gap_refused.labels("session-closures", "0")._value.get() == 1


async def test_an_accepted_gap_met_while_running_is_recorded_and_crossed() -> None:
    consumer, kafka, database, metrics = await run_into_a_gap(accepted=("0:5-12",))
    assert consumer.gaps == [] and kafka.paused == set()
    assert database.accepted == [Gap("session-closures", 0, 5, 12, GapKind.DELETED)]
    assert kafka.seeks[-1] == 12 and consumer.stored_offsets == {("session-closures", 0): 12}
    assert metrics.gaps_accepted._value.get() == 1
