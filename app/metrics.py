"""Counters of what the worker did, for /stats and /metrics (Prometheus)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.rules import CloseReason, Expire, Outcome, Purge, Reason, Result
from app.rules.events import EVENT_TYPES

#: Every status `POST /events` answers (docs/ingest.md), each counted from 0.
INGEST_STATUSES = ("202", "400", "401", "413", "415", "422", "500", "503")
#: accepted: acknowledged by the broker; refused: invalid, named in the answer;
#: unaccepted: valid, but in a request answered 4xx/5xx as a whole (413, 500, 503).
INGEST_OUTCOMES = ("accepted", "refused", "unaccepted")
#: Request durations, in seconds: a 202 waits for the broker's acknowledgements.
INGEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.ingest = IngestMetrics(self.registry)
        self._count_from_zero()
        # Plain tallies for /stats: cheaper to read than the Prometheus samples.
        self.results: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.closures_by_reason: Counter[str] = Counter()

    def _count_from_zero(self) -> None:
        """Create every known label set at 0: `increase()` cannot see a
        series' first increment when the series starts at 1."""
        for kind in EVENT_TYPES:
            for result in (Result.APPLIED, Result.DUPLICATE, Result.REDELIVERED):
                self.events.labels(result.value, kind, "")
        # An event too broken to have a type is rejected with type "".
        for kind in ("", *EVENT_TYPES):
            for reason in Reason:
                self.events.labels(Result.REJECTED.value, kind, reason.value)
        for close_reason in CloseReason:
            self.closures.labels(close_reason.value)
        for command in (Expire, Purge):
            self.commands.labels(command.__name__.lower())

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


class IngestMetrics:
    """What `POST /events` answered, on the worker's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PromCounter(
            "accountant_ingest_requests", "POST /events requests by the status answered.", ["status"],
            registry=registry)
        self.events = PromCounter(
            "accountant_ingest_events", "Events of POST /events requests by outcome: accepted (acknowledged by "
            "the broker), refused (invalid, named in the answer), unaccepted (valid, in a request refused whole).",
            ["outcome"], registry=registry)
        self.duration = Histogram(
            "accountant_ingest_request_duration_seconds", "Time to answer POST /events, by status.", ["status"],
            buckets=INGEST_DURATION_BUCKETS, registry=registry)
        # Each label set made once (counted from 0), and kept: labels() costs
        # microseconds per call, on every request.
        self._answers = {int(status): (self.requests.labels(status), self.duration.labels(status))
                         for status in INGEST_STATUSES}
        self._outcomes = {outcome: self.events.labels(outcome) for outcome in INGEST_OUTCOMES}

    def answered(self, status: int, seconds: float) -> None:
        if status not in self._answers:  # a status no one foresaw: counted all the same
            self._answers[status] = (self.requests.labels(str(status)), self.duration.labels(str(status)))
        requests, duration = self._answers[status]
        requests.inc()
        duration.observe(seconds)

    def count_events(self, *, accepted: int = 0, refused: int = 0, unaccepted: int = 0) -> None:
        for outcome, events in (("accepted", accepted), ("refused", refused), ("unaccepted", unaccepted)):
            if events:
                self._outcomes[outcome].inc(events)
