"""One deployment of the service: an app id, a topic prefix, the settings its workers run with."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import Settings
from app.topics import ensure_topics
from tests.support.kafka import committed_offsets, end_offsets
from tests.support.workers import WorkerProcess

__all__ = ["FAST_SETTINGS", "Deployment"]

#: Settings that make a worker quick to test: short grace, frequent commits,
#: a killed worker evicted after a few seconds.
FAST_SETTINGS: Mapping[str, str] = {
    "ACCOUNTANT_PARTITIONS": "4",
    "ACCOUNTANT_GRACE_SECS": "1",
    "ACCOUNTANT_COMMIT_INTERVAL_SECS": "0.5",
    "ACCOUNTANT_SESSION_TIMEOUT_SECS": "6",
    "ACCOUNTANT_TIMER_INTERVAL_SECS": "0.2",
    "ACCOUNTANT_LOG_LEVEL": "info",
}


@dataclass
class Deployment:
    """Names shared by the workers of one test or benchmark: one app id, one
    topic prefix, so runs on one broker never see each other's data. Every
    worker started from it is tracked, to be stopped and reported on."""

    bootstrap: str
    app_id: str
    topic_prefix: str
    workdir: Path
    #: Settings of this deployment's workers, over `defaults`.
    settings: dict[str, str] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=lambda: FAST_SETTINGS)
    #: Every worker made from it, started or not.
    started: list[WorkerProcess] = field(default_factory=list, repr=False, compare=False)

    @property
    def config(self) -> Settings:
        """The settings the workers of this deployment run with (topic names and all)."""
        return Settings(**{key.removeprefix("ACCOUNTANT_").lower(): value for key, value in self.env().items()})

    @property
    def partitions(self) -> int:
        return self.config.partitions

    @property
    def events_topic(self) -> str:
        return self.config.events_topic

    @property
    def closures_topic(self) -> str:
        return self.config.closures_topic

    @property
    def rejected_topic(self) -> str:
        return self.config.rejected_topic

    @property
    def changelog_topic(self) -> str:
        return self.config.changelog_topic

    def env(self) -> dict[str, str]:
        return {
            **self.defaults,
            "ACCOUNTANT_BROKER": self.bootstrap,
            "ACCOUNTANT_APP_ID": self.app_id,
            "ACCOUNTANT_TOPIC_PREFIX": self.topic_prefix,
            **self.settings,
        }

    def with_group(self, app_id: str) -> Deployment:
        """The same topics and settings under another app id: another consumer
        group, changelog and transactional ids, reading the same input."""
        return Deployment(self.bootstrap, app_id, self.topic_prefix, self.workdir / app_id, dict(self.settings),
                          self.defaults)

    def worker(self, name: str = "worker", *, command: list[str] | None = None, **settings: str) -> WorkerProcess:
        """A worker of this deployment (not started), with `settings` of its own."""
        worker = WorkerProcess(name, {**self.env(), **settings}, self.workdir, command=command)
        self.started.append(worker)
        return worker

    async def create_topics_async(self) -> None:
        """The topics a worker creates at start (the tables' changelogs among
        them), so data can be published, or state loaded, before it runs."""
        await ensure_topics(self.config)

    def create_topics(self) -> None:
        asyncio.run(self.create_topics_async())

    def committed_offsets(self, topic: str) -> dict[int, int]:
        """The workers' consumer group's committed offsets in `topic`, by partition."""
        return committed_offsets(self.bootstrap, self.app_id, topic)

    def committed_to_end(self) -> bool:
        """Whether the workers' group has committed every partition of the events
        topic up to its end: everything published so far was processed."""
        committed = self.committed_offsets(self.events_topic)
        ends = end_offsets(self.bootstrap, self.events_topic, self.partitions)
        # A partition nothing was published to needs no commit.
        return all(committed.get(partition, 0) >= end for partition, end in ends.items())

    def stop_workers(self, timeout: float = 20) -> None:
        for worker in self.started:
            worker.stop(timeout=timeout)

    def worker_logs(self, lines: int = 120) -> str:
        return "".join(f"\n----- {worker.name} log ({worker.log_path}) -----\n{worker.log_tail(lines)}\n"
                       for worker in self.started)
