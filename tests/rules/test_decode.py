"""`decode_event`: SPEC §3 validation, and the invalid_event / key_mismatch
rejections (§7) that come from the bytes alone."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import rules
from app.rules import (
    MAX_COUNT,
    SECOND,
    InvalidEvent,
    Reason,
    RoundCompleted,
    SessionActivated,
    SessionClosed,
    SessionCreated,
    SessionExtended,
    decode_event,
    format_timestamp,
    parse_timestamp,
)
from tests.rules.strategies import (
    T0,
    activated,
    closed,
    created,
    event_delivery,
    extended,
    outcome_of,
    rejections_in,
    round_,
)

KEY = b"s-1"


def to_bytes(body) -> bytes:
    """orjson cannot encode integers past 64 bits; write those by hand."""
    if isinstance(body, bytes):
        return body
    if not isinstance(body, dict):
        return orjson.dumps(body)
    huge = {k: v for k, v in body.items() if isinstance(v, int) and not -(2**63) <= v < 2**64}
    text = orjson.dumps({k: (f"@{k}@" if k in huge else v) for k, v in body.items()})
    for name, number in huge.items():
        text = text.replace(f'"@{name}@"'.encode(), str(number).encode())
    return text


def decode(body, key=KEY) -> rules.Event | InvalidEvent:
    return decode_event(key, to_bytes(body))


def invalid(body, key=KEY, field: str | None = None, reason: Reason = Reason.INVALID_EVENT) -> InvalidEvent:
    result = decode(body, key)
    assert isinstance(result, InvalidEvent), result
    assert result.reason is reason, result
    if field is not None:
        assert f"'{field}'" in result.detail, result.detail
    return result


# --------------------------------------------------------------------------
# Valid events


def test_session_created_decodes_every_field() -> None:
    event = decode(created(event_id="e-1", at="2024-05-01T14:00:00.5+02:00", tenant="acme", provider="openai",
                           model="gpt-x", ttl=600, metadata={"team": "search", "tags": [1, 2]}))
    assert event == SessionCreated(
        event_id="e-1", session_id="s-1", tenant_id="acme", occurred_at=T0 + SECOND // 2,
        provider_id="openai", model="gpt-x", ttl_secs=600, metadata={"team": "search", "tags": [1, 2]},
    )


def test_metadata_is_optional_and_defaults_to_an_empty_object() -> None:
    event = decode(created())
    assert isinstance(event, SessionCreated) and event.metadata == {}


@pytest.mark.parametrize("metadata", [None, 3, "text", [1, "a"], {"nested": {"x": None}}, True])
def test_metadata_may_be_any_json_value(metadata) -> None:
    event = decode(created(metadata=metadata))
    assert isinstance(event, SessionCreated) and event.metadata == metadata


def test_metadata_of_exactly_16_kib_encoded_is_accepted_and_one_byte_more_rejected() -> None:
    overhead = len(orjson.dumps({"k": ""}))
    at_limit = {"k": "a" * (16 * 1024 - overhead)}
    assert len(orjson.dumps(at_limit)) == 16 * 1024
    assert isinstance(decode(created(metadata=at_limit)), SessionCreated)
    too_big = {"k": "a" * (16 * 1024 - overhead + 1)}
    invalid(created(metadata=too_big), field="metadata")


def test_session_activated_round_extended_closed_decode() -> None:
    assert decode(activated(event_id="e", at=T0, initial=0)) == SessionActivated("e", "s-1", "acme", T0, 0)
    assert decode(round_(event_id="e", n=1, delta=MAX_COUNT, at=T0)) == RoundCompleted(
        "e", "s-1", "acme", T0, 1, MAX_COUNT, None)
    assert decode(round_(event_id="e", n=7, delta=0, at=T0, model="gpt-x")) == RoundCompleted(
        "e", "s-1", "acme", T0, 7, 0, "gpt-x")
    assert decode(extended(event_id="e", ttl=2**32, at=T0)) == SessionExtended("e", "s-1", "acme", T0, 2**32)
    assert decode(closed(event_id="e", at=T0)) == SessionClosed("e", "s-1", "acme", T0, None)
    assert decode(closed(event_id="e", at=T0, reason="user")) == SessionClosed("e", "s-1", "acme", T0, "user")


def test_unknown_extra_fields_are_ignored() -> None:
    event = decode(activated(event_id="e", at=T0, initial=5, gateway="gw-3", trace={"id": 1}))
    assert event == SessionActivated("e", "s-1", "acme", T0, 5)


def test_ids_of_128_characters_are_accepted() -> None:
    sid = "s" * 128
    event = decode(activated(sid, event_id="e" * 128, tenant="t" * 128), key=sid.encode())
    assert isinstance(event, SessionActivated)


def test_a_record_without_a_kafka_key_is_key_mismatch() -> None:
    """SPEC §2/§3 (revision 2): a keyless record lands on any partition, away
    from its session's state and order, so it is never accounted. Its
    rejection is keyed by the event's session_id, as the rejected topic is."""
    body = activated()
    result = invalid(body, key=None, field="session_id", reason=Reason.KEY_MISMATCH)
    assert result.parsed == body and result.raw is None and result.session_key == body["session_id"]
    existing, _ = rules.apply(None, event_delivery(created(), offset=1), T0)
    state, outputs = rules.apply(existing, event_delivery(body, key=None, offset=2), T0 + SECOND)
    assert state is existing  # judged on the record alone, like any invalid one
    [rejection] = rejections_in(outputs)
    assert outcome_of(outputs).reason is Reason.KEY_MISMATCH
    wire = rejection.to_json(T0)
    assert wire["event"] == body and "raw" not in wire and rejection.session_key == body["session_id"]


def test_a_keyless_record_that_is_not_a_valid_event_is_invalid_event() -> None:
    # The body is judged first, as with a wrong key.
    invalid(activated(initial=-1), key=None, field="initial_token_count")
    result = decode(b"not json", key=None)
    assert isinstance(result, InvalidEvent) and result.reason is Reason.INVALID_EVENT and result.raw == b"not json"


def test_non_ascii_ids_round_trip() -> None:
    sid = "sessão-✓"
    event = decode(activated(sid, tenant="tenant-é"), key=sid.encode())
    assert isinstance(event, SessionActivated) and event.session_id == sid and event.tenant_id == "tenant-é"


# --------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:00Z", T0),
    ("2024-05-01T12:00:00z", T0),
    ("2024-05-01t12:00:00Z", T0),
    ("2024-05-01 12:00:00Z", T0),  # RFC 3339 §5.6 note: a space may replace T
    ("2024-05-01T14:00:00+02:00", T0),
    ("2024-05-01T07:30:00-04:30", T0),
    ("2024-05-01T12:00:00+00:00", T0),
    ("2024-05-01T12:00:00-00:00", T0),
    ("2024-05-01T12:00:00.000001Z", T0 + 1),
    ("2024-05-01T12:00:00.123456789Z", T0 + 123456),  # nanoseconds truncated
    ("2024-05-01T12:00:00.1Z", T0 + 100_000),
])
def test_occurred_at_accepts_rfc3339_with_an_offset(text: str, expected: int) -> None:
    event = decode(activated(at=text))
    assert isinstance(event, SessionActivated) and event.occurred_at == expected


@pytest.mark.parametrize("text", [
    "2024-05-01T12:00:00",  # no offset
    "2024-05-01",
    "2024-05-01T12:00Z",
    "20240501T120000Z",
    "2024-05-01T12:00:00+0200",
    "2024-02-30T12:00:00Z",
    "2024-05-01T24:00:00Z",
    "2024-05-01T12:00:60Z",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00Z ",
    "2024-05-01T12:00:00Z\n",  # `$` would match before a final newline
    "2024-05-01T12:00:00.\u0661\u0662Z",  # non-ASCII digits (Arabic-Indic)
    "\u0662\u0660\u0662\u0664-05-01T12:00:00Z",
    "0001-01-01T00:00:00+01:00",  # year 0 in UTC: not representable
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "",
])
def test_occurred_at_rejects_anything_else(text: str) -> None:
    invalid(activated(at=text), field="occurred_at")


def digits(n: int) -> st.SearchStrategy[str]:
    # Often the edges of each field, to reach invalid days, hours and offsets.
    return st.text(st.sampled_from("0123456789") | st.sampled_from("0129"), min_size=n, max_size=n)


@settings(max_examples=1500, deadline=None)
@given(day=st.tuples(st.sampled_from(["0001", "9999"]) | digits(4), st.sampled_from(["01", "12"]) | digits(2),
                    st.sampled_from(["01", "31"]) | digits(2)), separator=st.sampled_from("Tt "),
       clock=st.tuples(digits(2), digits(2), digits(2)), fraction=st.none() | st.integers(1, 9).flatmap(digits),
       offset=st.sampled_from(["Z", "z"]) | st.tuples(st.sampled_from("+-"), digits(2), digits(2)))
def test_parse_timestamp_agrees_with_datetime(day: tuple, separator: str, clock: tuple, fraction: str | None,
                                              offset: str | tuple) -> None:
    """Any RFC 3339-shaped text, valid or not: the instant datetime computes
    (in UTC, years 1..9999), or refused where datetime refuses it, and where
    RFC 3339 does though datetime does not: an offset's minutes past 59
    (datetime reads +05:60 as +06:00; the schema refuses it)."""
    zone = "+00:00" if offset in ("Z", "z") else f"{offset[0]}{offset[1]}:{offset[2]}"
    if isinstance(offset, tuple) and int(offset[2]) > 59:
        with pytest.raises(ValueError):
            parse_timestamp(f"{'-'.join(day)}T{':'.join(clock)}{zone}")
        return
    iso = f"{'-'.join(day)}T{':'.join(clock)}{zone}"
    text = f"{'-'.join(day)}{separator}{':'.join(clock)}{'' if fraction is None else '.' + fraction}" + (
        offset if isinstance(offset, str) else zone)
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except (ValueError, OverflowError):
        with pytest.raises((ValueError, OverflowError)):
            parse_timestamp(text)
        return
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    assert parse_timestamp(text) == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) + micros


@pytest.mark.parametrize("value", [None, 1714564800, 1714564800.0, ["2024-05-01T12:00:00Z"], {}])
def test_occurred_at_must_be_a_string(value) -> None:
    invalid(activated(at="x") | {"occurred_at": value}, field="occurred_at")


def test_the_extreme_representable_timestamps_are_accepted_and_format_back() -> None:
    for text in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T01:00:00+01:00"):
        event = decode(activated(at=text))
        assert isinstance(event, SessionActivated)
        assert parse_timestamp(format_timestamp(event.occurred_at)) == event.occurred_at


def test_format_timestamp_is_utc_with_z_and_a_fraction_only_when_needed() -> None:
    assert format_timestamp(T0) == "2024-05-01T12:00:00Z"
    assert format_timestamp(T0 + 1) == "2024-05-01T12:00:00.000001Z"
    assert format_timestamp(T0 + SECOND // 2) == "2024-05-01T12:00:00.500000Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00Z"
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999999Z"


@given(st.integers(min_value=parse_timestamp("0001-01-01T00:00:00Z"),
                   max_value=parse_timestamp("9999-12-31T23:59:59.999999Z")))
def test_format_timestamp_is_what_datetime_writes(micros: int) -> None:
    """Against datetime's own RFC 3339 text (the naive model): the cached
    whole-second part and the fraction put together."""
    moment = datetime(1970, 1, 1) + timedelta(microseconds=micros)
    expected = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds") + "Z"
    assert format_timestamp(micros) == expected
    assert format_timestamp(micros) == expected  # cached


# --------------------------------------------------------------------------
# invalid_event: bytes that are not an event


@pytest.mark.parametrize("raw", [
    b"\xff\xfe{}",  # not UTF-8
    b'{"event_id": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
    b"\xc3\x28",
    b"",
    b"not json",
    b'{"event_id": "e",',
    b"NaN",
    b"{'single': 'quotes'}",
])
def test_bytes_that_do_not_parse_are_invalid_and_kept_raw(raw: bytes) -> None:
    result = invalid(raw)
    assert result.parsed is None and result.raw == raw and result.session_key == "s-1"
    # Through apply: rejected, the rejection carries the bytes in base64 and event null.
    state, outputs = rules.apply(None, event_delivery(raw, partition=2, offset=41), T0)
    assert state is None
    outcome = outcome_of(outputs)
    assert (outcome.result, outcome.reason, outcome.event_type) == (rules.Result.REJECTED, Reason.INVALID_EVENT,
                                                                    None)
    [rejection] = rejections_in(outputs)
    body = rejection.to_json(T0 + 3 * SECOND)
    assert body == {
        "reason": "invalid_event",
        "detail": result.detail,
        "event": None,
        "raw": base64.b64encode(raw).decode("ascii"),
        "source": {"topic": "session-events", "partition": 2, "offset": 41},
        "rejected_at": "2024-05-01T12:00:03Z",
    }
    assert "UTF-8 JSON" in body["detail"]
    assert base64.b64decode(body["raw"]) == raw
    orjson.dumps(body)


@pytest.mark.parametrize("value", [[], [1, 2], 3, "session.created", None, True])
def test_json_that_is_not_an_object_is_invalid(value) -> None:
    result = invalid(value)
    assert result.parsed == value and result.raw is None


def test_a_parsed_but_invalid_event_is_rejected_with_the_event_and_no_raw() -> None:
    body = round_(n=1, delta=-5, at=T0, event_id="e-9")
    state, outputs = rules.apply(None, event_delivery(body, offset=3), T0)
    assert state is None
    [rejection] = rejections_in(outputs)
    assert outcome_of(outputs).event_type == "round.completed"
    wire = rejection.to_json(T0)
    assert wire["event"] == body  # the parsed event, as sent
    assert "raw" not in wire
    assert wire["reason"] == "invalid_event" and "'delta_token_count'" in wire["detail"]
    assert rejection.session_key == "s-1"


COMMON = ("event_id", "session_id", "tenant_id", "occurred_at")
BUILDERS = {
    "session.created": (lambda: created(), ("provider_id", "model", "ttl_secs")),
    "session.activated": (lambda: activated(), ("initial_token_count",)),
    "round.completed": (lambda: round_(n=1, delta=1, at=T0), ("round", "delta_token_count")),
    "session.extended": (lambda: extended(ttl=60, at=T0), ("ttl_secs",)),
    "session.closed": (lambda: closed(at=T0), ()),
}


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, (_, own) in BUILDERS.items()
                                        for name in (*COMMON, "type", *own)])
def test_a_missing_required_field_is_invalid_and_named(kind: str, name: str) -> None:
    body = BUILDERS[kind][0]()
    del body[name]
    invalid(body, key=None, field=name)


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, (_, own) in BUILDERS.items()
                                        for name in (*COMMON, *own)])
@pytest.mark.parametrize("value", [None, 12, [], {"a": 1}, True])
def test_a_required_field_of_the_wrong_type_is_invalid_and_named(kind: str, name: str, value) -> None:
    body = BUILDERS[kind][0]()
    if name in ("ttl_secs", "initial_token_count", "round", "delta_token_count"):
        value = "12" if value == 12 else value  # a number in a string is not a number
    body[name] = value
    invalid(body, key=None, field=name)


@pytest.mark.parametrize("name", ["event_id", "session_id", "tenant_id"])
@pytest.mark.parametrize("value", ["", "x" * 129])
def test_ids_must_have_1_to_128_characters(name: str, value: str) -> None:
    invalid(activated() | {name: value}, key=None, field=name)


@pytest.mark.parametrize("name", ["provider_id", "model"])
def test_provider_and_model_must_be_non_empty_strings(name: str) -> None:
    invalid(created() | {name: ""}, key=None, field=name)
    invalid(created() | {name: 5}, key=None, field=name)


@pytest.mark.parametrize("kind", ["session.updated", "", "SESSION.CREATED", None, 3])
def test_an_unknown_type_is_invalid(kind) -> None:
    invalid(activated() | {"type": kind}, field="type")


@pytest.mark.parametrize("ttl", [0, -1, 2**32 + 1, 2**63, 1.0, 60.5, True, "60"])
def test_ttl_out_of_range_or_not_an_integer_is_invalid(ttl) -> None:
    invalid(created(ttl=ttl), field="ttl_secs")
    invalid(extended(ttl=ttl, at=T0), field="ttl_secs")


@pytest.mark.parametrize("ttl", [1, 2**32])
def test_ttl_bounds_are_inclusive(ttl: int) -> None:
    assert decode(created(ttl=ttl)).ttl_secs == ttl
    assert decode(extended(ttl=ttl, at=T0)).ttl_secs == ttl


@pytest.mark.parametrize("count", [-1, -(2**63), MAX_COUNT + 1, 2**64 - 1, 2**64, 10**30, 1.0, 2.5, True, False])
def test_negative_fractional_or_too_large_counts_are_invalid(count) -> None:
    invalid(activated(initial=count), field="initial_token_count")
    invalid(round_(n=1, delta=count, at=T0), field="delta_token_count")


def test_counts_up_to_2_63_minus_1_are_accepted() -> None:
    assert decode(activated(initial=MAX_COUNT)).initial_token_count == MAX_COUNT
    assert decode(round_(n=MAX_COUNT, delta=MAX_COUNT, at=T0)).round == MAX_COUNT


@pytest.mark.parametrize("number", [0, -1, 1.0, "1", None])
def test_round_must_be_an_integer_of_at_least_1(number) -> None:
    invalid(round_(n=number, delta=1, at=T0), field="round")


@pytest.mark.parametrize("model", ["", 5, ["gpt-x"]])
def test_round_model_must_be_a_non_empty_string_when_given(model) -> None:
    invalid(round_(n=1, delta=1, at=T0) | {"model": model}, field="model")


def test_round_model_null_means_absent() -> None:
    assert decode(round_(n=1, delta=1, at=T0) | {"model": None}).model is None


@pytest.mark.parametrize("reason", [5, [], {}, True])
def test_close_reason_must_be_a_string_when_given(reason) -> None:
    invalid(closed(at=T0) | {"reason": reason}, field="reason")


def test_an_empty_close_reason_is_invalid_and_an_absent_or_null_one_is_not() -> None:
    """SPEC §3 / issue 12: a close reason is 1..1024 characters when given."""
    invalid(closed(at=T0, reason=""), field="reason")
    assert decode(closed(at=T0, event_id="e")) == SessionClosed("e", "s-1", "acme", T0, None)
    assert decode(closed(at=T0, event_id="e") | {"reason": None}) == SessionClosed("e", "s-1", "acme", T0, None)
    assert decode(closed(at=T0, reason="x")).reason == "x"
    assert decode(closed(at=T0, reason="r" * rules.MAX_NAME_CHARS)).reason == "r" * 1024


# --------------------------------------------------------------------------
# key_mismatch


def test_session_id_differing_from_the_kafka_key_is_key_mismatch() -> None:
    body = activated("s-1")
    result = invalid(body, key=b"s-2", field="session_id", reason=Reason.KEY_MISMATCH)
    assert result.parsed == body and result.raw is None and result.session_key == "s-2"
    state, outputs = rules.apply(None, event_delivery(body, key=b"s-2", offset=8), T0)
    assert state is None
    [rejection] = rejections_in(outputs)
    wire = rejection.to_json(T0)
    assert wire["reason"] == "key_mismatch" and wire["event"] == body and "raw" not in wire
    assert rejection.session_key == "s-2"  # published under the record's key


def test_a_kafka_key_that_is_not_utf8_is_key_mismatch_and_keeps_the_bytes() -> None:
    value = orjson.dumps(activated())
    result = decode_event(b"\xff\xfe", value)
    assert isinstance(result, InvalidEvent) and result.reason is Reason.KEY_MISMATCH
    assert result.raw == value and result.session_key is None


def test_an_invalid_event_with_a_wrong_key_is_invalid_event() -> None:
    # The body is judged first: a broken event is invalid whatever its key.
    invalid(activated(initial=-1), key=b"other", field="initial_token_count")


# --------------------------------------------------------------------------
# Whatever is accepted or embedded can be encoded again with orjson


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def with_deep_field(body: dict, name: str, depth: int) -> bytes:
    """The event with `name` set to lists nested `depth` deep (orjson cannot
    encode that, so it is spliced in as text)."""
    text = orjson.dumps(body | {name: "@deep@"})
    return text.replace(b'"@deep@"', b"[" * depth + b"]" * depth)


def test_metadata_too_deep_for_orjson_is_invalid_not_an_exception() -> None:
    # 300 levels is 600 bytes, well under 16 KiB, but orjson encodes at most 254.
    invalid(with_deep_field(created(), "metadata", 300), field="metadata")


def test_accepted_metadata_survives_every_encoding_it_goes_through() -> None:
    """A creation's metadata is nested in the closure, the stored session and,
    when a clashing creation is rejected, in the rejection's copy of that event."""
    metadata = nested(rules.MAX_JSON_DEPTH)
    event = decode(created(metadata=metadata))
    assert isinstance(event, SessionCreated)
    invalid(created(metadata=nested(rules.MAX_JSON_DEPTH + 1)), field="metadata")
    session, _ = rules.apply(None, event_delivery(created(metadata=metadata), offset=1), T0)
    clash = created(metadata=metadata, model="other")
    session, outputs = rules.apply(session, event_delivery(clash, offset=2), T0)
    [rejection] = rejections_in(outputs)
    orjson.dumps(rejection.to_json(T0))
    session, outputs = rules.apply(session, event_delivery(closed(at=T0 + SECOND), offset=3), T0)
    assert rules.decode_state(rules.encode_state(session)) == session
    for closure in (o for o in outputs if isinstance(o, rules.Closure)):
        orjson.dumps(closure.to_json(T0))
    orjson.dumps(session.record.to_view())


def test_an_invalid_event_too_deep_to_embed_is_rejected_with_its_raw_bytes() -> None:
    raw = with_deep_field(round_(n=0, delta=1, at=T0), "trace", 300)
    result = decode_event(KEY, raw)
    assert isinstance(result, InvalidEvent) and result.reason is Reason.INVALID_EVENT
    _, outputs = rules.apply(None, event_delivery(raw), T0)
    [rejection] = rejections_in(outputs)
    wire = orjson.loads(orjson.dumps(rejection.to_json(T0)))
    assert wire["event"] is None and base64.b64decode(wire["raw"]) == raw


def test_a_valid_event_with_deep_unknown_fields_is_accepted() -> None:
    """Unknown fields are ignored (§3), however deep."""
    assert isinstance(decode(with_deep_field(activated(), "trace", 300)), SessionActivated)


def test_a_record_without_a_value_is_invalid_and_its_raw_is_empty() -> None:
    """A tombstone (null value): nothing parsed, so `raw` is present (§7), empty."""
    result = decode_event(KEY, None)
    assert isinstance(result, InvalidEvent) and result.reason is Reason.INVALID_EVENT
    _, outputs = rules.apply(None, rules.Delivery(rules.Source("session-events", 0, 1), result), T0)
    [rejection] = rejections_in(outputs)
    wire = rejection.to_json(T0)
    assert wire["event"] is None and wire["raw"] == ""
    result = decode_event(b"\xff", None)
    assert isinstance(result, InvalidEvent) and result.raw == b""


@pytest.mark.parametrize("field", ["provider_id", "model"])
def test_names_longer_than_the_bound_are_invalid(field: str) -> None:
    from app.rules import MAX_NAME_CHARS, InvalidEvent, decode_event

    body = {"event_id": "e", "type": "session.created", "session_id": "s", "tenant_id": "t",
            "occurred_at": "2026-11-24T06:00:00Z", "provider_id": "p", "model": "m", "ttl_secs": 60}
    body[field] = "x" * MAX_NAME_CHARS
    assert not isinstance(decode_event(b"s", orjson.dumps(body)), InvalidEvent)
    body[field] = "x" * (MAX_NAME_CHARS + 1)
    invalid = decode_event(b"s", orjson.dumps(body))
    assert isinstance(invalid, InvalidEvent) and f"'{field}'" in invalid.detail


def test_a_close_reason_longer_than_the_bound_is_invalid() -> None:
    from app.rules import MAX_NAME_CHARS, InvalidEvent, decode_event

    body = {"event_id": "e", "type": "session.closed", "session_id": "s", "tenant_id": "t",
            "occurred_at": "2026-11-24T06:00:00Z", "reason": "r" * (MAX_NAME_CHARS + 1)}
    invalid = decode_event(b"s", orjson.dumps(body))
    assert isinstance(invalid, InvalidEvent) and "'reason'" in invalid.detail


# --------------------------------------------------------------------------
# U+0000 (SPEC §3 rev. 3): refused in ids and names, kept in metadata


@pytest.mark.parametrize("body, field", [
    (activated(event_id="e\x00"), "event_id"),
    (activated(tenant="acme\x00"), "tenant_id"),
    (created(provider="\x00"), "provider_id"),
    (created(model="gpt\x00x"), "model"),
    (round_(n=1, delta=5, at=T0, model="m\x00"), "model"),
    (closed(at=T0, reason="done\x00"), "reason"),
])
def test_a_nul_in_an_id_or_name_is_invalid_event_naming_the_field(body, field: str) -> None:
    result = invalid(body, field=field)
    assert "U+0000" in result.detail


def test_a_nul_in_the_session_id_is_invalid_event() -> None:
    result = invalid(activated("s-1\x00"), key=b"s-1\x00", field="session_id")
    assert "U+0000" in result.detail


def test_a_nul_in_metadata_is_kept() -> None:
    event = decode(created(metadata={"note": "a\x00b", "k\x00": ["\x00"]}))
    assert isinstance(event, SessionCreated)
    assert event.metadata == {"note": "a\x00b", "k\x00": ["\x00"]}
