"""Asking the other workers, and merging their answers.

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
import json
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from app.web.errors import ApiError, json_response
from app.web.worker import Worker

__all__ = [
    "FANOUT_HEADER", "PARTITIONS_HEADER", "PEER_TIMEOUT", "PeerAnswer", "Peers", "add_counts", "format_partitions",
    "is_fanout", "parse_partitions", "require_every_partition",
]

log = logging.getLogger(__name__)

#: Marks a request one worker sends another: answer from local partitions only.
FANOUT_HEADER = "X-Accountant-Fanout"
#: On fan-out answers: the partitions the answer covers, comma separated.
PARTITIONS_HEADER = "X-Accountant-Partitions"
#: A peer slower than this is left out (lists then answer 503): a page must not hang.
PEER_TIMEOUT = aiohttp.ClientTimeout(total=3)


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


def require_every_partition(partitions: int, covered: list[frozenset[int]]) -> None:
    """Refuse an answer that misses a partition or counts one twice."""
    union: frozenset[int] = frozenset().union(*covered)
    missing = sorted(set(range(partitions)) - union)
    if missing:
        raise ApiError(503, "unavailable",
                       f"partitions {missing} are not served right now (a rebalance, or a worker is down); "
                       "retry shortly", headers={"Retry-After": "1"})
    if sum(len(part) for part in covered) != len(union):
        raise ApiError(503, "unavailable", "two workers answered for one partition (a rebalance); retry shortly",
                       headers={"Retry-After": "1"})


def add_counts(total: dict[str, Any], part: dict[str, Any], keep: Collection[str] = ()) -> dict[str, Any]:
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


class Peers:
    """The other workers of the group, from the partition assignor's metadata
    (every member advertises its web address, Faust's `canonical_url`)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.own_url = worker.own_url()

    def urls(self) -> list[str]:
        own = _origin(self.own_url)
        return sorted(url for url in self.worker.member_urls() if _origin(url) != own)

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

    async def across_workers(self, request: web.Request, own: frozenset[int], local: Any,
                             merge: Callable[[list[Any]], Any]) -> web.Response:
        """Answer with the local part alone when a peer asked, else merged with every peer's part."""
        if is_fanout(request):
            return json_response(local, headers={PARTITIONS_HEADER: format_partitions(own)})
        answers = [answer for answer in await self.ask_all(request) if answer.status == 200]
        require_every_partition(self.worker.settings.partitions, [own, *(answer.partitions for answer in answers)])
        return json_response(merge([local, *(json.loads(answer.body) for answer in answers)]))

    async def _ask(self, url: str, request: web.Request) -> PeerAnswer:
        # raw_path keeps the client's encoding (a '%2F' in a session id stays one segment).
        target = URL(url.rstrip("/") + request.raw_path, encoded=True)
        headers = {FANOUT_HEADER: "1"}
        settings = self.worker.settings
        token = settings.peer_token.get_secret_value() or settings.api_token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.worker.http_client().get(target, headers=headers, timeout=PEER_TIMEOUT) as response:
                body = await response.read()
                status = response.status
                covered = parse_partitions(response.headers.get(PARTITIONS_HEADER))
        except (TimeoutError, aiohttp.ClientError) as error:
            log.warning("worker %s did not answer %s: %r", url, request.path, error)
            return PeerAnswer(url, None, b"", frozenset())
        return PeerAnswer(url, status, body, covered if status in (200, 404) else frozenset())


def _origin(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or 80
