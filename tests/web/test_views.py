"""The HTTP views in-process: answers, errors, paging, the token, and the fan-out
between workers. Every JSON answer is checked against /openapi.json."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from app.publisher import SessionPublisher, UsageUnavailable
from app.rules import CloseReason
from app.rules.usage import Budget, PeriodTotals, TenantUsage, period_of, period_start
from app.web.ingest_producer import IngestProducer
from tests.web.inprocess import PARTITIONS, InProcessWorker, form_group, make_session
from tests.web.openapi_check import validate_response

PEER_TOKEN = "peer-secret"
TOKEN = "s3cret-token"


@pytest_asyncio.fixture(loop_scope="function")  # the loop the test's servers run on
async def workers(tmp_path: Path) -> AsyncIterator[Callable[..., InProcessWorker]]:
    """Factory of started in-process workers; all are stopped after the test."""
    started: list[InProcessWorker] = []

    async def start(name: str = "worker", **options) -> InProcessWorker:
        worker = await InProcessWorker(tmp_path, name, **options).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


async def checked_get(worker: InProcessWorker, path: str, documented_path: str | None = None, **kwargs):
    """GET, and check the JSON body against the document the worker serves."""
    status, body, response = await worker.get(path, **kwargs)
    if response.content_type == "application/json":
        _, document, _ = await worker.get("/openapi.json", **kwargs)
        validate_response(document, documented_path or path.split("?")[0], status, body)
    return status, body


async def test_get_session_answers_the_view_and_404_json_when_unknown(workers) -> None:
    worker = await workers()
    worker.put(make_session("s-1", initial=100, delta=20))

    status, body = await checked_get(worker, "/sessions/s-1", "/sessions/{session_id}")
    assert status == 200
    assert body["session_id"] == "s-1" and body["state"] == "active" and body["total_token_count"] == 120
    assert body["created_at"] == "2026-01-05T10:00:00Z" and body["expires_at"] == "2026-01-05T10:10:00Z"

    status, body = await checked_get(worker, "/sessions/nope", "/sessions/{session_id}")
    assert status == 404 and body["error"] == "not_found" and "nope" in body["detail"]


async def test_a_session_id_with_a_slash_is_one_path_segment(workers) -> None:
    worker = await workers()
    worker.put(make_session("team/a b"))
    status, body = await checked_get(worker, "/sessions/team%2Fa%20b", "/sessions/{session_id}")
    assert status == 200 and body["session_id"] == "team/a b"


@pytest.mark.parametrize(("path", "parameter"), [
    ("/sessions?limit=0", "limit"),
    ("/sessions?limit=1001", "limit"),
    ("/sessions?limit=ten", "limit"),
    ("/sessions?limit=", "limit"),
    ("/sessions?state=open", "state"),
    ("/sessions?state=active,", "state"),
    ("/sessions?tenant_id=", "tenant_id"),
    ("/sessions?tenant_id=" + "t" * 129, "tenant_id"),
    ("/sessions?cursor=0", "cursor"),
    ("/sessions?cursor=%2A%2A", "cursor"),
    ("/sessions?cursor=", "cursor"),
    ("/sessions?limit=1&limit=2", "limit"),
    ("/sessions?tenant=acme", "tenant"),
    ("/tenants?limit=-1", "limit"),
    ("/tenants?cursor=a", "cursor"),
    ("/sessions/" + "s" * 129, "session_id"),
    ("/tenants/" + "t" * 129 + "/usage", "tenant_id"),
    ("/stats?verbose=1", "verbose"),
])
async def test_bad_parameters_answer_400_naming_the_parameter(workers, path: str, parameter: str) -> None:
    worker = await workers()
    status, body, response = await worker.get(path)
    assert status == 400, body
    assert response.content_type == "application/json"
    assert body["error"] == "bad_request" and body["parameter"] == parameter and f"'{parameter}'" in body["detail"]


async def test_unknown_paths_and_methods_answer_json(workers) -> None:
    worker = await workers()
    status, body, _ = await worker.get("/nothing-here")
    assert status == 404 and body["error"] == "not_found"
    assert worker.client is not None
    response = await worker.client.post("/stats")
    assert response.status == 405 and (await response.json())["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


async def test_faust_s_own_table_and_router_pages_are_off(workers) -> None:
    """Faust's /table/ and /router/ pages route keys by murmur2, which is not
    how gateways partition: they would answer for the wrong worker."""
    worker = await workers()
    worker.put(make_session("s-1"))
    for path in ("/table/", "/table/sessions/", "/table/sessions/s-1/", "/router/"):
        status, body, _ = await worker.get(path)
        assert status == 404 and body["error"] == "not_found", path


async def test_listing_pages_through_every_matching_session_once_in_id_order(workers) -> None:
    worker = await workers()
    for number in range(23):
        worker.put(make_session(f"s-{number:02}", tenant="acme" if number % 3 else "globex", partition=number % 4,
                                close=CloseReason.CLOSED if number % 5 == 0 else None))
    seen: list[str] = []
    cursor = None
    while True:
        path = "/sessions?tenant_id=acme&state=active&limit=4" + (f"&cursor={cursor}" if cursor else "")
        status, page = await checked_get(worker, path)
        assert status == 200 and len(page["sessions"]) <= 4
        seen += [session["session_id"] for session in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = [f"s-{n:02}" for n in range(23) if n % 3 and n % 5]
    assert seen == expected


async def test_listing_filters_by_several_states(workers) -> None:
    worker = await workers()
    worker.put(make_session("pending", activated=False), make_session("active"),
               make_session("closed", close=CloseReason.TTL_EXPIRED))
    status, page = await checked_get(worker, "/sessions?state=pending,closed")
    assert status == 200
    assert [(s["session_id"], s["state"]) for s in page["sessions"]] == [("closed", "closed"), ("pending", "pending")]


async def test_tenant_usage_answers_from_the_tenant_table_not_the_sessions(workers) -> None:
    worker = await workers()
    now = time.time_ns() // 1000
    this_month, last_month = period_of(now), period_of(period_start(period_of(now)) - 1)
    worker.put_tenants(
        TenantUsage("acme", open_sessions=2, open_tokens=110,
                    closed={this_month: PeriodTotals(1018, 2, 1), last_month: PeriodTotals(5000, 9, 9)}),
        TenantUsage("globex", open_sessions=1, open_tokens=999),
    )
    # A session in the table changes nothing: usage is the tenant table's.
    worker.put(make_session("a", initial=100, delta=10))
    status, usage = await checked_get(worker, "/tenants/acme/usage", "/tenants/{tenant_id}/usage")
    assert status == 200
    assert usage == {
        "tenant_id": "acme",
        "live_sessions": 2,
        "live_token_count": 110,
        "closures": {"closed": 2, "ttl_expired": 1},
        "period": this_month,
        "usage_tokens": 110 + 1018,
        "budget": None,
        "remaining_tokens": None,
        "state": "none",
    }
    status, empty = await checked_get(worker, "/tenants/nobody/usage", "/tenants/{tenant_id}/usage")
    assert status == 200 and empty["live_sessions"] == 0 and empty["usage_tokens"] == 0

    status, page = await checked_get(worker, "/tenants?limit=1")
    assert status == 200 and [t["tenant_id"] for t in page["tenants"]] == ["acme"] and page["tenants"][0] == usage
    status, page = await checked_get(worker, f"/tenants?cursor={page['next_cursor']}")
    assert [t["usage_tokens"] for t in page["tenants"]] == [999] and page["next_cursor"] is None


async def test_a_tenant_lookup_is_answered_by_the_owner_of_its_partition(workers) -> None:
    first, second = await two_workers(workers)
    owner = first if first.service.tenants.partition_of("acme") in first.owned else second
    owner.put_tenants(TenantUsage("acme", open_sessions=1, open_tokens=42))
    for worker in (first, second):
        status, usage = await checked_get(worker, "/tenants/acme/usage", "/tenants/{tenant_id}/usage")
        assert status == 200 and usage["usage_tokens"] == 42


@pytest.mark.parametrize("store", ["memory", pytest.param("rocksdb", marks=pytest.mark.skipif(
    importlib.util.find_spec("rocksdict") is None, reason="rocksdict not installed (extra: rocksdb)"))])
async def test_session_pages_read_the_store_in_order(workers, store: str) -> None:
    """Pages come from the store in session_id order, from the cursor on:
    every partition's, deleted sessions gone, ids that sort by code point
    (not by UTF-16 or locale)."""
    worker = await workers(store=store)
    ids = ["b", "a", "é", "z", "ab", "\U0001f600", "aa", "Z", "m-2", "m-10"]
    for number, session_id in enumerate(ids):
        worker.put(make_session(session_id, partition=number % PARTITIONS, activated=number % 3 != 0))
    worker.delete("z", ids.index("z") % PARTITIONS)
    expected = sorted(session_id for session_id in ids if session_id != "z")
    seen, cursor = [], None
    while True:
        status, page = await checked_get(worker, "/sessions?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                         "/sessions")
        assert status == 200 and len(page["sessions"]) <= 2
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    status, active = await checked_get(worker, "/sessions?state=active&limit=1000", "/sessions")
    assert [s["session_id"] for s in active["sessions"]] == [
        session_id for session_id in expected if ids.index(session_id) % 3 != 0]


async def test_the_publisher_reads_a_tenants_usage_over_http(workers) -> None:
    worker = await workers()
    now = time.time_ns() // 1000
    worker.put_tenants(TenantUsage("acme", open_sessions=1, open_tokens=42))
    worker.service.budget_written("acme", Budget(100, (0.5, 1.0), period_of(now), now))
    publisher = SessionPublisher("127.0.0.1:9", usage_url=worker.url)
    try:
        usage = await publisher.tenant_usage("acme")
        assert (usage["usage_tokens"], usage["remaining_tokens"], usage["state"]) == (42, 58, "ok")
        with pytest.raises(UsageUnavailable) as refused:
            await publisher.tenant_usage("t" * 129)
        assert refused.value.status == 400
    finally:
        await publisher.stop()


async def test_budget_requests_name_the_bad_field(workers) -> None:
    worker = await workers()
    assert worker.client is not None
    for body, field in [(b"{", "body"), (b"[]", "body"), (b'{"limit_tokens": 0}', "limit_tokens"),
                        (b'{"limit_tokens": 10, "thresholds": [0.5, 11]}', "thresholds")]:
        response = await worker.client.put("/tenants/acme/budget", data=body)
        answer = await response.json()
        assert response.status == 400 and answer["parameter"] == field, answer
    response = await worker.client.get("/tenants/acme/budget")
    assert response.status == 404 and (await response.json())["error"] == "not_found"


def producer_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process workers have no broker: their ingest producer, as if it had reached one."""
    monkeypatch.setattr(IngestProducer, "producer", property(lambda self: object()))


async def test_probes_stats_metrics_openapi_and_dashboard_answer(workers, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = await workers()
    worker.put(make_session("live"))
    worker.service.accountant.open_sessions[0] = 1
    assert (await checked_get(worker, "/healthz")) == (200, {"status": "ok"})
    # No broker at all: this worker cannot take POST /events.
    status, body = await checked_get(worker, "/readyz")
    assert (status, body["status"]) == (503, "starting")
    producer_started(monkeypatch)
    assert (await checked_get(worker, "/readyz")) == (200, {"status": "ready"})
    status, stats = await checked_get(worker, "/stats")
    assert status == 200 and stats["live_sessions"] == 1 and stats["workers"] == [worker.url]
    status, text, response = await worker.get("/metrics")
    assert status == 200 and response.content_type == "text/plain" and "accountant_live_sessions 1.0" in text
    status, text, response = await worker.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type == "application/openmetrics-text" and text.endswith("# EOF\n")
    status, page, response = await worker.get("/")
    assert status == 200 and response.content_type == "text/html" and "/static/dashboard.js" in page
    for asset in ("dashboard.js", "dashboard.css"):
        assert (await worker.get(f"/static/{asset}"))[0] == 200


async def test_readyz_stays_200_and_says_rebalancing_until_the_table_is_recovered(
        workers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest works during a rebalance: the load balancer must keep this
    worker (docs/operations.md, "Probes")."""
    producer_started(monkeypatch)
    worker = await workers()
    worker.service.accountant.recovered = False
    status, body = await checked_get(worker, "/readyz")
    assert (status, body["status"]) == (200, "rebalancing")
    # Nor does it answer for partitions it has not recovered.
    worker.put(make_session("s-1"))
    status, body = await checked_get(worker, "/sessions/s-1", "/sessions/{session_id}")
    assert status == 503 and body["error"] == "unavailable"


async def test_every_documented_path_is_served(workers, monkeypatch: pytest.MonkeyPatch) -> None:
    producer_started(monkeypatch)
    worker = await workers()
    worker.put(make_session("s-1"))
    worker.service.budget_written("acme", Budget(10, (1.0,), "2026-12", 0))
    _, document, _ = await worker.get("/openapi.json")
    assert worker.client is not None
    # Answered without a broker: a body every field of which is refused.
    refused = {"post": ({"type": "session.paused"}, 422), "put": ({"limit_tokens": 0}, 400)}
    for path, item in document["paths"].items():
        concrete = path.replace("{session_id}", "s-1").replace("{tenant_id}", "acme").replace("{name}", "event")
        for method in item:
            if method == "get":
                status, _, _ = await worker.get(concrete)
                assert status == 200, path
            elif method != "delete":  # needs the broker
                body, status = refused[method]
                response = await worker.client.request(method, concrete, json=body)
                assert response.status == status, (method, path)


# -- several workers ---------------------------------------------------------


async def two_workers(workers, **options) -> tuple[InProcessWorker, InProcessWorker]:
    first = await workers("first", owned={0, 1}, **options)
    second = await workers("second", owned={2, 3}, **options)
    form_group(first, second)
    return first, second


async def test_any_worker_answers_for_sessions_of_every_partition(workers) -> None:
    first, second = await two_workers(workers)
    sessions = [make_session(f"s-{n}", partition=n % PARTITIONS, initial=n) for n in range(12)]
    for session in sessions:
        (first if session.partition in first.owned else second).put(session)
    # A key the first worker still holds from a partition it gave away (the
    # memory store keeps it): never answered, the owner's newer record is.
    first.put(make_session("s-2", partition=2, initial=-1))

    for worker in (first, second):
        for session in sessions:
            status, body = await checked_get(worker, f"/sessions/{session.record.session_id}",
                                             "/sessions/{session_id}")
            assert status == 200 and body == session.record.to_view()
        status, page = await checked_get(worker, "/sessions?limit=5")
        seen = [s["session_id"] for s in page["sessions"]]
        while page["next_cursor"]:
            status, page = await checked_get(worker, f"/sessions?limit=5&cursor={page['next_cursor']}")
            seen += [s["session_id"] for s in page["sessions"]]
        assert seen == sorted(s.record.session_id for s in sessions)
        assert (await checked_get(worker, "/sessions/unknown", "/sessions/{session_id}"))[0] == 404


async def test_stats_add_up_over_the_workers(workers) -> None:
    first, second = await two_workers(workers)
    first.service.metrics.results["applied"] += 3
    second.service.metrics.results["applied"] += 4
    second.service.metrics.closures_by_reason["closed"] += 2
    status, stats = await checked_get(first, "/stats")
    assert status == 200 and stats["applied"] == 7 and stats["closures"] == {"closed": 2}
    assert sorted(stats["workers"]) == sorted([first.url, second.url]) and stats["unreachable"] == []


async def test_a_worker_that_does_not_answer_makes_lists_503_and_stats_name_it(workers) -> None:
    first, second = await two_workers(workers)
    first.put(make_session("s-0", partition=0))
    await second.stop()

    status, body = await checked_get(first, "/sessions")
    assert status == 503 and "[2, 3]" in body["detail"]
    # Found locally: no need to hear from the others.
    assert (await checked_get(first, "/sessions/s-0", "/sessions/{session_id}"))[0] == 200
    # Not found here, and the others could not say: unknown is not the same as absent.
    assert (await checked_get(first, "/sessions/s-9", "/sessions/{session_id}"))[0] == 503
    status, stats = await checked_get(first, "/stats")
    assert status == 200 and stats["unreachable"] == [second.url]


async def test_a_partition_answered_by_two_workers_is_refused(workers) -> None:
    first, second = await two_workers(workers)
    second.owned.add(1)  # both claim partition 1, as during a rebalance
    status, body = await checked_get(first, "/sessions")
    assert status == 503 and body["error"] == "unavailable"


# -- the API token -------------------------------------------------------------


async def test_with_a_token_every_path_but_the_probes_needs_it(workers) -> None:
    worker = await workers(api_token=TOKEN)
    worker.put(make_session("s-1"))
    for path in ("/sessions", "/sessions/s-1", "/tenants", "/tenants/acme/usage", "/stats", "/metrics",
                 "/openapi.json", "/static/dashboard.js", "/router/", "/nothing-here"):
        status, body, response = await worker.get(path)
        assert status == 401 and body["error"] == "unauthorized", path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        status, _, _ = await worker.get(path, headers={"Authorization": "Bearer wrong"})
        assert status == 401, path
    assert (await worker.get("/healthz"))[0] == 200
    # Answered without the token: its own state (no broker here), never 401.
    status, body, _ = await worker.get("/readyz")
    assert (status, body["status"]) == (503, "starting")

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await checked_get(worker, "/sessions/s-1", "/sessions/{session_id}", headers=bearer)
    assert status == 200 and body["session_id"] == "s-1"
    status, body = await checked_get(worker, "/sessions", headers=bearer)
    assert status == 200


async def test_the_dashboard_signs_in_with_a_posted_form_and_keeps_the_token_in_a_strict_cookie(workers) -> None:
    worker = await workers(api_token=TOKEN)
    assert worker.client is not None
    status, page, response = await worker.get("/")
    assert status == 401 and response.content_type == "text/html"
    assert '<form method="post" action="/login">' in page and 'name="token"' in page
    # A token in the address signs nobody in: it would sit in proxies' logs and the history.
    assert (await worker.get(f"/?token={TOKEN}"))[0] == 401
    response = await worker.client.post("/login", data={"token": "wrong"}, allow_redirects=False)
    assert response.status == 401 and "accountant_token" not in response.cookies

    response = await worker.client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"
    cookie = response.cookies["accountant_token"]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP: a Secure cookie would never come back
    # The test client keeps cookies like a browser: the page and its data now load.
    assert (await worker.get("/"))[0] == 200
    assert (await worker.get("/sessions"))[0] == 200

    behind_tls = await worker.client.post("/login", data={"token": TOKEN}, allow_redirects=False,
                                          headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.status == 303 and behind_tls.cookies["accountant_token"]["secure"]


async def test_workers_forward_with_the_peer_token_which_opens_nothing_else(workers) -> None:
    first, second = await two_workers(workers, api_token=TOKEN, peer_token=PEER_TOKEN)
    second.put(make_session("s-2", partition=2))
    status, body = await checked_get(first, "/sessions/s-2", "/sessions/{session_id}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["session_id"] == "s-2"
    peer = {"Authorization": f"Bearer {PEER_TOKEN}"}
    assert (await second.get("/sessions/s-2", headers=peer))[0] == 401
    assert (await second.get("/sessions/s-2", headers={**peer, "X-Accountant-Fanout": "1"}))[0] == 200


async def test_workers_pass_the_token_when_they_ask_each_other(workers) -> None:
    first, second = await two_workers(workers, api_token=TOKEN)
    second.put(make_session("s-2", partition=2))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await checked_get(first, "/sessions/s-2", "/sessions/{session_id}", headers=bearer)
    assert status == 200 and body["session_id"] == "s-2"
    status, page = await checked_get(first, "/sessions", headers=bearer)
    assert status == 200 and [s["session_id"] for s in page["sessions"]] == ["s-2"]
