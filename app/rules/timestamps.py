"""Time in the rules: integer microseconds since the Unix epoch, UTC (`Micros`).

Integer time keeps comparisons exact and state cheap to copy; RFC 3339 text
exists only at the wire edges (`parse_timestamp`, `format_timestamp`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

Micros = int
SECOND: Micros = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ASCII digits only, and `\Z` rather than `$` (which matches before a final newline).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)


def parse_timestamp(text: str) -> Micros:
    """RFC 3339 with a mandatory offset; sub-microsecond digits are truncated."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp with offset")
    day, clock, fraction, offset = match.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    # In UTC, so an instant outside years 1..9999 UTC raises OverflowError here
    # rather than later when it is formatted.
    moment = datetime.fromisoformat(f"{day}T{clock}{offset}").astimezone(UTC)
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + micros


def format_timestamp(micros: Micros) -> str:
    """RFC 3339 in UTC with a `Z` suffix; fraction only when non-zero."""
    moment = _EPOCH + timedelta(microseconds=micros)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def format_optional(micros: Micros | None) -> str | None:
    return None if micros is None else format_timestamp(micros)


def parse_optional(text: str | None) -> Micros | None:
    return None if text is None else parse_timestamp(text)
