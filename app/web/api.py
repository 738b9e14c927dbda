"""The endpoints of SPEC §8 for one worker: JSON API, metrics, OpenAPI and the dashboard.

Each view answers from the sessions of this worker's active partitions and,
for lists and lookups, with the other workers' answers (`app.web.fanout`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from app.rules import CloseReason, Session, State
from app.web.assets import static_file
from app.web.errors import ApiError, dumps, json_response
from app.web.fanout import PARTITIONS_HEADER, Peers, add_counts, format_partitions, is_fanout, require_every_partition
from app.web.health import liveness, readiness
from app.web.ingest_producer import IngestProducer
from app.web.openapi import build_openapi
from app.web.paging import encode_cursor, merge_pages, page_after
from app.web.params import (
    DashboardParams,
    NoParams,
    P,
    SessionListParams,
    SessionParams,
    TenantListParams,
    TenantUsageParams,
    parse,
)
from app.web.worker import Worker

__all__ = ["Api", "LocalShard", "count_usage", "empty_usage"]


#: A tenant's usage as JSON (the shape is `app.web.openapi.TenantUsage`).
Usage = dict[str, Any]


def params(model: type[P], request: web.Request) -> P:
    return parse(model, request.path, request.query, request.match_info)


# --------------------------------------------------------------------------
# What this worker holds


def empty_usage(tenant_id: str, retention_secs: float) -> Usage:
    return {
        "tenant_id": tenant_id,
        "live_sessions": 0,
        "sessions": {state.value: 0 for state in State},
        "total_token_count": 0,
        "live_token_count": 0,
        "closures": {reason.value: 0 for reason in CloseReason},
        "retention_secs": retention_secs,
    }


def count_usage(usage: Usage, session: Session) -> None:
    tokens = session.record.total_token_count
    usage["sessions"][session.state.value] += 1
    usage["total_token_count"] += tokens
    if session.close_reason is None:
        usage["live_sessions"] += 1
        usage["live_token_count"] += tokens
    else:
        usage["closures"][session.close_reason.value] += 1


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

    def sessions(self, partitions: frozenset[int]) -> Iterator[Session]:
        for session in self.worker.stored_sessions():
            if session.partition in partitions:
                yield session

    def get(self, session_id: str, partitions: frozenset[int]) -> Session | None:
        session = self.worker.stored_session(session_id)
        return session if session is not None and session.partition in partitions else None


# --------------------------------------------------------------------------
# The views


class Api:
    """The endpoints of SPEC §8 for one worker."""

    def __init__(self, worker: Worker, ingest: IngestProducer) -> None:
        self.worker = worker
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
        if is_fanout(request):
            raise ApiError(404, "not_found", detail, headers={PARTITIONS_HEADER: format_partitions(own)})
        found, misses = await self.peers.find(request)
        if found is not None:
            return web.Response(body=found.body, content_type="application/json")
        require_every_partition(self.settings.partitions, [own, *(miss.partitions for miss in misses)])
        raise ApiError(404, "not_found", detail)

    async def list_sessions(self, request: web.Request) -> web.Response:
        query = params(SessionListParams, request)
        states = frozenset(query.state) if query.state is not None else None
        own = self.local.partitions()
        matching = (
            (session.record.session_id, session) for session in self.local.sessions(own)
            if (query.tenant_id is None or session.record.tenant_id == query.tenant_id)
            and (states is None or session.state in states)
        )
        sessions, more = page_after(matching, query.cursor, query.limit)
        local_page = {
            "sessions": [session.record.to_view() for session in sessions],
            "next_cursor": encode_cursor(sessions[-1].record.session_id) if more else None,
        }

        def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            pages = [(body["sessions"], body["next_cursor"] is not None) for body in bodies]
            items, cursor = merge_pages(pages, "session_id", query.limit, combine=lambda first, _: first)
            return {"sessions": items, "next_cursor": cursor}

        return await self.peers.across_workers(request, own, local_page, merge)

    async def list_tenants(self, request: web.Request) -> web.Response:
        query = params(TenantListParams, request)
        own = self.local.partitions()
        usages: dict[str, Usage] = {}
        for session in self.local.sessions(own):
            tenant_id = session.record.tenant_id
            if tenant_id not in usages:
                usages[tenant_id] = empty_usage(tenant_id, self.settings.retention_secs)
            count_usage(usages[tenant_id], session)
        tenants, more = page_after(usages.items(), query.cursor, query.limit)
        local_page = {"tenants": tenants, "next_cursor": encode_cursor(tenants[-1]["tenant_id"]) if more else None}

        def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            pages = [(body["tenants"], body["next_cursor"] is not None) for body in bodies]
            items, cursor = merge_pages(pages, "tenant_id", query.limit, combine=_add_usage)
            return {"tenants": items, "next_cursor": cursor}

        return await self.peers.across_workers(request, own, local_page, merge)

    async def tenant_usage(self, request: web.Request) -> web.Response:
        tenant_id = params(TenantUsageParams, request).tenant_id
        own = self.local.partitions()
        usage = empty_usage(tenant_id, self.settings.retention_secs)
        for session in self.local.sessions(own):
            if session.record.tenant_id == tenant_id:
                count_usage(usage, session)

        def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            total = bodies[0]
            for body in bodies[1:]:
                total = _add_usage(total, body)
            return total

        return await self.peers.across_workers(request, own, usage, merge)

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


def _add_usage(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    return add_counts(total, part, keep=("tenant_id", "retention_secs"))
