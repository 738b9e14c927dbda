"""The closure -> row mapping (app/ledger/closure_row.py): pure, no servers."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ledger.closure_row import (
    MAX_TOTAL,
    ClosureRow,
    LedgerReject,
    SourceOffset,
    decode_closure,
    micros_to_datetime,
    parse_instant,
)
from app.rules import parse_timestamp
from tests.support.closures import closure, encode, rfc3339

SOURCE = SourceOffset("session-closures", 3, 1234)
MAX_COUNT = 2**63 - 1


def decode(value: dict[str, Any] | bytes) -> ClosureRow | LedgerReject:
    raw = value if isinstance(value, bytes) else encode(value)
    return decode_closure(SOURCE, b"key", raw)


def test_a_closure_maps_to_its_columns() -> None:
    item = closure("s-1", tenant_id="acme", provider_id="openai", model="gpt", initial=7, delta=8, round_count=4,
                   missing_rounds=1, reason="ttl_expired", metadata={"b": 1, "a": [1, 2]})
    row = decode(item)
    assert isinstance(row, ClosureRow)
    assert (row.closure_id, row.session_id, row.tenant_id, row.provider_id, row.model, row.reason) == (
        "s-1", "s-1", "acme", "openai", "gpt", "ttl_expired")
    assert (row.initial_token_count, row.delta_token_count, row.total_token_count) == (7, 8, 15)
    assert (row.round_count, row.missing_rounds, row.ttl_secs) == (4, 1, 3600)
    assert row.closed_at == item["record"]["closed_at"] and row.activated_at is not None
    assert parse_instant(row.closed_at) == datetime(2026, 1, 30, 22, 0, tzinfo=UTC)
    assert row.record == item["record"]
    assert row.source == SOURCE and len(row.content_sha256) == 32


def test_the_largest_total_fits() -> None:
    row = decode(closure("s-1", initial=MAX_COUNT, delta=MAX_COUNT))
    assert isinstance(row, ClosureRow)
    assert row.total_token_count == MAX_TOTAL == 2**64 - 2


def test_a_pending_session_closure_has_no_activation() -> None:
    item = closure("s-1", initial=0, delta=0, round_count=0)
    item["record"]["activated_at"] = None
    row = decode(item)
    assert isinstance(row, ClosureRow) and row.activated_at is None


def _with(path: str, value: Any) -> dict[str, Any]:
    item = closure("s-1")
    target = item
    *parents, last = path.split(".")
    for name in parents:
        target = target[name]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return item


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "error"), [
    ("closure_id", "", "closure_id: must be a string of 1..128"),
    ("closure_id", "x" * 129, "closure_id: must be a string of 1..128"),
    ("closure_id", _DELETE, "closure_id: missing"),
    ("reason", "crashed", "reason: must be one of closed, ttl_expired"),
    ("record", [], "record: must be a JSON object"),
    ("record.session_id", "other", "record.session_id: must equal closure_id"),
    ("record.tenant_id", 5, "record.tenant_id: must be a string"),
    ("record.provider_id", "p" * 1025, "record.provider_id: must be a string of 1..1024"),
    ("record.model", _DELETE, "record.model: missing"),
    ("record.created_at", "yesterday", "record.created_at: must be an RFC 3339"),
    ("record.closed_at", None, "record.closed_at: must be an RFC 3339 timestamp"),
    ("record.closed_at", "2026-01-30T22:00:00", "record.closed_at: must be an RFC 3339"),
    ("record.activated_at", 17, "record.activated_at: must be an RFC 3339 timestamp or null"),
    ("record.ttl_secs", 0, "record.ttl_secs: must be an integer in 1..4294967296"),
    ("record.round_count", -1, "record.round_count: must be an integer"),
    ("record.initial_token_count", True, "record.initial_token_count: must be an integer"),
    ("record.delta_token_count", 2**63, "record.delta_token_count: must be an integer in 0..9223372036854775807"),
    ("record.delta_token_count", 1.5, "record.delta_token_count: must be an integer"),
    ("record.metadata", _DELETE, "record.metadata: missing"),
    ("total_token_count", 151, "total_token_count: must equal record.initial_token_count + "
                               "record.delta_token_count (150), not 151"),
    ("total_token_count", "150", "total_token_count: must be an integer"),
    ("missing_rounds", 4, "missing_rounds: must be an integer in 0..3"),
    ("emitted_at", _DELETE, "emitted_at: missing"),
])
def test_a_closure_that_breaks_the_schema_is_rejected_naming_the_field(path: str, value: Any, error: str) -> None:
    reject = decode(_with(path, value))
    assert isinstance(reject, LedgerReject), reject
    assert reject.error.startswith(error), reject.error
    assert reject.source == SOURCE and reject.key == b"key"


@pytest.mark.parametrize(("value", "error"), [
    (None, "no value"),
    (b"", "not JSON"),
    (b"{\"closure_id\": ", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "the closure must be a JSON object"),
    (b"18446744073709551616", "the closure must be a JSON object"),
])
def test_bytes_that_are_no_closure_are_rejected_and_kept(value: bytes | None, error: str) -> None:
    reject = decode_closure(SOURCE, None, value)
    assert isinstance(reject, LedgerReject)
    assert reject.error.startswith(error) and reject.value == value


def test_a_total_past_2_to_the_64_is_rejected_not_rounded() -> None:
    # orjson reads integers past 2^64 - 1 as floats.
    raw = encode(closure("s-1", initial=MAX_COUNT, delta=MAX_COUNT)).replace(
        b'"total_token_count":18446744073709551614', b'"total_token_count":18446744073709551616')
    reject = decode(raw)
    assert isinstance(reject, LedgerReject) and reject.error.startswith("total_token_count: must be an integer")


@pytest.mark.parametrize("where", ["closure_id", "record.tenant_id", "record.provider_id", "record.model"])
def test_a_nul_in_an_id_or_name_is_rejected_naming_it(where: str) -> None:
    item = _with(where, "acme\x00")
    if where == "closure_id":
        item["record"]["session_id"] = item["closure_id"]
    reject = decode(item)
    assert isinstance(reject, LedgerReject) and "U+0000" in reject.error and reject.error.startswith(where)


def test_a_nul_in_metadata_is_stored_replaced_and_kept_exactly_beside_and_billed() -> None:
    item = closure("s-1", initial=1200, delta=34, metadata={"note": "a\x00b", "k\x00": ["\x00"]})
    row = decode(item)
    assert isinstance(row, ClosureRow) and row.total_token_count == 1234
    assert "\x00" not in row.record_text and "\\u0000" not in row.record_text
    assert orjson.loads(row.record_text)["metadata"] == {"note": "a\ufffdb", "k\ufffd": ["\ufffd"]}
    assert row.record_json is not None and orjson.loads(row.record_json) == item["record"]


def test_an_unknown_record_field_nested_300_deep_is_stored() -> None:
    raw = encode(closure("s-1")).replace(b'"metadata":{}', b'"metadata":{},"extra":' + b"[" * 300 + b"]" * 300)
    row = decode(raw)
    assert isinstance(row, ClosureRow) and row.total_token_count == 150
    extra = json.loads(row.record_text)["extra"]
    for _ in range(299):
        [extra] = extra
    assert extra == []


#: JSON values whose strings and keys are made of the characters around U+0000 and its escape.
json_values_with_nul = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet="a\x00\\u0", max_size=6),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet="a\x00\\", max_size=3), children, max_size=3),
    max_leaves=8)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(text for item in value.values() for text in strings_in(item))]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


@settings(max_examples=300)
@given(json_values_with_nul)
def test_any_metadata_is_kept_exactly_and_the_jsonb_text_holds_no_nul(metadata: Any) -> None:
    item = closure("s-1", metadata=metadata)
    row = decode(item)
    assert isinstance(row, ClosureRow) and row.total_token_count == 150
    assert not any("\x00" in text for text in strings_in(orjson.loads(row.record_text)))
    exact = row.record_json if row.record_json is not None else row.record_text
    assert orjson.loads(exact) == item["record"]


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    row = decode(_with("record.metadata", {"text": "\\u0000"}))
    assert isinstance(row, ClosureRow)


def test_metadata_nested_too_deeply_to_store_is_rejected() -> None:
    raw = encode(closure("s-1", metadata=None)).replace(b'"metadata":{}', b'"metadata":' + b"[" * 600 + b"]" * 600)
    reject = decode(raw)
    assert isinstance(reject, LedgerReject) and "nested too deeply" in reject.error


# --------------------------------------------------------------------------
# Content digest: what the conflict rule compares


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@st.composite
def closures(draw: st.DrawFn) -> dict[str, Any]:
    initial = draw(st.integers(0, MAX_COUNT))
    delta = draw(st.integers(0, MAX_COUNT))
    rounds = draw(st.integers(0, 1000))
    return closure(
        draw(st.text(min_size=1, max_size=12).filter(lambda text: "\x00" not in text)),
        tenant_id=draw(st.sampled_from(["a", "b"])), initial=initial, delta=delta, round_count=rounds,
        missing_rounds=draw(st.integers(0, rounds)), reason=draw(st.sampled_from(["closed", "ttl_expired"])),
        metadata=draw(json_values.filter(lambda value: "\\u0000" not in orjson.dumps(value).decode())),
    )


@settings(max_examples=200)
@given(closures(), st.datetimes(timezones=st.just(UTC)))
def test_emitted_at_is_not_content(item: dict[str, Any], emitted_at: datetime) -> None:
    again = copy.deepcopy(item)
    again["emitted_at"] = emitted_at.isoformat()
    first, second = decode(item), decode(again)
    assert isinstance(first, ClosureRow) and isinstance(second, ClosureRow)
    assert first.content_sha256 == second.content_sha256


@settings(max_examples=200)
@given(closures())
def test_key_order_and_timestamp_spelling_are_not_content(item: dict[str, Any]) -> None:
    again = copy.deepcopy(item)
    again["record"] = dict(reversed(list(again["record"].items())))
    if isinstance(again["record"]["metadata"], dict):
        again["record"]["metadata"] = dict(reversed(list(again["record"]["metadata"].items())))
    again["record"]["closed_at"] = again["record"]["closed_at"].replace("Z", "+00:00")
    assert decode(item).content_sha256 == decode(again).content_sha256


@settings(max_examples=300)
@given(closures(), st.sampled_from([
    "reason", "total", "missing_rounds", "tenant_id", "provider_id", "model", "created_at", "activated_at",
    "closed_at", "ttl_secs", "round_count", "metadata",
]))
def test_any_changed_figure_is_other_content(item: dict[str, Any], change: str) -> None:
    changed = copy.deepcopy(item)
    record = changed["record"]
    if change == "reason":
        changed["reason"] = "ttl_expired" if item["reason"] == "closed" else "closed"
    elif change == "total":
        # A changed total with a consistent record, as a buggy re-send would carry.
        if record["delta_token_count"] > 0:
            record["delta_token_count"] -= 1
        else:
            record["delta_token_count"] += 1
        changed["total_token_count"] = record["initial_token_count"] + record["delta_token_count"]
    elif change == "missing_rounds":
        record["round_count"] += 1
        changed["missing_rounds"] += 1
    elif change in ("tenant_id", "provider_id", "model"):
        record[change] += "x"
    elif change in ("created_at", "activated_at", "closed_at"):
        record[change] = rfc3339(datetime.fromisoformat(record[change].replace("Z", "+00:00")) + timedelta(seconds=1))
    elif change in ("ttl_secs", "round_count"):
        record[change] += 1
    else:
        record["metadata"] = {"was": record["metadata"]}
    first, second = decode(item), decode(changed)
    assert isinstance(first, ClosureRow) and isinstance(second, ClosureRow), second
    assert first.content_sha256 != second.content_sha256


@settings(max_examples=300)
@given(st.binary(max_size=200) | closures().map(encode).map(lambda raw: raw[: len(raw) // 2]))
def test_any_bytes_become_a_row_or_a_reject(value: bytes) -> None:
    result = decode_closure(SOURCE, None, value)
    assert isinstance(result, (ClosureRow, LedgerReject))


# --------------------------------------------------------------------------
# Timestamps: the fast path reads what app.rules reads


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """RFC 3339 spellings and near misses."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    text = moment.strftime("%Y-%m-%d") + draw(st.sampled_from(["T", "t", " ", "X"])) + moment.strftime("%H:%M:%S")
    digits = draw(st.integers(0, 10))
    if digits:
        text += draw(st.sampled_from([".", ","])) + "".join(draw(st.lists(st.sampled_from("0123456789"),
                                                                          min_size=digits, max_size=digits)))
    zone = draw(st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+05:30", "-23:59", "+24:00", "+0100", "+01"]))
    text += zone
    if draw(st.booleans()):
        index = draw(st.integers(0, len(text) - 1))
        text = text[:index] + draw(st.sampled_from("0a:-+.T٣")) + text[index + 1:]
    return text


def _outcome(parse, text: str):
    try:
        return parse(text)
    except (ValueError, OverflowError) as error:
        return type(error)


@settings(max_examples=2000)
@given(timestamp_texts())
def test_the_fast_timestamp_path_reads_what_the_rules_read(text: str) -> None:
    expected = _outcome(lambda value: micros_to_datetime(parse_timestamp(value)), text)
    actual = _outcome(parse_instant, text)
    if isinstance(expected, type):
        assert isinstance(actual, type), f"{text!r}: the rules refuse it, the ledger read {actual}"
    else:
        assert actual == expected and actual.utcoffset() == timedelta(0), text
