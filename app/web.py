"""HTTP views on the Faust web server (SPEC §8): JSON API, metrics, OpenAPI and the dashboard.

Any worker answers any request. A session lives in the table partition of the
input partition its events arrived on; gateways may partition with CRC32
(librdkafka) while Faust's `table_route` hashes keys with murmur2, so routing
by key hash can ask the wrong worker. Instead each worker answers from its own
active partitions and, unless a peer asked it, also asks every other worker of
the group (the fan-out, marked with `X-Accountant-Fanout` so it never loops)
and merges the answers. Each worker says which partitions it answered for
(`X-Accountant-Partitions`); a merged answer that does not cover every
partition exactly once is refused with 503 rather than passed off as complete.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import hmac
import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from yarl import URL

from app.openapi import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT, TenantUsage, build_openapi
from app.rules import MAX_ID_CHARS, CloseReason, Session, State

if TYPE_CHECKING:
    from app.service import Service

log = logging.getLogger(__name__)

#: Marks a request one worker sends another: answer from local partitions only.
FANOUT_HEADER = "X-Accountant-Fanout"
#: On fan-out answers: the partitions the answer covers, comma separated.
PARTITIONS_HEADER = "X-Accountant-Partitions"
#: Set by the dashboard's `/?token=` sign-in, so the page's own requests carry the token.
TOKEN_COOKIE = "accountant_token"
#: Probes answer without the token: they must not need a secret.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: A peer slower than this is left out (lists then answer 503): a page must not hang.
PEER_TIMEOUT = aiohttp.ClientTimeout(total=3)

T = TypeVar("T")


# --------------------------------------------------------------------------
# Responses and errors


def _dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        # orjson stops at 64-bit integers; token sums over many sessions may not.
        return json.dumps(body).encode("utf-8")


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=_dumps(body), status=status, content_type="application/json", headers=headers)


class ApiError(Exception):
    """An answer other than 200, as JSON `{"error", "detail"[, "parameter"]}`."""

    def __init__(self, status: int, error: str, detail: str, *, parameter: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "detail": detail} | ({"parameter": parameter} if parameter is not None else {})
        self.headers = headers

    def response(self) -> web.Response:
        return json_response(self.body, self.status, self.headers)


def bad_parameter(name: str, problem: str) -> ApiError:
    return ApiError(400, "bad_request", f"parameter '{name}' {problem}", parameter=name)


# --------------------------------------------------------------------------
# Request parameters


def query_params(request: web.Request, known: Collection[str]) -> dict[str, str]:
    """The query parameters, each at most once. An unknown one is refused:
    a misspelt filter would otherwise silently answer with everything."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise bad_parameter(name, f"is not a parameter of {request.path} (expected: {expected})")
        if name in params:
            raise bad_parameter(name, "is given more than once")
        params[name] = value
    return params


def identifier(name: str, value: str) -> str:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise bad_parameter(name, f"must be 1..{MAX_ID_CHARS} characters")
    return value


def page_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # ASCII digits only: int() would also take " 7", "1_0" and other scripts' digits,
    # and refuses thousands of digits with an error of its own.
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_LIMIT))
    limit = int(value) if digits else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_parameter("limit", f"must be an integer in 1..{MAX_LIMIT}")
    return limit


def state_filter(value: str | None) -> frozenset[State] | None:
    if value is None:
        return None
    try:
        return frozenset(State(part) for part in value.split(","))
    except ValueError:
        raise bad_parameter("state", "must be a comma-separated list of pending, active, closed") from None


def encode_cursor(key: str) -> str:
    """The cursor after `key`: opaque to clients, the key's UTF-8 bytes to us."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_cursor(value: str | None) -> bytes | None:
    """A position in key order. Any bytes are one, so every well-formed cursor is valid."""
    if value is None:
        return None
    if not value or not CURSOR_PATTERN.fullmatch(value):
        raise bad_parameter("cursor", "is not a cursor this API gave out")
    return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_")


# --------------------------------------------------------------------------
# Paging: stable by key order, merged over the workers


def page_after(items: Iterable[tuple[str, T]], after: bytes | None, limit: int) -> tuple[list[T], bool]:
    """The first `limit` items whose key sorts after `after`, and whether more follow.

    Keys sort as Python strings, by code point, which is also the order of
    their UTF-8 bytes; so a cursor stays valid while records come and go: a
    page never repeats an item, and never skips one that existed throughout.
    """
    candidates = ((key, item) for key, item in items if after is None or key.encode("utf-8") > after)
    first = heapq.nsmallest(limit + 1, candidates, key=itemgetter(0))
    return [item for _, item in first[:limit]], len(first) > limit


def merge_pages(pages: list[tuple[list[dict], bool]], key: str, limit: int,
                combine: Callable[[dict, dict], dict]) -> tuple[list[dict], str | None]:
    """Merge the workers' pages into one; returns the items and the next cursor.

    Each worker gave its first `limit` items after the cursor, so the first
    `limit` of the union are the first `limit` overall. Items with the same
    key (one tenant on several workers) are combined.
    """
    by_key: dict[str, dict] = {}
    for items, _ in pages:
        for item in items:
            name = item[key]
            by_key[name] = combine(by_key[name], item) if name in by_key else item
    ordered = sorted(by_key)
    chosen = ordered[:limit]
    has_more = len(ordered) > limit or any(shard_has_more for _, shard_has_more in pages)
    return [by_key[name] for name in chosen], encode_cursor(chosen[-1]) if has_more and chosen else None


def add_counts(total: dict, part: dict, keep: Collection[str] = ()) -> dict:
    """`total` plus `part`, field by field: numbers add up, dicts recursively,
    lists concatenate; the `keep` fields and anything else stay as in `total`."""
    result = dict(total)
    for name, value in part.items():
        if name in keep or name not in result:
            result.setdefault(name, value)
        elif isinstance(value, dict):
            result[name] = add_counts(result[name], value)
        elif isinstance(value, (int, float, list)) and not isinstance(value, bool):
            result[name] = result[name] + value
    return result


# --------------------------------------------------------------------------
# What this worker holds


def empty_usage(tenant_id: str, retention_secs: float) -> TenantUsage:
    return {
        "tenant_id": tenant_id,
        "live_sessions": 0,
        "sessions": {state.value: 0 for state in State},
        "total_token_count": 0,
        "live_token_count": 0,
        "closures": {reason.value: 0 for reason in CloseReason},
        "retention_secs": retention_secs,
    }


def count_usage(usage: TenantUsage, session: Session) -> None:
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

    def __init__(self, service: "Service") -> None:
        self.service = service

    def ready(self) -> bool:
        return self.service.accountant.recovered and not self.service.app.rebalancing

    def partitions(self) -> frozenset[int]:
        if not self.ready():
            return frozenset()
        return frozenset(self.service.accountant.active_partitions())

    def sessions(self, partitions: frozenset[int]) -> Iterator[Session]:
        for session in self.service.table.values():
            if session is not None and session.partition in partitions:
                yield session

    def get(self, session_id: str, partitions: frozenset[int]) -> Session | None:
        session = self.service.table.get(session_id)
        return session if session is not None and session.partition in partitions else None


# --------------------------------------------------------------------------
# The other workers


@dataclass(frozen=True)
class PeerAnswer:
    url: str
    status: int | None  # None: no answer in time
    body: bytes
    partitions: frozenset[int]  # the partitions a 200 or 404 answer covers


def format_partitions(partitions: Iterable[int]) -> str:
    return ",".join(str(partition) for partition in sorted(partitions))


def parse_partitions(value: str | None) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in value.split(",") if part) if value else frozenset()
    except ValueError:
        return frozenset()


def is_fanout(request: web.Request) -> bool:
    return FANOUT_HEADER in request.headers


class Peers:
    """The other workers of the group, from the partition assignor's metadata
    (every member advertises its web address, Faust's `canonical_url`)."""

    def __init__(self, service: "Service") -> None:
        self.service = service
        self.own_url = str(service.app.conf.canonical_url)

    def urls(self) -> list[str]:
        own = _origin(self.own_url)
        return sorted(url for url in self.service.app.assignor.tables_metadata() if _origin(url) != own)

    async def ask_all(self, request: web.Request) -> list[PeerAnswer]:
        return list(await asyncio.gather(*(self._ask(url, request) for url in self.urls())))

    async def find(self, request: web.Request) -> tuple[PeerAnswer | None, list[PeerAnswer]]:
        """The first peer answer that is a 200, and the others received until then."""
        pending = [asyncio.ensure_future(self._ask(url, request)) for url in self.urls()]
        misses: list[PeerAnswer] = []
        try:
            for next_answer in asyncio.as_completed(pending):
                answer = await next_answer
                if answer.status == 200:
                    return answer, misses
                misses.append(answer)
            return None, misses
        finally:
            for task in pending:
                task.cancel()

    async def _ask(self, url: str, request: web.Request) -> PeerAnswer:
        # raw_path keeps the client's encoding (a '%2F' in a session id stays one segment).
        target = URL(url.rstrip("/") + request.raw_path, encoded=True)
        headers = {FANOUT_HEADER: "1"}
        if self.service.settings.api_token:
            headers["Authorization"] = f"Bearer {self.service.settings.api_token}"
        try:
            async with self.service.app.http_client.get(target, headers=headers, timeout=PEER_TIMEOUT) as response:
                body = await response.read()
                status = response.status
                covered = parse_partitions(response.headers.get(PARTITIONS_HEADER))
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("worker %s did not answer %s: %r", url, request.path, error)
            return PeerAnswer(url, None, b"", frozenset())
        return PeerAnswer(url, status, body, covered if status in (200, 404) else frozenset())


def _origin(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or 80


def require_every_partition(partitions: int, covered: list[frozenset[int]]) -> None:
    """Refuse an answer that misses a partition or counts one twice."""
    union = frozenset().union(*covered)
    missing = sorted(set(range(partitions)) - union)
    if missing:
        raise ApiError(503, "unavailable",
                       f"partitions {missing} are not served right now (a rebalance, or a worker is down); "
                       "retry shortly", headers={"Retry-After": "1"})
    if sum(len(part) for part in covered) != len(union):
        raise ApiError(503, "unavailable", "two workers answered for one partition (a rebalance); retry shortly",
                       headers={"Retry-After": "1"})


# --------------------------------------------------------------------------
# The views


class Api:
    """The endpoints of SPEC §8 for one worker."""

    def __init__(self, service: "Service") -> None:
        self.service = service
        self.settings = service.settings
        self.local = LocalShard(service)
        self.peers = Peers(service)
        self.openapi = _dumps(build_openapi(token_required=bool(service.settings.api_token)))
        self.dashboard = static_file("index.html")

    async def healthz(self, request: web.Request) -> web.Response:
        query_params(request, ())
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        query_params(request, ())
        ready = self.local.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def get_session(self, request: web.Request) -> web.Response:
        query_params(request, ())
        session_id = identifier("session_id", request.match_info["session_id"])
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
        params = query_params(request, ("tenant_id", "state", "limit", "cursor"))
        tenant_id = identifier("tenant_id", params["tenant_id"]) if "tenant_id" in params else None
        states = state_filter(params.get("state"))
        limit = page_limit(params.get("limit"))
        after = decode_cursor(params.get("cursor"))
        own = self.local.partitions()
        matching = (
            (session.record.session_id, session) for session in self.local.sessions(own)
            if (tenant_id is None or session.record.tenant_id == tenant_id)
            and (states is None or session.state in states)
        )
        sessions, more = page_after(matching, after, limit)
        local_page = {
            "sessions": [session.record.to_view() for session in sessions],
            "next_cursor": encode_cursor(sessions[-1].record.session_id) if more else None,
        }

        def merge(bodies: list[dict]) -> dict:
            pages = [(body["sessions"], body["next_cursor"] is not None) for body in bodies]
            items, cursor = merge_pages(pages, "session_id", limit, combine=lambda first, _: first)
            return {"sessions": items, "next_cursor": cursor}

        return await self._across_workers(request, own, local_page, merge)

    async def list_tenants(self, request: web.Request) -> web.Response:
        params = query_params(request, ("limit", "cursor"))
        limit = page_limit(params.get("limit"))
        after = decode_cursor(params.get("cursor"))
        own = self.local.partitions()
        usages: dict[str, TenantUsage] = {}
        for session in self.local.sessions(own):
            tenant_id = session.record.tenant_id
            if tenant_id not in usages:
                usages[tenant_id] = empty_usage(tenant_id, self.settings.retention_secs)
            count_usage(usages[tenant_id], session)
        tenants, more = page_after(usages.items(), after, limit)
        local_page = {"tenants": tenants, "next_cursor": encode_cursor(tenants[-1]["tenant_id"]) if more else None}

        def merge(bodies: list[dict]) -> dict:
            pages = [(body["tenants"], body["next_cursor"] is not None) for body in bodies]
            items, cursor = merge_pages(pages, "tenant_id", limit, combine=_add_usage)
            return {"tenants": items, "next_cursor": cursor}

        return await self._across_workers(request, own, local_page, merge)

    async def tenant_usage(self, request: web.Request) -> web.Response:
        query_params(request, ())
        tenant_id = identifier("tenant_id", request.match_info["tenant_id"])
        own = self.local.partitions()
        usage = empty_usage(tenant_id, self.settings.retention_secs)
        for session in self.local.sessions(own):
            if session.record.tenant_id == tenant_id:
                count_usage(usage, session)

        def merge(bodies: list[dict]) -> dict:
            total = bodies[0]
            for body in bodies[1:]:
                total = _add_usage(total, body)
            return total

        return await self._across_workers(request, own, usage, merge)

    async def stats(self, request: web.Request) -> web.Response:
        query_params(request, ())
        local = {
            **self.service.metrics.snapshot(),
            "live_sessions": sum(self.service.accountant.open_sessions.values()),
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
        query_params(request, ())
        # The scraper's Accept header picks the format (Prometheus text or OpenMetrics).
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.service.metrics.registry), headers={"Content-Type": content_type})

    async def openapi_document(self, request: web.Request) -> web.Response:
        query_params(request, ())
        return web.Response(body=self.openapi, content_type="application/json")

    async def dashboard_page(self, request: web.Request) -> web.Response:
        query_params(request, ("token",))  # the token itself was checked by the middleware
        return web.Response(body=self.dashboard, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _across_workers(self, request: web.Request, own: frozenset[int], local: Any,
                              merge: Callable[[list[Any]], Any]) -> web.Response:
        """Answer with the local part alone when a peer asked, else merged with every peer's part."""
        if is_fanout(request):
            return json_response(local, headers={PARTITIONS_HEADER: format_partitions(own)})
        answers = [answer for answer in await self.peers.ask_all(request) if answer.status == 200]
        require_every_partition(self.settings.partitions, [own, *(answer.partitions for answer in answers)])
        return json_response(merge([local, *(json.loads(answer.body) for answer in answers)]))


def _add_usage(total: dict, part: dict) -> dict:
    return add_counts(total, part, keep=("tenant_id", "retention_secs"))


# --------------------------------------------------------------------------
# Middleware: the API token, and JSON for every error


def static_file(name: str) -> bytes:
    return resources.files("app").joinpath("static", name).read_bytes()


@web.middleware
async def json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every error as JSON `{"error", "detail"}`; an unexpected one is logged and answers 500."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise  # redirects
        name = (error.reason or "error").lower().replace(" ", "_")
        headers = {key: value for key, value in error.headers.items() if key.lower() == "allow"}
        return json_response({"error": name, "detail": f"{request.method} {request.path}: {error.reason}"},
                             error.status, headers)
    except Exception:
        log.exception("failed to answer %s %s", request.method, request.path_qs)
        return json_response({"error": "internal_error", "detail": "the worker failed on this request; see its log"},
                             500)


def token_middleware(token: str) -> Callable:
    """Every path but the probes needs `Authorization: Bearer <token>` (or the
    dashboard's cookie). `/?token=` signs a browser in: the token moves into
    an HttpOnly cookie and the address bar loses it."""
    expected = token.encode("utf-8")
    login_page = static_file("login.html")

    def matches(offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode("utf-8"), expected)

    @web.middleware
    async def require_token(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and matches(credentials.strip())) or matches(request.cookies.get(TOKEN_COOKIE)):
            return await handler(request)
        if request.path == "/":
            if matches(request.query.get("token")):
                signed_in = web.HTTPSeeOther("/")
                signed_in.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
                raise signed_in
            return web.Response(body=login_page, status=401, content_type="text/html", charset="utf-8")
        raise ApiError(401, "unauthorized", "this API needs the token: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})

    return require_token


def register_views(service: "Service") -> None:
    app = service.app
    api = Api(service)
    routes: dict[str, Callable] = {
        "/": api.dashboard_page,
        "/healthz": api.healthz,
        "/readyz": api.readyz,
        "/sessions": api.list_sessions,
        "/sessions/{session_id}": api.get_session,
        "/tenants": api.list_tenants,
        "/tenants/{tenant_id}/usage": api.tenant_usage,
        "/stats": api.stats,
        "/metrics": api.metrics,
        "/openapi.json": api.openapi_document,
    }
    for path, handler in routes.items():
        app.page(path, name=handler.__name__)(_faust_handler(handler))
    app.web.add_static("/static/", str(resources.files("app").joinpath("static")))
    middlewares = app.web.web_app.middlewares
    middlewares.append(json_errors)  # outermost: also turns a 401 into JSON
    if service.settings.api_token:
        middlewares.append(token_middleware(service.settings.api_token))


def _faust_handler(handler: Callable) -> Callable:
    """Faust calls a page's function with its View first; ours need the request only."""

    async def get(view: Any, request: web.Request, **match_info: str) -> web.StreamResponse:
        return await handler(request)

    get.__name__ = handler.__name__
    return get
