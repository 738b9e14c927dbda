"""`accountant export`: one billing period, every tenant, ready for an invoicing system.

Two kinds of records, in this order: ``usage``, one per tenant, provider and
model (closures, late closures, their tokens, the adjustments booked in the
period and the billed total), then ``adjustment``, one per adjustment booked
in the period (who, when, why, which closure). Both are read in one
REPEATABLE READ snapshot, so they agree, row by row as the server sends them
(psycopg's ``stream``, libpq's single-row mode): the export streams, whatever
the month's size. Not through a server-side cursor: PostgreSQL plans no
parallel scan for one, and a month's aggregate is a scan of its partition.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import date
from typing import IO, Any

import psycopg

FORMATS = ("csv", "jsonl")
#: Columns of the CSV form: the union of both kinds (empty where a kind has no such field).
COLUMNS = ("record_type", "period", "tenant_id", "provider_id", "model", "closures", "late_closures",
           "total_token_count", "adjustments", "adjustment_token_count", "billed_token_count", "adjustment_id",
           "closure_id", "token_count", "reason", "created_by", "created_at", "late")

_USAGE = """
WITH usage AS (
    SELECT tenant_id, provider_id, model, count(*) AS closures, count(*) FILTER (WHERE late) AS late_closures,
           sum(total_token_count) AS total_token_count
    FROM closures WHERE period = %(period)s
    GROUP BY tenant_id, provider_id, model
), corrections AS (
    SELECT a.tenant_id, c.provider_id, c.model, count(*) AS adjustments, sum(a.token_count) AS adjustment_token_count
    FROM ledger_adjustments AS a
    JOIN closure_ids AS i ON i.closure_id = a.closure_id
    JOIN closures AS c ON c.closure_id = a.closure_id AND c.period = i.period
    WHERE a.period = %(period)s
    GROUP BY a.tenant_id, c.provider_id, c.model
)
SELECT tenant_id, provider_id, model, coalesce(u.closures, 0), coalesce(u.late_closures, 0),
       coalesce(u.total_token_count, 0), coalesce(a.adjustments, 0), coalesce(a.adjustment_token_count, 0)
FROM usage AS u FULL JOIN corrections AS a USING (tenant_id, provider_id, model)
ORDER BY tenant_id, provider_id, model
"""
_ADJUSTMENTS = """
SELECT id, tenant_id, closure_id, token_count, reason, created_by, created_at, late
FROM ledger_adjustments WHERE period = %(period)s ORDER BY id
"""


def export_records(connection: psycopg.Connection[Any], period: date) -> Iterator[dict[str, Any]]:
    """The period's records, streamed (the connection must not be in a transaction)."""
    label = period.strftime("%Y-%m")
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    with connection.transaction():
        connection.execute("SET LOCAL TIME ZONE 'UTC'")
        with connection.cursor() as cursor:
            for tenant, provider, model, closures, late, total, adjustments, adjusted in cursor.stream(
                    _USAGE, {"period": period}):
                yield {"record_type": "usage", "period": label, "tenant_id": tenant, "provider_id": provider,
                       "model": model, "closures": closures, "late_closures": late,
                       "total_token_count": int(total), "adjustments": adjustments,
                       "adjustment_token_count": int(adjusted), "billed_token_count": int(total + adjusted)}
        with connection.cursor() as cursor:
            for number, tenant, closure_id, tokens, reason, created_by, created_at, late in cursor.stream(
                    _ADJUSTMENTS, {"period": period}):
                yield {"record_type": "adjustment", "period": label, "tenant_id": tenant, "adjustment_id": number,
                       "closure_id": closure_id, "token_count": int(tokens), "reason": reason,
                       "created_by": created_by, "created_at": created_at.isoformat().replace("+00:00", "Z"),
                       "late": late}


def write_export(records: Iterator[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write the records as CSV (header first) or JSON lines; how many were written."""
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}")
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            count += 1
    else:
        for record in records:
            # The stdlib, not orjson: token sums can pass 2^64, which it writes exactly.
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
    return count
