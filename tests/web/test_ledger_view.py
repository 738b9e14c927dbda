"""GET /ledger in-process: not configured, caught up, behind, and unknown (with
why), each answer as the OpenAPI document says; the dashboard has its card."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from app.web.ledger import LedgerView
from app.web.openapi import build_openapi
from tests.web.inprocess import InProcessWorker
from tests.web.openapi_check import validate_response

DOCUMENT = build_openapi(token_required=False)


class FixedLag:
    """A lag source that answers what the test says (or fails with it)."""

    def __init__(self, answer: Mapping[int, int] | Exception) -> None:
        self.answer = answer
        self.closed = False

    async def lag(self) -> Mapping[int, int]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def close(self) -> None:
        self.closed = True


async def ledger_answer(view: LedgerView) -> dict:
    response = await view.ledger_status(make_mocked_request("GET", "/ledger"))
    assert response.status == 200 and response.content_type == "application/json"
    body = orjson.loads(response.body)
    validate_response(DOCUMENT, "/ledger", 200, body)
    return body


async def test_a_worker_without_a_ledger_says_so(tmp_path: Path) -> None:
    worker = await InProcessWorker(tmp_path).start()
    try:
        status, body, _ = await worker.get("/ledger")
        assert status == 200
        validate_response(DOCUMENT, "/ledger", status, body)
        assert body == {"configured": False, "lag_records": None, "caught_up": None, "error": None}
        status, page, _ = await worker.get("/")
        assert status == 200 and 'id="ledger-card" hidden' in page
    finally:
        await worker.stop()


async def test_lag_zero_on_every_partition_is_caught_up() -> None:
    body = await ledger_answer(LedgerView(FixedLag({0: 0, 1: 0, 2: 0})))
    assert body == {"configured": True, "lag_records": 0, "caught_up": True, "error": None}


async def test_the_lag_is_the_sum_over_the_partitions() -> None:
    body = await ledger_answer(LedgerView(FixedLag({0: 3, 1: 0, 2: 2})))
    assert body == {"configured": True, "lag_records": 5, "caught_up": False, "error": None}


async def test_an_unreadable_lag_is_unknown_and_says_why() -> None:
    body = await ledger_answer(LedgerView(FixedLag(LookupError("topic 'session-closures' does not exist"))))
    assert body == {"configured": True, "lag_records": None, "caught_up": None,
                    "error": "LookupError: topic 'session-closures' does not exist"}


async def test_an_error_s_detail_never_reaches_the_answer() -> None:
    """A database error's DETAIL quotes row contents; the answer keeps its first line."""
    failing = RuntimeError('duplicate key value violates unique constraint "closures_pkey"\n'
                           "DETAIL:  Key (closure_id)=(s-secret-tenant-row) already exists.")
    body = await ledger_answer(LedgerView(FixedLag(failing)))
    assert body["error"] == 'RuntimeError: duplicate key value violates unique constraint "closures_pkey"'
    assert "s-secret-tenant-row" not in str(body)


async def test_closing_the_view_closes_its_source() -> None:
    source = FixedLag({})
    await LedgerView(source).close()
    assert source.closed


@pytest.mark.postgres
async def test_a_worker_whose_broker_is_down_answers_the_ledger_is_unknown(tmp_path: Path, ledger_dsn: str) -> None:
    """Real clients: a real database, and a broker address nothing listens on."""
    worker = await InProcessWorker(tmp_path, ledger_dsn=ledger_dsn).start()
    try:
        status, body, _ = await worker.get("/ledger")
        assert status == 200
        validate_response(DOCUMENT, "/ledger", status, body)
        assert body["configured"] is True and body["lag_records"] is None and body["caught_up"] is None
        assert "KafkaConnectionError" in body["error"], body
    finally:
        await worker.stop()
