"""/healthz's decision (app/web/health.py): alive until the agent has been
stalled for longer than ACCOUNTANT_STALL_TIMEOUT_SECS. A real stall of a real
worker: tests/integration/test_liveness.py."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from app.settings import SettingsError, load_settings
from app.web.health import liveness
from app.web.openapi import build_openapi
from tests.support import REPO
from tests.web.openapi_check import validate_response

DOCUMENT = build_openapi(token_required=False)


def test_an_agent_with_nothing_waiting_is_alive() -> None:
    assert liveness(0.0, 120.0) == (200, {"status": "ok"})


def test_the_timeout_itself_is_still_alive_and_past_it_is_stalled() -> None:
    assert liveness(120.0, 120.0) == (200, {"status": "ok"})
    assert liveness(120.04, 120.0) == (503, {"status": "stalled", "stalled_seconds": 120.1,
                                             "stall_timeout_secs": 120.0})


@given(stalled=st.floats(min_value=0, max_value=1e6), timeout=st.floats(min_value=0.001, max_value=86_400))
def test_the_answer_follows_the_timeout_and_is_what_the_document_says(stalled: float, timeout: float) -> None:
    status, body = liveness(stalled, timeout)
    assert status == (503 if stalled > timeout else 200)
    if status == 503:
        assert body["stalled_seconds"] > timeout
    validate_response(DOCUMENT, "/healthz", status, body)


def test_the_default_timeout_is_the_stalled_alert_threshold_and_must_be_positive() -> None:
    """The alert and the orchestrator's restart fire on the same stall."""
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    (stalled,) = [rule for rule in rules if rule.get("alert") == "AccountantAgentStalled"]
    threshold = re.fullmatch(r"max by \(instance\) \(accountant_agent_stalled_seconds\) > (\d+)", stalled["expr"])
    assert threshold is not None, stalled["expr"]
    assert load_settings().stall_timeout_secs == float(threshold[1])
    with pytest.raises(SettingsError, match="ACCOUNTANT_STALL_TIMEOUT_SECS"):
        load_settings(stall_timeout_secs=0)
