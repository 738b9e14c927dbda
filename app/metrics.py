"""Counters of what the worker did, for /stats and /metrics (Prometheus)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

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
        self.input_offset_gaps = PromCounter(
            "accountant_input_offset_gaps", "Times Faust handed the agent an input event past a hole, which "
            "the agent then read itself (transactional gateways' commit markers make one per transaction).",
            registry=self.registry)
        self.outputs_unconfirmed = Gauge(
            "accountant_outputs_unconfirmed", "Closures and rejections published but not yet confirmed.",
            registry=self.registry)
        # Plain tallies for /stats: cheaper to read than the Prometheus samples.
        self.results: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.closures_by_reason: Counter[str] = Counter()

    def count(self, outcome: Outcome) -> None:
        if outcome.result is Result.COMMAND:
            self.commands.labels(outcome.event_type or "").inc()
            return
        reason = outcome.reason.value if outcome.reason is not None else ""
        self.events.labels(outcome.result.value, outcome.event_type or "", reason).inc()
        self.results[outcome.result.value] += 1
        if reason:
            self.rejected_by_reason[reason] += 1

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
