"""What the ledger counts, for its /metrics (Prometheus)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.ledger.batch import BatchOutcome


class LedgerMetrics:
    """One instance per ledger process, on its own registry (tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.closures_written = Counter(
            "accountant_ledger_closures_written", "Closures written as new rows.", registry=self.registry)
        self.duplicates = Counter(
            "accountant_ledger_duplicates", "Repeated closures with identical content (emitted_at aside), "
            "counted and ignored.", registry=self.registry)
        self.conflicts = Counter(
            "accountant_ledger_conflicts", "Repeated closure_ids with different content, kept in "
            "closure_conflicts; any is an alert.", registry=self.registry)
        self.rejects = Counter(
            "accountant_ledger_rejects", "Records of the closures topic that are no valid closure, kept in "
            "ledger_rejects.", registry=self.registry)
        self.batch_records = Histogram(
            "accountant_ledger_batch_records", "Records per committed ledger transaction.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10_000, 50_000), registry=self.registry)
        self.batch_write_seconds = Histogram(
            "accountant_ledger_batch_write_seconds", "Time to write one batch, retries included.",
            registry=self.registry)
        self.fenced_partitions = Counter(
            "accountant_ledger_fenced_partitions", "Partitions left out of a batch because another ledger "
            "process had written them since (a rebalance); their records are read again.",
            registry=self.registry)
        self.database_retries = Counter(
            "accountant_ledger_database_retries", "Database operations retried after an error (database down, "
            "restarting, or a concurrent writer).", registry=self.registry)
        self.database_up = Gauge(
            "accountant_ledger_database_up", "1 when the last database operation succeeded.",
            registry=self.registry)
        self.lag = Gauge(
            "accountant_ledger_lag_records", "Records of the closures topic not yet in the ledger, per partition.",
            ["topic", "partition"], registry=self.registry)

        self.gap_refused = Gauge(
            "accountant_ledger_gap_refused", "1 while a partition is stopped at a gap: closures deleted before "
            "the ledger wrote them, or a stored offset past the partition's end (see the log for the "
            "--accept-gap to run); any is an alert.", ["topic", "partition"], registry=self.registry)
        self.gaps_accepted = Counter(
            "accountant_ledger_gaps_accepted", "Gaps accepted with --accept-gap (recorded in ledger_gaps).",
            registry=self.registry)
        self.stalled_seconds = Gauge(
            "accountant_ledger_stalled_seconds", "Seconds since the last committed batch while closures wait "
            "to be written, or since the database last answered; 0 when caught up.", registry=self.registry)

    def count(self, outcome: BatchOutcome) -> None:
        self.closures_written.inc(outcome.written)
        self.duplicates.inc(outcome.duplicates)
        self.conflicts.inc(len(outcome.conflicts))
        self.rejects.inc(len(outcome.rejects))
        self.fenced_partitions.inc(len(outcome.fenced))
        records = outcome.written + outcome.duplicates + len(outcome.conflicts) + len(outcome.rejects)
        if records:
            self.batch_records.observe(records)
