"""Counters of what the worker did, for /stats and /metrics (Prometheus)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.rules import Outcome, Result


class AccountingMetrics:
    """One instance per worker, on its own registry (tests run several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = PromCounter(
            "accountant_events", "Consumed gateway events by outcome, event type and rejection reason.",
            ["result", "type", "reason"], registry=self.registry)
        self.closures = PromCounter(
            "accountant_closures", "Closures published (first publication and re-sends).",
            ["reason"], registry=self.registry)
        self.commands = PromCounter(
            "accountant_commands", "Internal commands applied by the agent.", ["command"], registry=self.registry)
        self.live_sessions = Gauge(
            "accountant_live_sessions", "Sessions not yet closed on this worker's partitions.",
            registry=self.registry)
        self.input_offsets_without_records = PromCounter(
            "accountant_input_offsets_without_records", "Input offsets passed that hold no event for the agent: "
            "transaction markers and aborted transactions' records (read_committed).", registry=self.registry)
        self.refused_fetches = PromCounter(
            "accountant_refused_fetches", "Fetches of an input partition refused because they began after the "
            "next offset to account for; the partition is read again from that offset.", registry=self.registry)
        self.input_gaps = PromCounter(
            "accountant_input_gaps", "Ranges of input offsets deleted (retention) before they were accounted: "
            "events never billed. Each one is also logged as an error.", registry=self.registry)
        self.transaction_commits = PromCounter(
            "accountant_transaction_commits", "exactly_once: input partitions' transactions committed.",
            registry=self.registry)
        self.input_gap_offsets = PromCounter(
            "accountant_input_gap_offsets", "Input offsets in those ranges.", registry=self.registry)
        self.stale_fetches = PromCounter(
            "accountant_stale_fetches", "Fetches of an input partition dropped because the consumer was sought "
            "back after they were read (they are read again).", registry=self.registry)
        self.batch_events = Histogram(
            "accountant_batch_events", "Input events per batch the agent took.",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000), registry=self.registry)
        self.outputs_in_flight = Gauge(
            "accountant_outputs_in_flight", "Closures and rejections sent and not yet acknowledged by the broker.",
            registry=self.registry)
        # Plain tallies for /stats: cheaper to read than the Prometheus samples.
        self.results: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.closures_by_reason: Counter[str] = Counter()

    def count(self, outcomes: Counter[Outcome]) -> None:
        """Count a batch's outcomes: once per kind, not per event (a labelled
        Prometheus increment costs microseconds)."""
        for outcome, times in outcomes.items():
            if outcome.result is Result.COMMAND:
                self.commands.labels(outcome.event_type or "").inc(times)
                continue
            reason = outcome.reason.value if outcome.reason is not None else ""
            self.events.labels(outcome.result.value, outcome.event_type or "", reason).inc(times)
            self.results[outcome.result.value] += times
            if reason:
                self.rejected_by_reason[reason] += times

    def watch(self, progress: Progress) -> None:
        self.registry.register(ProgressCollector(progress))

    def count_closure(self, reason: str) -> None:
        self.closures.labels(reason).inc()
        self.closures_by_reason[reason] += 1

    def snapshot(self) -> dict:
        return {
            "applied": self.results["applied"],
            "duplicate": self.results["duplicate"],
            "rejected": dict(self.rejected_by_reason),
            "rejected_total": self.results["rejected"],
            "redelivered": self.results["redelivered"],
            "closures": dict(self.closures_by_reason),
        }


class Progress(Protocol):
    """What the agent reports of its progress, read at each scrape."""

    def lags(self) -> dict[int, int]: ...

    def last_commit_age(self) -> float | None: ...

    def stalled_seconds(self) -> float: ...


class ProgressCollector(Collector):
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("accountant_consumer_lag_records",
                                "Input records not yet accounted, per input partition (as of the last fetch).",
                                labels=["partition"])
        for partition, records in sorted(self._progress.lags().items()):
            lag.add_metric([str(partition)], records)
        yield lag
        age = self._progress.last_commit_age()
        if age is not None:
            yield GaugeMetricFamily("accountant_last_commit_age_seconds",
                                    "Seconds since the worker last committed input offsets.", value=age)
        yield GaugeMetricFamily("accountant_agent_stalled_seconds",
                                "Seconds since the agent last finished a batch, while input is waiting (0 when "
                                "none is).", value=self._progress.stalled_seconds())
