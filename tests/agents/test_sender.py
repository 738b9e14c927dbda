"""Which failed sends are tried again and which stop the worker (agents/sender.py).

The sending itself is tested against the real broker: tests/integration/test_batch_path.py."""

from __future__ import annotations

import asyncio
from unittest.mock import patch

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError

from agents.sender import AcknowledgedSender, Record, SendFailed, _retriable


@pytest.mark.parametrize("error", [KafkaTimeoutError(), KafkaConnectionError(), NotLeaderForPartitionError()])
def test_a_broker_away_or_a_leader_moving_is_tried_again(error: Exception) -> None:
    assert _retriable(error)


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), TopicAuthorizationFailedError(), ValueError("bug")])
def test_a_record_the_broker_refuses_stops_the_worker(error: Exception) -> None:
    assert not _retriable(error)


def test_faust_wrapped_errors_are_judged_by_their_cause() -> None:
    try:
        raise ProducerSendError("send failed") from KafkaTimeoutError()
    except ProducerSendError as wrapped:
        assert _retriable(wrapped)
    try:
        raise ProducerSendError("send failed") from MessageSizeTooLargeError()
    except ProducerSendError as wrapped:
        assert not _retriable(wrapped)


class FailingProducer:
    """Each record's acknowledgement, or the error it is given for it, once."""

    def __init__(self, errors: dict[bytes, list[BaseException]]) -> None:
        self.errors = errors
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: None, headers: None) -> asyncio.Future[str]:
        assert key is not None
        self.sent.append(key)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        queued = self.errors.get(key)
        if queued:
            future.set_exception(queued.pop(0))
        else:
            future.set_result(f"ack {key.decode()}")
        return future


def records(*keys: str) -> list[Record]:
    return [Record("closures", key.encode(), b"{}") for key in keys]


async def test_retriable_failures_are_sent_again_until_acknowledged() -> None:
    producer = FailingProducer({b"b": [NotLeaderForPartitionError(), KafkaTimeoutError()]})
    sender = AcknowledgedSender(producer, retry_for_secs=30)
    with patch("agents.sender._FIRST_PAUSE_SECS", 0.01):
        acknowledged = await sender.send_all(records("a", "b", "c"))
    assert acknowledged == ["ack a", "ack b", "ack c"]
    assert producer.sent == [b"a", b"b", b"c", b"b", b"b"]  # only the failed one again


async def test_a_permanent_failure_behind_a_retriable_one_stops_at_once() -> None:
    """The sender used to judge only the first failure of a batch: a record
    the broker refuses for good, behind one that timed out, was retried for
    the whole window."""
    producer = FailingProducer({b"a": [KafkaTimeoutError()], b"b": [MessageSizeTooLargeError()]})
    sender = AcknowledgedSender(producer, retry_for_secs=300)
    with pytest.raises(SendFailed) as failed:
        await sender.send_all(records("a", "b"))
    assert failed.value.record.key == b"b"
    assert producer.sent == [b"a", b"b"]  # nothing sent again


async def test_a_cancelled_send_anywhere_in_the_batch_cancels() -> None:
    producer = FailingProducer({b"b": [asyncio.CancelledError()]})
    with pytest.raises(asyncio.CancelledError):
        await AcknowledgedSender(producer).send_all(records("a", "b"))


async def test_retriable_failures_stop_once_the_window_is_over() -> None:
    producer = FailingProducer({b"a": [KafkaTimeoutError()] * 100})
    with pytest.raises(SendFailed, match="not delivered"):
        await AcknowledgedSender(producer, retry_for_secs=0.0).send_all(records("a"))
