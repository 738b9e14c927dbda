"""Sending a set of records and waiting until the broker has acknowledged each.

Stock Faust only logs a changelog send that finally fails, and commits the
input offset anyway (canary: tests/compat, `_on_published`). Here every send
of a batch is awaited: a retriable failure (a broker away, a leader moving)
is sent again after a pause, for at most `RETRY_FOR_SECS`; anything else, or
a failure that outlasts that, raises `SendFailed`, and the agent stops the
worker without committing past the batch. A restart then accounts the batch
again from the last commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError
from faust.exceptions import ProducerSendError

from agents.pacing import yielding
from app.logs import log_fields

log = logging.getLogger(__name__)

#: How long retriable failures of one record are retried before the worker
#: stops. Bounded by what a rebalance allows: a worker cut off from the
#: brokers for longer has likely lost its partitions, and at-least-once has
#: no fence against its late writes (docs/guarantees.md).
RETRY_FOR_SECS = 60.0
_FIRST_PAUSE_SECS = 0.5
_MAX_PAUSE_SECS = 10.0
#: The sender lets the event loop run between this many records it buffers.
RECORDS_BETWEEN_YIELDS = 1000


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    #: None: the producer's partitioner picks one from the key.
    partition: int | None = None


class SendFailed(RuntimeError):
    """A record could not be delivered; the batch it belongs to is not accounted."""

    def __init__(self, message: str, record: Record) -> None:
        super().__init__(message)
        #: The first record that was not delivered.
        self.record = record


def record_log_fields(record: Record) -> dict[str, Any]:
    """What a log line about a record says of it (app/logs.py LOG_FIELDS):
    every record the agent sends is keyed by its session."""
    return {"topic": record.topic, "partition": record.partition, "session_id": key_text(record)}


def key_text(record: Any) -> str | None:
    """A record's key as text: the session id it is published under."""
    return None if record.key is None else record.key.decode("utf-8", "replace")


def _retriable(error: BaseException) -> bool:
    if isinstance(error, ProducerSendError):  # Faust's wrapper of an aiokafka error
        error = error.__cause__ or error
    if isinstance(error, (KafkaTimeoutError, KafkaConnectionError, NodeNotReadyError)):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


class AcknowledgedSender:
    """Sends records through the app's producer and awaits their acknowledgements."""

    def __init__(self, producer: Any, retry_for_secs: float = RETRY_FOR_SECS) -> None:
        self._producer = producer
        self._retry_for_secs = retry_for_secs

    async def send_all(self, records: Sequence[Record]) -> list[Any]:
        """The broker's acknowledgement (RecordMetadata) of each record, in
        order, once it has acknowledged every one; raise SendFailed when one
        cannot be delivered."""
        acknowledgements: list[Any] = [None] * len(records)
        pending = list(range(len(records)))
        started = time.monotonic()
        pause = _FIRST_PAUSE_SECS
        while pending:
            outcomes = await self._send_and_wait([records[index] for index in pending])
            failed = []
            for index, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed.append((index, outcome))
                else:
                    acknowledgements[index] = outcome
            if not failed:
                break
            for _, error in failed:
                if isinstance(error, asyncio.CancelledError):
                    raise error
            # Every failure is judged: one permanent error among retriable
            # ones stops the worker now, not after the retry window.
            permanent = [(index, error) for index, error in failed if not _retriable(error)]
            index, error = permanent[0] if permanent else failed[0]
            first = records[index]
            if permanent or time.monotonic() - started >= self._retry_for_secs:
                raise SendFailed(f"{len(failed)} record(s) not delivered (the first {'permanent' if permanent else ''}"
                                 f" failure: {first.topic} partition {first.partition}, "
                                 f"{len(first.value or b'')} bytes): {error!r}", first) from error
            with log_fields(**record_log_fields(first)):
                log.warning("%d record(s) to %s not delivered yet (%r); sending them again in %.1f s",
                            len(failed), first.topic, error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_SECS)
            pending = [index for index, _ in failed]
        return acknowledgements

    async def _send_and_wait(self, records: Sequence[Record]) -> list[Any]:
        """Each record's acknowledgement, or the error that stopped it."""
        send = self._producer.send
        deliveries: list[Any] = []
        async for record in yielding(records, RECORDS_BETWEEN_YIELDS):  # buffering thousands of records
            try:
                # Returns once the record is in the producer's buffer.
                deliveries.append(await send(record.topic, record.key, record.value, record.partition, None, None))
            except Exception as error:  # refused before buffering: too large, unknown topic
                deliveries.append(error)
        waiting = [delivery for delivery in deliveries if not isinstance(delivery, Exception)]
        acknowledged = iter(await asyncio.gather(*waiting, return_exceptions=True))
        return [delivery if isinstance(delivery, Exception) else next(acknowledged) for delivery in deliveries]
