"""The endpoints of SPEC §8 for one worker: JSON API, metrics, OpenAPI and the dashboard.

Each view answers from the sessions of this worker's active partitions and,
for lists and lookups, with the other workers' answers (`app.web.fanout`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client.exposition import choose_encoder

from app.rules import Session
from app.rules.usage import Budget, BudgetError, parse_budget, usage_view
from app.web.assets import static_file
from app.web.errors import ApiError, dumps, json_response
from app.web.fanout import (
    PARTITIONS_HEADER,
    PeerAnswer,
    Peers,
    add_counts,
    format_partitions,
    is_fanout,
    require_every_partition,
)
from app.web.health import liveness, readiness
from app.web.ingest_producer import IngestProducer
from app.web.openapi import build_openapi
from app.web.paging import decode_cursor, encode_cursor, merge_pages, page_after, page_in_order
from app.web.params import (
    DashboardParams,
    NoParams,
    P,
    SessionListParams,
    SessionParams,
    TenantListParams,
    TenantParams,
    parse,
)
from app.web.worker import Worker

__all__ = ["PAGE_READ_LIMIT", "Api", "LocalShard"]

#: Keys a /sessions page may read past those it shows (filtered out): a
#: sparse filter answers a short page, with a cursor to read on from.
PAGE_READ_LIMIT = 2000


def params(model: type[P], request: web.Request) -> P:
    return parse(model, request.path, request.query, request.match_info)


# --------------------------------------------------------------------------
# What this worker holds


class LocalShard:
    """The sessions this worker answers for: those of its active partitions,
    once the table is recovered. The store can hold keys of other partitions
    (standby replicas, and memory-store keys left over from a rebalance), so
    every read checks the session's partition."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def ready(self) -> bool:
        return self.worker.ready()

    def partitions(self) -> frozenset[int]:
        if not self.ready():
            return frozenset()
        return frozenset(self.worker.active_partitions())

    def tenant_partitions(self) -> frozenset[int]:
        if not self.ready():
            return frozenset()
        return frozenset(self.worker.tenant_partitions())

    def get(self, session_id: str, partitions: frozenset[int]) -> Session | None:
        session = self.worker.stored_session(session_id)
        return session if session is not None and session.partition in partitions else None


# --------------------------------------------------------------------------
# The views


class Api:
    """The endpoints of SPEC §8 for one worker."""

    def __init__(self, worker: Worker, ingest: IngestProducer) -> None:
        self.worker = worker
        #: The web server's producer: `POST /events`, and budgets.
        self.ingest = ingest
        self.settings = worker.settings
        self.local = LocalShard(worker)
        self.peers = Peers(worker)
        self.openapi = dumps(build_openapi(token_required=bool(worker.settings.api_token)))
        self.dashboard = static_file("index.html")

    async def healthz(self, request: web.Request) -> web.Response:
        params(NoParams, request)
        status, body = liveness(self.worker.stalled_seconds(), self.ingest.answering_secs(),
                                self.settings.stall_timeout_secs)
        return json_response(body, status)

    async def readyz(self, request: web.Request) -> web.Response:
        params(NoParams, request)
        status, body = readiness(self.ingest.producer is not None, self.ingest.silent_secs(),
                                 self.settings.ingest_broker_unreachable_secs, not self.local.ready())
        return json_response(body, status)

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = params(SessionParams, request).session_id
        own = self.local.partitions()
        session = self.local.get(session_id, own)
        if session is not None:
            return json_response(session.record.to_view())
        detail = f"no session {session_id!r} (never seen, or purged after retention)"
        found, misses = await self._from_a_peer(request, own, detail)
        if found is not None:
            return found
        require_every_partition(self.settings.partitions, [own, *(miss.partitions for miss in misses)])
        raise ApiError(404, "not_found", detail)

    async def _from_a_peer(self, request: web.Request, own: frozenset[int],
                           detail: str) -> tuple[web.Response | None, list[PeerAnswer]]:
        """A key this worker does not hold: a peer that asked is answered 404
        with the partitions this worker covers; a client's request gets the
        first peer's 200, else None, with the peers' other answers."""
        if is_fanout(request):
            raise ApiError(404, "not_found", detail, headers={PARTITIONS_HEADER: format_partitions(own)})
        found, misses = await self.peers.find(request)
        return (None if found is None else web.Response(body=found.body, content_type="application/json")), misses

    async def list_sessions(self, request: web.Request) -> web.Response:
        """Read in session_id order from the cursor on: a page costs what it
        reads (at most the page and PAGE_READ_LIMIT keys the filters leave
        out), never a sort of the table."""
        query = params(SessionListParams, request)
        states = frozenset(query.state) if query.state is not None else None
        own = self.local.partitions()

        def judged() -> Iterator[tuple[str, Session | None]]:
            for session_id, state in self.worker.stored_items_after(own, query.cursor):
                shown = (isinstance(state, Session)
                         and (query.tenant_id is None or state.record.tenant_id == query.tenant_id)
                         and (states is None or state.state in states))
                yield session_id, state if shown else None

        sessions, next_key = page_in_order(judged(), query.limit, PAGE_READ_LIMIT)
        local_page = {
            "sessions": [session.record.to_view() for session in sessions],
            "next_cursor": None if next_key is None else encode_cursor(next_key),
        }

        def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            items, cursor = merge_pages(_pages(bodies, "sessions"), "session_id", query.limit,
                                        combine=lambda first, _: first)
            return {"sessions": items, "next_cursor": cursor}

        return await self.peers.across_workers(request, own, local_page, merge)

    async def list_tenants(self, request: web.Request) -> web.Response:
        """Every tenant's usage from the tenant table: each tenant lives on
        one partition, so the workers' pages merge without combining."""
        query = params(TenantListParams, request)
        own = self.local.tenant_partitions()
        now = now_micros()
        states = ((state.tenant_id, state) for state in self.worker.tenants_in(own))
        tenants, next_key = page_after(states, query.cursor, query.limit)
        local_page = {
            "tenants": [usage_view(state.tenant_id, state, self.worker.budget(state.tenant_id), now)
                        for state in tenants],
            "next_cursor": None if next_key is None else encode_cursor(next_key),
        }

        def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            items, cursor = merge_pages(_pages(bodies, "tenants"), "tenant_id", query.limit,
                                        combine=lambda first, _: first)
            return {"tenants": items, "next_cursor": cursor}

        return await self.peers.across_workers(request, own, local_page, merge)

    async def tenant_usage(self, request: web.Request) -> web.Response:
        """From the tenant's state on the worker that owns its partition of
        the tenant table: the cost of one lookup, whatever the sessions."""
        tenant_id = params(TenantParams, request).tenant_id
        partition = self.worker.tenant_partition(tenant_id)
        own = self.local.tenant_partitions()
        if partition in own:
            state = self.worker.tenant_usage(tenant_id)
            return json_response(usage_view(tenant_id, state, self.worker.budget(tenant_id), now_micros()))
        detail = f"tenant {tenant_id!r} is on partition {partition} of the tenant table, not served here"
        found, _ = await self._from_a_peer(request, own, detail)
        if found is not None:
            return found
        raise ApiError(503, "unavailable", f"{detail} nor by another worker right now (a rebalance, or a worker "
                       "is down); retry shortly", headers={"Retry-After": "1"})

    async def get_budget(self, request: web.Request) -> web.Response:
        tenant_id = params(TenantParams, request).tenant_id
        budget = self.worker.budget(tenant_id)
        if budget is None:
            raise ApiError(404, "not_found", f"tenant {tenant_id!r} has no budget")
        return json_response(budget.to_json())

    async def put_budget(self, request: web.Request) -> web.Response:
        """Stored in the budgets topic before the answer (SPEC §9)."""
        tenant_id = params(TenantParams, request).tenant_id
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad_request", "the body is not JSON", parameter="body") from None
        try:
            budget = parse_budget(body, now_micros())
        except BudgetError as error:
            raise ApiError(400, "bad_request", str(error), parameter=error.field) from None
        await self._store_budget(tenant_id, budget)
        return json_response(budget.to_json())

    async def delete_budget(self, request: web.Request) -> web.Response:
        tenant_id = params(TenantParams, request).tenant_id
        await self._store_budget(tenant_id, None)
        return web.Response(status=204)

    async def _store_budget(self, tenant_id: str, budget: Budget | None) -> None:
        producer = self.ingest.producer
        if producer is None:
            raise ApiError(503, "unavailable", "the producer has not reached the broker yet; the budget was not "
                           "stored; retry", headers={"Retry-After": "1"})
        try:
            await producer.send_and_wait(self.settings.budgets_topic, key=tenant_id.encode("utf-8"),
                                         value=None if budget is None else orjson.dumps(budget.to_json()))
        except KafkaError as error:
            raise ApiError(503, "unavailable", f"the budget could not be stored ({error!r}); retry",
                           headers={"Retry-After": "1"}) from None
        self.ingest.reached()
        self.worker.budget_written(tenant_id, budget)

    async def stats(self, request: web.Request) -> web.Response:
        params(NoParams, request)
        local = {
            **self.worker.metrics.snapshot(),
            "live_sessions": self.worker.live_sessions(),
            "workers": [self.peers.own_url],
            "unreachable": [],
        }
        if is_fanout(request):
            return json_response(local)
        # Counters belong to processes, not partitions: a worker that does not
        # answer is listed, and the others' counts are still worth showing.
        total = local
        for answer in await self.peers.ask_all(request):
            if answer.status == 200:
                total = add_counts(total, json.loads(answer.body))
            else:
                total["unreachable"] = [*total["unreachable"], answer.url]
        return json_response(total)

    async def metrics(self, request: web.Request) -> web.Response:
        params(NoParams, request)
        # The scraper's Accept header picks the format (Prometheus text or OpenMetrics).
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.worker.metrics.registry), headers={"Content-Type": content_type})

    async def openapi_document(self, request: web.Request) -> web.Response:
        params(NoParams, request)
        return web.Response(body=self.openapi, content_type="application/json")

    async def dashboard_page(self, request: web.Request) -> web.Response:
        params(DashboardParams, request)  # the token itself was checked by the middleware
        return web.Response(body=self.dashboard, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})


def _pages(bodies: list[dict[str, Any]], field: str) -> list[tuple[list[Any], bytes | None]]:
    """The workers' pages: their items and where each would continue."""
    return [(body[field], None if body["next_cursor"] is None else decode_cursor(body["next_cursor"]))
            for body in bodies]


def now_micros() -> int:
    return time.time_ns() // 1000
