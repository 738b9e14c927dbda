"""`accountant ledger` processes for tests and benchmarks, and what drives and
watches them: the closures topic they read, the database they write.

(Not to be confused with `tests.support.ledger`, the fault suite's record of
what was sent to the events topic: this module is about the billing ledger,
app/ledger/.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from app.dev.kafka import create_topics
from app.ledger.lag import read_ledger_lag
from tests.support.deployment import Deployment
from tests.support.kafka import produce
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

__all__ = ["LEDGER_COMMAND", "LedgerDeployment", "LedgerProcess"]

LEDGER_COMMAND = ["-m", "app.cli", "ledger"]


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

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (all labels)."""
        status, text = self.get("/metrics")
        assert status == 200, (status, text)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    def wait_metric(self, name: str, expected: float, timeout: float = 30) -> None:
        """Until a metric reaches ``expected``. Counters move just after the database
        commits, so a test that saw the rows waits for them. All counters of one
        batch move together: once one has its final value, so have the others."""
        def reached() -> bool:
            self.check_alive()
            return self.metric(name) == expected

        wait_for(f"{self.name}: {name} to be {expected}", reached, timeout, interval=0.2,
                 observed=lambda: f"{self.metric(name)}\n{self.log_tail()}")
