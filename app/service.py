"""The Faust application: configuration, table, agent and web views, from settings."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import faust

from agents.accountant import SessionAccountant
from agents.budgets import BudgetBook
from agents.tenants import TenantAccountant
from agents.transactions import PRODUCER_REQUEST_TIMEOUT_SECS
from app.faust_compat import MarkerAwareTableManager, check_pinned_versions
from app.kafka_config import faust_options
from app.metrics import AccountingMetrics
from app.rules import Session
from app.rules.usage import Budget, TenantUsage
from app.settings import Settings
from app.web import register_views
from tables.table import define_sessions_table, store_url


@dataclass
class Service:
    """What the web views and tests need to reach: the app and its parts.

    It is the `app.web.Worker` the views read (the methods below).
    """

    app: faust.App
    settings: Settings
    table: faust.Table
    accountant: SessionAccountant
    metrics: AccountingMetrics
    tenants: TenantAccountant
    budgets: BudgetBook

    def ready(self) -> bool:
        return self.accountant.recovered and not self.app.rebalancing

    def active_partitions(self) -> Collection[int]:
        return self.accountant.active_partitions()

    def stored_session(self, session_id: str) -> Session | None:
        # A tombstone is what is left of a purged session: its record is gone.
        state = self.accountant.store.get(session_id)
        return state if isinstance(state, Session) else None

    def stored_items_after(self, partitions: Collection[int], after: bytes | None) -> Iterator[tuple[str, Any]]:
        return self.accountant.store.items_after(partitions, after)

    def live_sessions(self) -> int:
        return sum(self.accountant.open_sessions.values())

    def stalled_seconds(self) -> float:
        return self.accountant.stalled_seconds()

    def own_url(self) -> str:
        return str(self.app.conf.canonical_url)

    def member_urls(self) -> Collection[str]:
        return self.app.assignor.tables_metadata().keys()

    def http_client(self) -> aiohttp.ClientSession:
        return self.app.http_client

    def tenant_partition(self, tenant_id: str) -> int:
        return self.tenants.partition_of(tenant_id)

    def tenant_partitions(self) -> Collection[int]:
        return self.tenants.active_partitions()

    def tenant_usage(self, tenant_id: str) -> TenantUsage | None:
        return self.tenants.get(tenant_id)

    def tenants_in(self, partitions: Collection[int]) -> Iterator[TenantUsage]:
        for tenant_id, _ in self.tenants.tenants_in(partitions):
            state = self.tenants.get(tenant_id)
            if state is not None:
                yield state

    def budget(self, tenant_id: str) -> Budget | None:
        return self.budgets.get(tenant_id)

    def budget_written(self, tenant_id: str, budget: Budget | None) -> None:
        self.budgets.set(tenant_id, budget)


def build_app(settings: Settings) -> Service:
    check_pinned_versions()
    app = faust.App(
        settings.app_id,
        store=store_url(settings),
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        # Faust's own exactly-once routes records by their destination
        # partition and is not used (docs/design.md); the agent runs its own
        # transactions (agents/transactions.py).
        processing_guarantee="at_least_once",
        TableManager=MarkerAwareTableManager,
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_SECS,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_secs,
        broker_session_timeout=settings.session_timeout_secs,
        broker_heartbeat_interval=max(settings.session_timeout_secs / 5, 0.5),
        broker_rebalance_timeout=max(settings.session_timeout_secs * 2, 20.0),
        producer_acks=-1,
        # The agent awaits every send of a batch before its next step, and a
        # batch fills the producer's batches itself, so linger is mostly
        # delay: 1 ms (latency at 5,000 ev/s: p50 40 -> 10 ms) rather than 0
        # (one produce request per record: +35 % CPU per event).
        producer_linger=0.001,
        producer_max_batch_size=256 * 1024,
        # A standby only helps a store that keeps its data across restarts:
        # Faust's memory store drops standby data when recovery completes.
        table_standby_replicas=1 if settings.store == "rocksdb" else 0,
        stream_wait_empty=True,
        web_enabled=True,
        # Faust's /table/ and /router/ pages route keys by murmur2, not by
        # the gateways' partitioning: app/web/ answers lookups instead.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url,
        key_serializer="raw",
        value_serializer="raw",
        # The broker URLs and the TLS/SASL login of every client Faust creates.
        **faust_options(settings),
    )
    metrics = AccountingMetrics()
    table = define_sessions_table(app, settings)
    accountant = SessionAccountant(app, table, settings, metrics)
    accountant.register()
    budgets = BudgetBook(settings)
    tenants = TenantAccountant(app, settings, accountant.consumer, budgets.get, budgets.loaded, accountant.stop_on)
    budgets.on_change = tenants.budget_changed
    tenants.register()

    @app.task
    async def read_budgets() -> None:
        await budgets.run()

    service = Service(app, settings, table, accountant, metrics, tenants, budgets)
    register_views(app, service)
    return service
