"""`accountant ledger` processes for tests, and Kafka/PostgreSQL helpers to drive and watch them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from app.broker import _die_with_parent_preexec, create_topics
from app.ledger.lag import read_ledger_lag
from tests.integration.workers import REPO, WorkerProcess, produce


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
            **self.settings,
        }

    def create_topic(self) -> None:
        asyncio.run(create_topics(self.bootstrap, {self.topic: self.partitions}))

    def ledger(self, name: str = "ledger") -> LedgerProcess:
        process = LedgerProcess(self, name)
        self.started.append(process)
        return process

    def publish(self, values: Iterable[tuple[str, bytes | None]]) -> None:
        """(closure_id, value) pairs, keyed by the closure_id as the worker keys them."""
        asyncio.run(produce(self.bootstrap, self.topic, ((key.encode(), value) for key, value in values)))

    def publish_closures(self, closures: Iterable[dict[str, Any]]) -> None:
        self.publish((item["closure_id"], orjson.dumps(item)) for item in closures)

    def lag(self) -> int:
        return sum(asyncio.run(read_ledger_lag(self.dsn, self.group, self.topic,
                                               bootstrap_servers=self.bootstrap)).values())

    def wait_caught_up(self, timeout: float = 120, *, alive: Iterable[LedgerProcess] = ()) -> None:
        """Until the database holds every record of the topic (lag 0)."""
        deadline = time.monotonic() + timeout
        while True:
            for process in alive:
                process.assert_running()
            try:
                if self.lag() == 0:
                    return
            except psycopg.errors.UndefinedTable:
                pass  # the schema is not there yet
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger still lags by {self.lag()} records after {timeout} s\n"
                                     + "\n".join(process.describe() for process in self.started))
            time.sleep(0.3)

    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn) as connection:
            return connection.execute(text, params).fetchall()

    def stop_all(self) -> None:
        for process in self.started:
            process.stop(timeout=20)


class LedgerProcess(WorkerProcess):
    """`accountant ledger` as a subprocess; ``wait_ready`` waits for /readyz
    (joined the group, read the stored offsets), ``get`` reads its endpoints."""

    def start(self) -> LedgerProcess:
        env = {**os.environ, **self.deployment.env(), "ACCOUNTANT_LEDGER_WEB_PORT": str(self.port)}
        with open(self.log_path, "ab") as log:
            # Killed with the test process, should that die before stopping it.
            self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "ledger"], cwd=REPO, env=env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent_preexec())
        return self

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
        deadline = time.monotonic() + timeout
        while (value := self.metric(name)) != expected:
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {name} is {value}, not {expected}, after {timeout} s\n"
                                     f"{self.describe()}")
            time.sleep(0.2)

    def assert_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}\n{self.describe()}")

    def describe(self) -> str:
        return f"----- {self.name} log ({self.log_path}) -----\n{self.log_tail()}"
