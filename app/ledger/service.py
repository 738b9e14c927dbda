"""`accountant ledger`: the process that keeps the ledger.

Start-up: the HTTP endpoint first (so /healthz answers while waiting), then the
schema migrations (waiting for the database if it is not up yet), the closures
topic, and the consumer. Runs until SIGTERM/SIGINT; a stop abandons an
unfinished write, which is safe: the database holds all of a batch or none,
and the next start resumes from the offsets it holds.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
import sys
from collections.abc import Collection

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.ledger.connection import DatabaseTimeouts, describe_dsn
from app.ledger.consumer import LedgerConsumer
from app.ledger.database_errors import PermanentDatabaseError
from app.ledger.http import build_web_app, serve
from app.ledger.kafka_options import kafka_client_options
from app.ledger.metrics import LedgerMetrics
from app.ledger.migrations import MigrationError
from app.ledger.postgres_store import PostgresLedgerStore
from app.ledger.retry import DatabaseRetry, Stopped
from app.settings import Settings

log = logging.getLogger(__name__)


async def run_ledger(settings: Settings, stop: asyncio.Event, accepted_gaps: Collection[str] = ()) -> None:
    """Raises PermanentDatabaseError or MigrationError when the database cannot be used."""
    metrics = LedgerMetrics()
    retry = DatabaseRetry(stop, metrics)
    store = PostgresLedgerStore(settings.ledger_dsn, DatabaseTimeouts.from_settings(settings))
    ledger: LedgerConsumer | None = None

    def stalled_secs() -> float:
        """Since the last committed batch while closures wait; or since the database
        last answered (it may fail before the ledger knows of any closure)."""
        return max(ledger.stalled_secs() if ledger else 0.0, retry.failing_secs())

    metrics.stalled_seconds.set_function(stalled_secs)

    def status() -> dict:
        stalled = stalled_secs()
        gaps = [gap.flag for gap in ledger.gaps] if ledger else []
        return {
            "ready": ledger is not None and ledger.assigned_once,
            "healthy": stalled < settings.ledger_stall_timeout_secs,
            "stalled_secs": round(stalled, 1),
            # Each as --accept-gap takes it; the log says what each gap is. Not a reason for 503:
            # a restart cannot close a gap, a person must (the metric and its alert call one).
            "gaps": gaps,
            "group": settings.ledger_group,
            "topic": settings.closures_topic,
            "partitions": sorted(number for _, number in ledger.stored_offsets) if ledger else [],
        }

    runner = await serve(build_web_app(metrics, status), settings.ledger_web_host, settings.ledger_web_port)
    consumer: AIOKafkaConsumer | None = None
    try:
        applied = await retry(store.migrate, "applying the schema migrations")
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
        await _ensure_topic(settings, stop, retry)
        session_timeout_ms = int(settings.session_timeout_secs * 1000)
        consumer = AIOKafkaConsumer(
            **kafka_client_options(settings),
            group_id=settings.ledger_group,
            client_id="accountant-ledger",
            # Offsets live in the database, written with the closures; Kafka's are never used.
            enable_auto_commit=False,
            # Never jump silently: an offset Kafka no longer holds raises, and is a gap (app/ledger/gaps.py).
            auto_offset_reset="none",
            isolation_level="read_committed",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3),
        )
        ledger = LedgerConsumer(consumer, store, settings.ledger_group, metrics, retry, stop,
                                batch_max_records=settings.ledger_batch_max_records,
                                # Less than the session timeout: a member that does not rejoin
                                # within it is evicted, which costs another rebalance.
                                revoke_wait_secs=settings.session_timeout_secs / 2,
                                accepted_gaps=accepted_gaps, accepted_by=getpass.getuser())
        consumer.subscribe([settings.closures_topic], listener=ledger.listener)
        await consumer.start()
        print(f"usage-accountant ledger ready: metrics http://{settings.ledger_web_host}:{settings.ledger_web_port}"
              f"/metrics  (topic {settings.closures_topic}, group {settings.ledger_group}, database "
              f"{describe_dsn(settings.ledger_dsn)})", file=sys.stderr, flush=True)
        await ledger.run()
    except Stopped:
        pass
    finally:
        if consumer is not None:
            await consumer.stop()
        await store.close()
        await runner.cleanup()


async def _ensure_topic(settings: Settings, stop: asyncio.Event, retry: DatabaseRetry) -> None:
    """Create the closures topic if missing, with the service's partition count
    (subscribing alone could auto-create it with the broker's default)."""
    while True:
        admin = AIOKafkaAdminClient(**kafka_client_options(settings), request_timeout_ms=15_000)
        try:
            await admin.start()
            try:
                response = await admin.create_topics(
                    [NewTopic(settings.closures_topic, settings.partitions, settings.replication)])
            finally:
                await admin.close()
            error_code = response.topic_errors[0][1]
            if error_code in (0, TopicAlreadyExistsError.errno):
                return
            raise KafkaError(f"creating topic {settings.closures_topic!r}: error code {error_code}")
        except (KafkaError, OSError) as error:
            log.warning("cannot reach Kafka to check the closures topic (%s); retrying", error)
            await retry.wait(2.0)
            if stop.is_set():
                raise Stopped("creating the closures topic") from None


def main(settings: Settings, accepted_gaps: Collection[str] = ()) -> None:
    """Run the ledger until SIGTERM or SIGINT; stop with one line when the database cannot be used."""
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, force=True,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_ledger(settings, stop, accepted_gaps)

    try:
        asyncio.run(run())
    except (PermanentDatabaseError, MigrationError) as error:
        raise SystemExit(f"accountant ledger: {error}") from None
