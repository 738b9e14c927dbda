"""The Faust application: configuration, table, agent and web views, from settings."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from agents.accountant import SessionAccountant
from app.faust_compat import TRANSPORT_SCHEME, check_pinned_versions
from app.metrics import AccountingMetrics
from app.settings import Settings
from tables.table import define_sessions_table, store_url


@dataclass
class Service:
    """What the web views and tests need to reach: the app and its parts."""

    app: faust.App
    settings: Settings
    table: faust.Table
    accountant: SessionAccountant
    metrics: AccountingMetrics


def build_app(settings: Settings) -> Service:
    check_pinned_versions()
    app = faust.App(
        settings.app_id,
        broker=[f"{TRANSPORT_SCHEME}://{server}" for server in settings.bootstrap_servers],
        store=store_url(settings),
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_secs,
        broker_session_timeout=settings.session_timeout_secs,
        broker_heartbeat_interval=max(settings.session_timeout_secs / 5, 0.5),
        broker_rebalance_timeout=max(settings.session_timeout_secs * 2, 20.0),
        producer_acks=-1,
        # The agent awaits every send of a batch before the next step, so
        # linger is pure delay: a batch already fills the producer's batches.
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        # A standby only helps a store that keeps its data across restarts:
        # Faust's memory store drops standby data when recovery completes.
        table_standby_replicas=1 if settings.store == "rocksdb" else 0,
        stream_wait_empty=True,
        web_enabled=True,
        # Faust's /table/ and /router/ pages route keys by murmur2, not by
        # the gateways' partitioning: app/web answers lookups instead.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url,
        key_serializer="raw",
        value_serializer="raw",
    )
    metrics = AccountingMetrics()
    table = define_sessions_table(app, settings)
    accountant = SessionAccountant(app, table, settings, metrics)
    accountant.register()
    service = Service(app, settings, table, accountant, metrics)
    from app.web import register_views  # the views import the service type

    register_views(service)
    return service
