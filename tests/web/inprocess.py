"""Workers whose web views run in-process, over a table the test fills: no broker.

`build_app` gives the real app with its real views and middleware; the test
stands in for what Kafka would decide: the table's content, which partitions
this worker owns, and which workers are in the group.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from app.dev.processes import pick_free_loopback_port
from app.rules import SECOND, CloseReason, Session, SessionRecord, encode_state, parse_timestamp
from app.rules.usage import TenantUsage
from app.service import Service, build_app
from app.settings import load_settings

T0 = parse_timestamp("2026-01-05T10:00:00Z")
PARTITIONS = 4


def make_session(session_id: str, *, tenant: str = "acme", partition: int = 0, activated: bool = True,
                 close: CloseReason | None = None, initial: int = 100, delta: int = 20, rounds: int = 2,
                 ttl_secs: int = 600) -> Session:
    record = SessionRecord(
        session_id=session_id, tenant_id=tenant, provider_id="openai", model="gpt-4o", created_at=T0,
        activated_at=T0 + SECOND if activated else None, closed_at=T0 + 9 * SECOND if close else None,
        ttl_secs=ttl_secs, round_count=rounds if activated else 0, initial_token_count=initial if activated else 0,
        delta_token_count=delta if activated else 0, metadata={"team": "search"},
    )
    return Session(record=record, created_ttl_secs=ttl_secs, close_reason=close,
                   closed_seen_at=T0 + 9 * SECOND if close else None, partition=partition, created_offset=0,
                   last_offset=3)


class InProcessWorker:
    """One worker's web server on 127.0.0.1, over a plain dict as its table."""

    def __init__(self, tmp_path: Path, name: str = "worker", *, owned: Iterable[int] = range(PARTITIONS),
                 api_token: str = "", peer_token: str = "", ledger_dsn: str = "", store: str = "memory") -> None:
        self.port = pick_free_loopback_port()
        settings = load_settings(broker="127.0.0.1:9", app_id="web-test", partitions=PARTITIONS,
                                 data_dir=str(tmp_path / name), web_port=self.port, api_token=api_token,
                                 peer_token=peer_token, ledger_dsn=ledger_dsn, store=store)
        self.service: Service = build_app(settings)
        self.store = self.service.accountant.store
        self.owned = set(owned)
        self.service.accountant.active_partitions = lambda: set(self.owned)  # type: ignore[method-assign]
        self.service.tenants.active_partitions = lambda: set(self.owned)  # type: ignore[method-assign]
        self.service.accountant.recovered = True
        self.group: list[str] = [self.url]
        self.service.app.assignor.tables_metadata = lambda: {url: {} for url in self.group}  # type: ignore
        self.client: TestClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, *sessions: Session) -> None:
        for session in sessions:
            self.store.write(session.partition, {session.record.session_id: encode_state(session)})

    def delete(self, session_id: str, partition: int) -> None:
        self.store.write(partition, {session_id: None})

    def put_tenants(self, *states: TenantUsage) -> None:
        """Tenant states, each in its partition of the tenant table."""
        tenants = self.service.tenants
        for state in states:
            tenants.store_state(tenants.partition_of(state.tenant_id), state.tenant_id,
                                orjson.dumps(state.to_json()))

    async def start(self) -> InProcessWorker:
        web = self.service.app.web
        web.init_server()
        self.client = TestClient(TestServer(web.web_app, host="127.0.0.1", port=self.port))
        await self.client.start_server()
        return self

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        client = self.service.app._http_client
        if client is not None:
            await client.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, ClientResponse]:
        """Status, body (parsed when JSON) and the response."""
        assert self.client is not None, "start() first"
        response = await self.client.get(path, allow_redirects=False, **kwargs)
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, orjson.loads(body), response
        return response.status, body.decode("utf-8"), response


def form_group(*workers: InProcessWorker) -> None:
    """Make the workers peers of each other, as one rebalance would."""
    urls = [worker.url for worker in workers]
    for worker in workers:
        worker.group = urls
