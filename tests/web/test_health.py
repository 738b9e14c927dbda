"""The probes' decisions (app/web/health.py), one test per state: /healthz
alive until the agent has been stalled, with the broker answering, for
longer than ACCOUNTANT_STALL_TIMEOUT_SECS; /readyz 503 only while ingest
cannot work. A frozen broker under a real worker: tests/faults/test_stalled_agent.py."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from app.settings import SettingsError, load_settings
from app.web import ingest_producer
from app.web.health import liveness, readiness
from app.web.ingest_producer import IngestProducer
from app.web.openapi import build_openapi
from tests.support import REPO
from tests.web.openapi_check import validate_response

DOCUMENT = build_openapi(token_required=False)


def test_an_agent_with_nothing_waiting_is_alive() -> None:
    assert liveness(0.0, 1000.0, 120.0) == (200, {"status": "ok"})


def test_the_timeout_itself_is_still_alive_and_past_it_is_stalled() -> None:
    assert liveness(120.0, 1000.0, 120.0) == (200, {"status": "ok"})
    assert liveness(120.04, 1000.0, 120.0) == (503, {"status": "stalled", "stalled_seconds": 120.1,
                                             "stall_timeout_secs": 120.0})


def test_a_stall_while_the_broker_is_silent_is_the_brokers_outage_not_a_stuck_process() -> None:
    assert liveness(600.0, 0.0, 120.0) == (200, {"status": "ok"})
    # Back for 30 s: the agent gets its full timeout from there.
    assert liveness(630.0, 30.0, 120.0) == (200, {"status": "ok"})
    assert liveness(760.0, 160.0, 120.0)[0] == 503


@given(stalled=st.floats(min_value=0, max_value=1e6), answering=st.floats(min_value=0, max_value=1e6),
       timeout=st.floats(min_value=0.001, max_value=86_400))
def test_the_answer_follows_the_timeout_and_is_what_the_document_says(stalled: float, answering: float,
                                                                      timeout: float) -> None:
    status, body = liveness(stalled, answering, timeout)
    assert status == (503 if min(stalled, answering) > timeout else 200)
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


def test_readiness_before_the_producer_has_reached_the_broker() -> None:
    status, body = readiness(False, 3.0, 30.0, rebalancing=True)
    assert (status, body["status"]) == (503, "starting")
    validate_response(DOCUMENT, "/readyz", status, body)


def test_readiness_once_the_broker_has_been_silent_too_long() -> None:
    assert readiness(True, 30.0, 30.0, rebalancing=False) == (200, {"status": "ready"})
    status, body = readiness(True, 31.5, 30.0, rebalancing=False)
    assert (status, body["status"]) == (503, "broker_unreachable")
    assert "31 s" in body["detail"] and "ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS" in body["detail"]
    validate_response(DOCUMENT, "/readyz", status, body)


def test_a_rebalance_keeps_readiness_200_and_says_so() -> None:
    status, body = readiness(True, 1.0, 30.0, rebalancing=True)
    assert (status, body["status"]) == (200, "rebalancing")
    validate_response(DOCUMENT, "/readyz", status, body)
    assert readiness(True, 1.0, 30.0, rebalancing=False) == (200, {"status": "ready"})


def test_the_broker_counts_as_answering_from_its_first_answer_after_a_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    """What /healthz's stall clock is held to (IngestProducer.answering_secs)."""
    now = [1000.0]
    monkeypatch.setattr(ingest_producer.time, "monotonic", lambda: now[0])
    producer = IngestProducer(lambda: None, lambda: None, "events")  # type: ignore[arg-type, return-value]
    assert (producer.answering_secs(), producer.silent_secs()) == (0.0, 0.0)
    producer.reached()
    for _ in range(10):  # answering every watch interval for 20 s
        now[0] += ingest_producer.WATCH_INTERVAL_SECS
        producer.reached()
    assert producer.answering_secs() == 20.0
    now[0] += ingest_producer.SILENCE_SECS + 0.5  # frozen: no answer, and no failure either
    assert producer.answering_secs() == 0.0 and producer.silent_secs() == ingest_producer.SILENCE_SECS + 0.5
    producer.reached()  # back: the clock starts again
    now[0] += 3.0
    assert producer.answering_secs() == 3.0
