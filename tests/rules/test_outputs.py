"""`encode_output`: the bytes published for a closure (SPEC §6) or a
rejection (§7), with §7's size rule for rejections over 256 KiB."""

from __future__ import annotations

import base64

import orjson
import pytest

from app.rules import (
    MAX_REJECTION_BYTES,
    RAW_PREFIX_BYTES,
    SECOND,
    CloseReason,
    Closure,
    Reason,
    Rejection,
    SessionRecord,
    Source,
    apply,
    encode_output,
)
from tests.rules.strategies import T0, event_delivery, rejections_in

SOURCE = Source("session-events", 4, 321)


def rejection(event: object = None, raw: bytes | None = None) -> Rejection:
    return Rejection("s-1", Reason.INVALID_EVENT, "field 'type' must be one of ...", event, raw, SOURCE)


def test_a_closure_is_stamped_with_emitted_at() -> None:
    record = SessionRecord("s-1", "acme", "openai", "gpt-x", T0, T0 + SECOND, T0 + 9 * SECOND, 60, 2, 10, 5, {})
    data = encode_output(Closure(record, CloseReason.CLOSED, 1), T0 + 10 * SECOND)
    assert orjson.loads(data) == {
        "closure_id": "s-1", "reason": "closed", "record": record.to_json(), "total_token_count": 15,
        "missing_rounds": 1, "emitted_at": "2024-05-01T12:00:10Z",
    }


def test_a_rejection_is_stamped_with_rejected_at() -> None:
    data = encode_output(rejection(raw=b"\x00junk"), T0 + 250_000)
    assert orjson.loads(data) == {
        "reason": "invalid_event", "detail": "field 'type' must be one of ...", "event": None,
        "raw": base64.b64encode(b"\x00junk").decode(), "source": {"topic": "session-events", "partition": 4,
                                                                  "offset": 321},
        "rejected_at": "2024-05-01T12:00:00.250000Z",
    }


def padded_to(size: int) -> Rejection:
    """A rejection whose JSON is exactly `size` bytes."""
    bare = len(encode_output(rejection({"pad": ""}), T0))
    return rejection({"pad": "x" * (size - bare)})


def test_a_rejection_of_exactly_256_kib_is_published_whole() -> None:
    output = padded_to(MAX_REJECTION_BYTES)
    data = encode_output(output, T0, original=b"{...}")
    assert len(data) == MAX_REJECTION_BYTES
    assert orjson.loads(data)["event"] == output.event


def test_a_bigger_rejection_carries_the_first_64_kib_of_the_original_instead_of_its_event() -> None:
    original = b"{" + b"x" * (MAX_REJECTION_BYTES + 1000)
    output = padded_to(MAX_REJECTION_BYTES + 1)
    data = encode_output(output, T0, original=original)
    body = orjson.loads(data)
    assert len(data) <= MAX_REJECTION_BYTES
    assert body["event"] is None and body["raw_truncated"] is True and body["raw_size"] == len(original)
    assert base64.b64decode(body["raw"]) == original[:RAW_PREFIX_BYTES]
    assert body["source"] == {"topic": "session-events", "partition": 4, "offset": 321}
    assert body["reason"] == "invalid_event" and body["rejected_at"] == "2024-05-01T12:00:00Z"


def test_bytes_that_did_not_parse_are_truncated_from_their_own_raw() -> None:
    raw = b"\xff" * (MAX_REJECTION_BYTES * 4 // 5)  # base64 takes it past 256 KiB
    body = orjson.loads(encode_output(rejection(raw=raw), T0, original=b"ignored"))
    assert base64.b64decode(body["raw"]) == raw[:RAW_PREFIX_BYTES] and body["raw_size"] == len(raw)


def test_without_the_original_the_event_itself_is_what_gets_truncated() -> None:
    """A rejection owed by a v1 changelog value: its record's bytes are gone."""
    output = padded_to(MAX_REJECTION_BYTES + 10)
    body = orjson.loads(encode_output(output, T0))
    assert base64.b64decode(body["raw"]) == orjson.dumps(output.event)[:RAW_PREFIX_BYTES]
    assert body["raw_size"] == len(orjson.dumps(output.event))


def test_a_huge_invalid_record_from_apply_is_published_truncated() -> None:
    """The whole path: a 1 MB record with an unknown type is rejected with the
    parsed event, and published within Kafka's limits."""
    value = orjson.dumps({"type": "session.huge", "session_id": "s-1", "blob": "y" * 1_000_000})
    _, outputs = apply(None, event_delivery(value, key=b"s-1", offset=7), T0)
    [output] = rejections_in(outputs)
    assert output.event is not None
    data = encode_output(output, T0, original=value)
    assert len(data) <= MAX_REJECTION_BYTES and orjson.loads(data)["raw_size"] == len(value)


@pytest.mark.parametrize("size", [MAX_REJECTION_BYTES + 1, 4 * MAX_REJECTION_BYTES])
def test_a_closure_is_never_truncated(size: int) -> None:
    record = SessionRecord("s-1", "acme", "openai", "gpt-x", T0, None, T0, 60, 0, 0, 0, {"blob": "z" * size})
    data = encode_output(Closure(record, CloseReason.TTL_EXPIRED, 0), T0)
    assert orjson.loads(data)["record"]["metadata"] == {"blob": "z" * size}
