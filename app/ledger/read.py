"""The ledger's contents as plain values, for oracles and checks (not for billing's SQL: docs/ledger.md).

``prefix`` keeps the closures whose closure_id starts with it (a simulation's
run: every id of a run starts with its marker); the default keeps all.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from app.ledger.closure_row import datetime_to_micros
from app.rules import format_timestamp

__all__ = ["read_conflicts", "read_ledger_closures", "read_rejects", "read_usage_by_tenant"]


def read_ledger_closures(dsn: str, prefix: str = "") -> list[dict[str, Any]]:
    """One dict per stored closure, ordered by closure_id: the figures billing
    uses (ints; timestamps as RFC 3339 UTC) and the duplicates counted."""
    query = """
        SELECT closure_id, tenant_id, provider_id, model, reason, closed_at, ttl_secs,
               round_count, missing_rounds, initial_token_count, delta_token_count, total_token_count,
               duplicates, source_topic, source_partition, source_offset
        FROM closures WHERE starts_with(closure_id, %s) ORDER BY closure_id
    """
    with psycopg.connect(dsn, row_factory=dict_row) as connection:
        rows = connection.execute(query, (prefix,)).fetchall()
    for row in rows:
        row["closed_at"] = format_timestamp(datetime_to_micros(row["closed_at"]))
        row["total_token_count"] = int(row["total_token_count"])
    return rows


def read_usage_by_tenant(dsn: str, prefix: str = "") -> dict[str, dict[str, int]]:
    """tenant_id -> {"closures": n, "total_token_count": sum} over the whole ledger."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT tenant_id, count(*), sum(total_token_count) FROM closures WHERE starts_with(closure_id, %s) "
            "GROUP BY tenant_id", (prefix,)).fetchall()
    return {tenant: {"closures": count, "total_token_count": int(total)} for tenant, count, total in rows}


def read_conflicts(dsn: str, prefix: str = "") -> list[dict[str, Any]]:
    """The deliveries kept in closure_conflicts, oldest first."""
    with psycopg.connect(dsn, row_factory=dict_row) as connection:
        rows = connection.execute(
            "SELECT closure_id, total_token_count, source_topic, source_partition, source_offset "
            "FROM closure_conflicts WHERE starts_with(closure_id, %s) ORDER BY id", (prefix,)).fetchall()
    for row in rows:
        row["total_token_count"] = int(row["total_token_count"])
    return rows


def read_rejects(dsn: str, containing: bytes = b"") -> list[dict[str, Any]]:
    """The records kept in ledger_rejects whose value contains ``containing``
    (a rejected record may not parse: its bytes are searched), oldest first."""
    with psycopg.connect(dsn, row_factory=dict_row) as connection:
        return connection.execute(
            "SELECT source_topic, source_partition, source_offset, error FROM ledger_rejects "
            "WHERE position(%s::bytea IN coalesce(value, ''::bytea)) > 0 ORDER BY id", (containing,)).fetchall()
