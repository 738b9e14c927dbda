"""The ledger: closures from Kafka into PostgreSQL, exactly once (docs/ledger.md).

Interfaces and pure parts first: `LedgerStore` (store.py), the closure -> row
mapping (closure_row.py), the conflict rule (conflicts.py), batches
(batch.py), gaps (gaps.py). Then PostgreSQL (postgres_store.py, migrations.py,
connection.py: timeouts and DSNs shown without secrets, database_errors.py:
transient or permanent), the Kafka side (consumer.py, writer.py, retry.py,
kafka_options.py), the process (service.py, http.py, metrics.py), and what
others read or run: lag.py (the worker's dashboard), read.py (oracles),
usage.py and usage_format.py (`accountant usage`), adjustments.py (`accountant
adjust`), periods.py (`accountant period`), export.py (`accountant export`).
Billing periods themselves are a pure rule: app/rules/periods.py.
"""

from app.ledger.batch import BatchOutcome, LedgerBatch, OffsetAdvance, Partition
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.conflicts import BatchPlan, Conflict, Verdict, judge, plan_batch
from app.ledger.kafka_options import kafka_client_options
from app.ledger.lag import LedgerLagReader, lag_per_partition, read_ledger_lag, stored_offsets
from app.ledger.read import read_conflicts, read_ledger_closures, read_rejects, read_usage_by_tenant
from app.ledger.store import LedgerStore
from app.ledger.usage import UsageQuery, UsageRow, fetch_usage

__all__ = [
    "BatchOutcome",
    "BatchPlan",
    "ClosureRow",
    "Conflict",
    "LedgerBatch",
    "LedgerLagReader",
    "LedgerReject",
    "LedgerStore",
    "OffsetAdvance",
    "Partition",
    "SourceOffset",
    "UsageQuery",
    "UsageRow",
    "Verdict",
    "decode_closure",
    "fetch_usage",
    "judge",
    "kafka_client_options",
    "lag_per_partition",
    "plan_batch",
    "read_conflicts",
    "read_ledger_closures",
    "read_ledger_lag",
    "read_rejects",
    "read_usage_by_tenant",
    "stored_offsets",
]
