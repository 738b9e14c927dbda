"""Which failed sends are tried again and which stop the worker (agents/sender.py).

The sending itself is tested against the real broker: tests/integration/test_batch_path.py."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError

from agents.sender import _retriable


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
