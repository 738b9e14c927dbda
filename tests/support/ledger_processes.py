"""`accountant ledger` processes for tests and benchmarks, and what drives and
watches them: the closures topic they read, the database they write.

(Not to be confused with `tests.support.ledger`, the fault suite's record of
what was sent to the events topic: this module is about the billing ledger,
app/ledger/.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.kafka import create_topics
from app.dev.ledger_check import LedgerReport, verify_ledger
from app.dev.oracle import Expected
from app.ledger.lag import LedgerLagReader, read_ledger_lag
from app.ledger.postgres_store import APPLICATION_NAME
from tests.support.deployment import Deployment
from tests.support.kafka import partition_count, produce
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

__all__ = ["LEDGER_COMMAND", "ROLLED_BACK", "WRITING_A_BATCH", "Copies", "LedgerDeployment", "LedgerProcess",
           "resend_closures"]

LEDGER_COMMAND = ["-m", "app.cli", "ledger"]

#: A transaction of the ledger is open and past locking its offsets: a batch is being written.
WRITING_A_BATCH = f"""
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}' AND xact_start IS NOT NULL
  AND (query LIKE '%FOR UPDATE%' OR query LIKE 'SELECT closure_id, content_sha256%' OR query LIKE 'COPY closures%'
       OR query LIKE '%UPDATE closures%' OR query LIKE '%UPDATE ledger_offsets%')
"""
#: Its transaction open and the server waiting for the ledger to send more:
#: what the ledger had sent before it was frozen (a COMMIT included) is consumed.
STUCK_IN_A_BATCH = f"""
SELECT count(*) FILTER (WHERE xact_start IS NOT NULL AND wait_event = 'ClientRead'),
       count(*) FILTER (WHERE xact_start IS NOT NULL)
FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}'
"""
ROLLED_BACK = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"


@dataclass
class LedgerDeployment:
    """One closures topic, consumer group and database shared by the ledgers of one test."""

    bootstrap: str
    dsn: str
    topic_prefix: str
    group: str
    workdir: Path
    partitions: int = 4
    settings: dict[str, str] = field(default_factory=dict)
    started: list[LedgerProcess] = field(default_factory=list)

    @classmethod
    def beside(cls, deployment: Deployment, dsn: str, group: str) -> LedgerDeployment:
        """Ledgers reading the closures the workers of `deployment` publish."""
        return cls(deployment.bootstrap, dsn, deployment.topic_prefix, group, deployment.workdir,
                   partitions=deployment.partitions)

    @property
    def topic(self) -> str:
        return f"{self.topic_prefix}session-closures"

    def env(self) -> dict[str, str]:
        return {
            "ACCOUNTANT_BROKER": self.bootstrap,
            "ACCOUNTANT_TOPIC_PREFIX": self.topic_prefix,
            "ACCOUNTANT_PARTITIONS": str(self.partitions),
            "ACCOUNTANT_LEDGER_DSN": self.dsn,
            "ACCOUNTANT_LEDGER_GROUP": self.group,
            # A killed ledger's partitions move to the others after this.
            "ACCOUNTANT_SESSION_TIMEOUT_SECS": "6",
            "ACCOUNTANT_LOG_LEVEL": "info",
            **self.settings,
        }

    def create_topic(self) -> None:
        asyncio.run(create_topics(self.bootstrap, {self.topic: self.partitions}))

    def ledger(self, name: str = "ledger", **settings: str) -> LedgerProcess:
        """A ledger of this deployment (not started), with `settings` of its own."""
        process = LedgerProcess(name, {**self.env(), **settings}, self.workdir)
        self.started.append(process)
        return process

    def publish(self, values: Iterable[tuple[str, bytes | None]]) -> None:
        """(closure_id, value) pairs, keyed by the closure_id as the worker keys them."""
        asyncio.run(produce(self.bootstrap, self.topic, ((key.encode(), value) for key, value in values)))

    def publish_closures(self, closures: Iterable[dict[str, Any]]) -> None:
        self.publish((item["closure_id"], orjson.dumps(item)) for item in closures)

    def lag(self) -> int:
        """Records of the closures topic not yet in the database (everything, before the schema exists)."""
        return sum(asyncio.run(read_ledger_lag(self.dsn, self.group, self.topic,
                                               bootstrap_servers=self.bootstrap)).values())

    def wait_caught_up(self, timeout: float = 120, *, alive: Iterable[LedgerProcess] = ()) -> None:
        """Until the database holds every record of the topic (lag 0)."""
        alive = list(alive)

        def caught_up() -> bool:
            for process in alive:
                process.check_alive()
            return self.lag() == 0

        wait_for("the ledger to catch up with the closures topic", caught_up, timeout, interval=0.3,
                 observed=lambda: f"lag {self.lag()}\n{self.logs()}")

    def query(self, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as connection:
            return connection.execute(text, params).fetchall()

    def rows(self) -> int:
        """Rows in the closures table (0 before the schema exists)."""
        try:
            return int(self.query("SELECT count(*) FROM closures")[0][0])
        except psycopg.errors.UndefinedTable:
            return 0

    def verify(self, expected: Expected, *, timeout: float = 120,
               expected_conflicts: Collection[str] = ()) -> LedgerReport:
        """The ledger against the oracle, once it caught up (app/dev/ledger_check.py)."""
        async def verify() -> LedgerReport:
            async with LedgerLagReader(self.dsn, self.group, self.topic,
                                       {"bootstrap_servers": self.bootstrap}) as reader:
                return await verify_ledger(expected, reader, timeout=timeout, expected_conflicts=expected_conflicts)

        return asyncio.run(verify())

    def freeze_mid_batch(self, process: LedgerProcess, *, timeout: float = 120) -> None:
        """SIGSTOP `process` in the middle of writing a batch, its transaction
        open (SIGCONT thaws it). Frozen as soon as a write is seen; then the
        server is watched until it has consumed what the ledger sent before
        the freeze: a COMMIT already on its way ends the transaction, and the
        ledger is thawed and watched again."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn, autocommit=True) as watcher:
            def writing() -> bool:
                return int(watcher.execute(WRITING_A_BATCH).fetchone()[0]) > 0  # type: ignore[index]

            def settled() -> str | None:
                """"stuck" once the server waits for the frozen ledger mid-batch, "ended" once its transaction did."""
                stuck, in_transaction = watcher.execute(STUCK_IN_A_BATCH).fetchone()  # type: ignore[misc]
                if stuck:
                    return "stuck"
                return None if in_transaction else "ended"

            while True:
                wait_for(f"{process.name} to be writing a batch", writing, deadline - time.monotonic(),
                         interval=0.002, observed=process.log_tail)
                os.kill(process.pid, signal.SIGSTOP)
                if wait_for("the server to wait for the frozen ledger", settled, 10, interval=0.002) == "stuck":
                    return
                os.kill(process.pid, signal.SIGCONT)

    def kill_mid_batch(self, process: LedgerProcess, *, past_rows: int = 0, timeout: float = 120) -> int:
        """SIGKILL `process` in the middle of writing a batch, once the database
        holds more than `past_rows` rows; returns the rows it holds after the kill.
        The server rolls back the transaction the kill left open: waiting for
        that rollback proves the kill came mid-batch."""
        wait_for(f"{process.name} to write more than {past_rows} rows",
                 lambda: process.check_alive() or self.rows() > past_rows, timeout, interval=0.05)
        self.freeze_mid_batch(process, timeout=timeout)
        with psycopg.connect(self.dsn, autocommit=True) as watcher:
            def rolled_back() -> int:
                return int(watcher.execute(ROLLED_BACK).fetchone()[0])  # type: ignore[index]

            before = rolled_back()
            process.kill()
            wait_for("the server to roll back the killed ledger's transaction", lambda: rolled_back() > before, 30)
        return self.rows()

    def offsets_and_records(self) -> tuple[int, int]:
        """(records the stored offsets say were consumed, records the database
        accounts for: rows, repeats counted, conflicts and rejects). Equal when
        every batch was written whole or not at all, on a topic that starts at
        offset 0 and holds no transaction markers."""
        [(offsets, records)] = self.query(
            "SELECT (SELECT coalesce(sum(next_offset), 0) FROM ledger_offsets WHERE consumer_group = %s),"
            " (SELECT count(*) + coalesce(sum(duplicates), 0) FROM closures)"
            " + (SELECT count(*) FROM closure_conflicts) + (SELECT count(*) FROM ledger_rejects)", (self.group,))
        return int(offsets), int(records)

    def stop_all(self) -> None:
        for process in self.started:
            process.stop(timeout=20)

    def logs(self, lines: int = 60) -> str:
        return "".join(f"\n----- {process.name} log ({process.log_path}) -----\n{process.log_tail(lines)}\n"
                       for process in self.started)


class LedgerProcess(WorkerProcess):
    """`accountant ledger` as a subprocess: its HTTP endpoint (/metrics, /healthz,
    /readyz) on a port of its own; ``wait_ready`` waits until it joined the group
    and read the stored offsets."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        super().__init__(name, env, workdir, command=LEDGER_COMMAND)
        self.env["ACCOUNTANT_LEDGER_WEB_PORT"] = str(self.port)

    def wait_metric(self, name: str, expected: float, timeout: float = 30) -> None:
        """Until a metric reaches ``expected``. Counters move just after the database
        commits, so a test that saw the rows waits for them. All counters of one
        batch move together: once one has its final value, so have the others."""
        def reached() -> bool:
            self.check_alive()
            return self.metric(name) == expected

        wait_for(f"{self.name}: {name} to be {expected}", reached, timeout, interval=0.2,
                 observed=lambda: f"{self.metric(name)}\n{self.log_tail()}")


#: The copies to deliver of one closure.
Copies = Callable[[dict[str, Any]], list[dict[str, Any]]]


def resend_closures(bootstrap: str, topic: str, closure_ids: Collection[str], copies: Copies,
                    timeout: float = 120) -> list[dict[str, Any]]:
    """Deliver closures again, as a replaying worker or a broken producer would:
    read `topic` from the start and, the first time each of `closure_ids` shows,
    publish `copies(closure)` right behind it on the same partition (same key).
    Returns every copy sent; fails unless every closure id showed within `timeout`."""
    return asyncio.run(_resend(bootstrap, topic, set(closure_ids), copies, timeout))


async def _resend(bootstrap: str, topic: str, closure_ids: set[str], copies: Copies,
                  timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(await partition_count(bootstrap, topic))]
        assert partitions, f"topic {topic!r} does not exist"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: set[str] = set()
        sent: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while seen < closure_ids and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    closure = orjson.loads(record.value)
                    closure_id = closure.get("closure_id")
                    if closure_id not in closure_ids or closure_id in seen:
                        continue  # not asked for, or a copy (ours, or a worker's repeat)
                    seen.add(closure_id)
                    for copy in copies(closure):
                        await producer.send(topic, orjson.dumps(copy), key=record.key, partition=tp.partition)
                        sent.append(copy)
        await producer.flush()
        missing = closure_ids - seen
        assert not missing, f"{len(missing)} closures never showed on {topic} in {timeout} s: {sorted(missing)[:5]}"
        return sent
    finally:
        await producer.stop()
        await consumer.stop()
