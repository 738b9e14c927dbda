"""`accountant usage` output: a table for a person, CSV or JSON for a program. Pure."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from app.ledger.usage import UsageQuery, UsageRow

FORMATS = ("table", "csv", "json")
#: The closures' tokens, their adjustments, and both together (what is invoiced); then the detail.
_FIGURES = ("closures", "total_token_count", "adjustments", "adjustment_token_count", "billed_token_count",
            "initial_token_count", "delta_token_count", "round_count", "missing_rounds", "late_closures")
_KEYS_BY_GROUPING = {
    "total": (),
    "provider": ("provider_id",),
    "model": ("provider_id", "model"),
    "day": ("day",),
    "month": ("month",),
}


def render_usage(query: UsageQuery, rows: Sequence[UsageRow], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}")
    columns = ("tenant_id", *_KEYS_BY_GROUPING[query.by], *_FIGURES)
    records = [_record(row, columns) for row in rows]
    if fmt == "json":
        # Token sums can pass 2^64: the stdlib's json writes any int exactly.
        return json.dumps({"tenant_id": query.tenant_id,
                           "from": query.from_day.isoformat() if query.from_day else None,
                           "to": query.to_day.isoformat() if query.to_day else None,
                           "period": query.period.strftime("%Y-%m") if query.period else None,
                           "as_of": query.as_of.isoformat() if query.as_of else None,
                           "by": query.by, "timezone": "UTC", "rows": records}, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[record[column] for column in columns] for record in records])
        return out.getvalue()
    return _table(columns, records, _title(query))


def _title(query: UsageQuery) -> str:
    if query.period is not None:
        title = (f"usage of {query.tenant_id}, billing period {query.period:%Y-%m} (closures and adjustments "
                 "booked in it)")
    else:
        title = f"usage of {query.tenant_id}, {query.from_day} .. {query.to_day} (UTC days, both included)"
    return title + (f", as of {query.as_of.isoformat()}" if query.as_of else "")


def _record(row: UsageRow, columns: Sequence[str]) -> dict[str, object]:
    values = {
        "tenant_id": row.tenant_id,
        "provider_id": row.provider_id,
        "model": row.model,
        "day": row.period_start.isoformat() if row.period_start else None,
        "month": row.period_start.strftime("%Y-%m") if row.period_start else None,
        "closures": row.closures,
        "total_token_count": row.total_token_count,
        "adjustments": row.adjustments,
        "adjustment_token_count": row.adjustment_token_count,
        "billed_token_count": row.billed_token_count,
        "initial_token_count": row.initial_token_count,
        "delta_token_count": row.delta_token_count,
        "round_count": row.round_count,
        "missing_rounds": row.missing_rounds,
        "late_closures": row.late_closures,
    }
    return {column: values[column] for column in columns}


def _table(columns: Sequence[str], records: Sequence[dict[str, object]], title: str) -> str:
    if not records:
        return f"{title}\n(no closures)\n"
    cells = [list(columns)] + [[_cell(record[column]) for column in columns] for record in records]
    widths = [max(len(row[index]) for row in cells) for index in range(len(columns))]
    numeric = {index for index, column in enumerate(columns) if column in _FIGURES}
    lines = [title]
    for number, row in enumerate(cells):
        lines.append("  ".join(cell.rjust(widths[index]) if index in numeric else cell.ljust(widths[index])
                               for index, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
