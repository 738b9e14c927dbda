"""A pytest plugin for a nested run of tests/rules (see test_schema_agreement):
every record `app.rules.decode_event` judges `invalid_event` is appended, as
JSON lines, to the file named by ACCOUNTANT_RECORD_INVALID_EVENTS.

Loaded with `-p`, so it wraps `decode_event` before any test module imports
it by name. Hypothesis-driven tests are deselected: the record must be the
same on every run.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

import pytest

import app.rules
from app.rules import DEFAULT_POLICY, InvalidEvent, Policy, Reason

RECORD_ENV = "ACCOUNTANT_RECORD_INVALID_EVENTS"
_decode_event = app.rules.decode_event


def _recording_decode_event(key: bytes | None, value: bytes | None, policy: Policy = DEFAULT_POLICY) -> Any:
    result = _decode_event(key, value, policy)
    if isinstance(result, InvalidEvent) and result.reason is Reason.INVALID_EVENT:
        case = {
            "value": None if value is None else base64.b64encode(value).decode("ascii"),
            "metadata_max_bytes": policy.metadata_max_bytes,
            "detail": result.detail,
            "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
        }
        with open(os.environ[RECORD_ENV], "a", encoding="utf-8") as record:
            record.write(json.dumps(case) + "\n")
    return result


def pytest_configure(config: pytest.Config) -> None:
    # Wherever the package (or a module of it, once split) offers the function.
    for name, module in list(sys.modules.items()):
        if name == "app.rules" or name.startswith("app.rules."):
            for attribute, value in list(vars(module).items()):
                if value is _decode_event:
                    setattr(module, attribute, _recording_decode_event)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = [item for item in items if not getattr(getattr(item, "obj", None), "is_hypothesis_test", False)]
