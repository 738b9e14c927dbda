"""The schemas and the rules agree (issue 14):

* every event valid under its type's schema is never rejected `invalid_event`
  (events generated from the schemas: tests/gateway/schema_strategies.py);
* every `invalid_event` case in tests/rules is schema-invalid, or falls under
  one of DOCUMENTED_EXCEPTIONS: the rules JSON Schema cannot express (also
  listed in docs/schemas.md).

The second walks the cases by running tests/rules (without its hypothesis
tests) with a plugin that records what `decode_event` judged invalid_event,
so a case added there is checked here without being copied.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import rules, schemas
from app.rules import InvalidEvent, Reason, decode_event
from app.schemas import validate_event
from tests.gateway.record_invalid_events import RECORD_ENV
from tests.gateway.reference import reference_validator
from tests.gateway.schema_strategies import instances
from tests.support import REPO

INTEGER_FIELDS = ("ttl_secs", "initial_token_count", "round", "delta_token_count")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _instant_out_of_range(event: dict, metadata_max_bytes: int) -> bool:
    try:
        rules.parse_timestamp(event["occurred_at"])
    except OverflowError:
        return True
    return False


def _metadata_too_large(event: dict, metadata_max_bytes: int) -> bool:
    return event["type"] == "session.created" and len(json.dumps(
        event.get("metadata", {}), ensure_ascii=False, separators=(",", ":")).encode()) > metadata_max_bytes


#: name -> (the rule, whether an event breaks it). Each applies to an event
#: that is otherwise schema-valid.
DOCUMENTED_EXCEPTIONS: dict[str, tuple[str, Callable[[dict, int], bool]]] = {
    "metadata_size": ("a creation's metadata is larger than ACCOUNTANT_METADATA_MAX_BYTES (16 KiB) encoded",
                      _metadata_too_large),
    "metadata_depth": (f"a creation's metadata nests deeper than {rules.MAX_JSON_DEPTH} arrays/objects",
                       lambda event, _: event["type"] == "session.created"
                       and _depth(event.get("metadata")) > rules.MAX_JSON_DEPTH),
    "instant_range": ("occurred_at's instant, in UTC, is outside the years 0001..9999", _instant_out_of_range),
    "integral_float": ("an integer written with a fraction or exponent (60.0): JSON Schema counts it an integer",
                       lambda event, _: any(isinstance(event.get(name), float) for name in INTEGER_FIELDS)),
}


def documented_exception(event: dict, metadata_max_bytes: int = rules.DEFAULT_POLICY.metadata_max_bytes) -> str | None:
    return next((name for name, (_, breaks) in DOCUMENTED_EXCEPTIONS.items() if breaks(event, metadata_max_bytes)),
                None)


def is_invalid_event(result: Any) -> bool:
    return isinstance(result, InvalidEvent) and result.reason is Reason.INVALID_EVENT


# --------------------------------------------------------------------------
# Schema-valid => not invalid_event


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 date-times in all the spellings the schema allows: `T` or `t`,
    `Z`, `z` or an offset, no fraction or one of 1 to 9 digits."""
    day = draw(st.dates())
    clock = draw(st.times()).isoformat(timespec="seconds")
    digits = draw(st.text("0123456789", min_size=1, max_size=9))
    fraction = draw(st.sampled_from(["", "." + digits]))
    offset = draw(st.sampled_from(["Z", "z"]) | st.builds(
        "{}{:02}:{:02}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)))
    return f"{day.isoformat()}{draw(st.sampled_from('Tt'))}{clock}{fraction}{offset}"


def events_of(kind: str) -> st.SearchStrategy[dict]:
    return instances(schemas.resolved_schema(kind), timestamps())


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_event_valid_under_the_schema_passes_the_rules(kind: str, data: st.DataObject) -> None:
    event = data.draw(events_of(kind), label="event")
    reference_validator(kind).validate(event)  # the generator keeps to the schema
    reference_validator("event").validate(event)
    wire = json.dumps(event, ensure_ascii=False).encode("utf-8")  # as a gateway would send it
    result = decode_event(event["session_id"].encode("utf-8"), wire)
    exception = documented_exception(event)
    if exception is None:
        assert not is_invalid_event(result), result.detail
        assert validate_event(orjson.loads(wire)) == []
    else:
        assert is_invalid_event(result), exception


# --------------------------------------------------------------------------
# invalid_event in tests/rules => schema-invalid or documented


def judge(case: dict) -> str | None:
    """"schema" when the case is schema-invalid (or no JSON at all), the name
    of the documented exception it falls under, or None: unexplained."""
    if case["value"] is None:
        return "schema"  # a Kafka record without a value: no JSON instance at all
    try:
        event = orjson.loads(base64.b64decode(case["value"]))
    except orjson.JSONDecodeError:
        return "schema"  # not UTF-8 JSON: no instance at all
    if not reference_validator("event").is_valid(event):
        return "schema"
    return documented_exception(event, case["metadata_max_bytes"])


def test_every_invalid_event_case_of_the_rules_tests_is_schema_invalid_or_documented(tmp_path: Path) -> None:
    record = tmp_path / "invalid-events.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/rules", "-q", "-p", "no:cacheprovider",
         "-p", "tests.gateway.record_invalid_events"],
        cwd=REPO, env=os.environ | {RECORD_ENV: str(record)}, capture_output=True, text=True, timeout=280,
    )
    output = run.stdout[-3000:] + run.stderr[-3000:]
    assert record.exists(), f"nothing recorded; the nested run said:\n{output}"
    cases = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert len(cases) >= 100, f"only {len(cases)} invalid_event cases recorded:\n{output}"
    verdicts = Counter()
    unexplained = []
    for case in cases:
        verdict = judge(case)
        verdicts[verdict] += 1
        if verdict is None:
            unexplained.append(f"{case['test']}: {base64.b64decode(case['value'])[:300]!r} ({case['detail']})")
    assert not unexplained, "schema-valid but invalid_event, and not documented:\n" + "\n".join(unexplained)
    # Each documented exception stands for real cases: the list holds nothing stale.
    assert set(DOCUMENTED_EXCEPTIONS) <= set(verdicts), verdicts


@given(sign=st.sampled_from("+-"), hours=st.integers(0, 99), minutes=st.integers(0, 99))
def test_the_rules_and_the_schema_take_the_same_timezone_offsets(sign: str, hours: int, minutes: int) -> None:
    occurred_at = f"2024-05-01T12:00:00{sign}{hours:02}:{minutes:02}"
    try:
        rules.parse_timestamp(occurred_at)
        rules_take_it = True
    except ValueError:
        rules_take_it = False
    event = {"event_id": "e-1", "type": "session.extended", "session_id": "s-1", "tenant_id": "t-1",
             "occurred_at": occurred_at, "ttl_secs": 60}
    schema_errors = [error for error in validate_event(event) if error.field == "occurred_at"]
    assert rules_take_it == (not schema_errors) == (hours < 24 and minutes < 60), occurred_at
