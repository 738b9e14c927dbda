"""Time in the rules: integer microseconds since the Unix epoch, UTC (`Micros`).

Integer time keeps comparisons exact and state cheap to copy; RFC 3339 text
exists only at the wire edges (`parse_timestamp`, `format_timestamp`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

Micros = int
SECOND: Micros = 1_000_000
_NAIVE_EPOCH = datetime(1970, 1, 1)
_FIRST_SECOND = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_LAST_SECOND = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

# ASCII digits only, and `\Z` rather than `$` (which matches before a final newline).
# Offsets as RFC 3339 has them (hours 00-23, minutes 00-59) and as the schema's
# pattern (app/schemas/definitions.json): datetime alone takes +05:60 as +06:00.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z", re.ASCII
)


def parse_timestamp(text: str) -> Micros:
    """RFC 3339 with a mandatory offset; sub-microsecond digits are truncated.
    Instants outside years 1..9999 in UTC raise OverflowError, so that they
    are refused here rather than when formatted."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp with offset")
    day, clock, fraction, offset = match.groups()
    if offset in ("Z", "z"):
        offset = "+00:00"
    # datetime checks the calendar and the offset; whole seconds since the
    # epoch are exact as a float (below 2**53).
    seconds = int(datetime.fromisoformat(f"{day}T{clock}{offset}").timestamp())
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        raise OverflowError("outside years 1..9999 in UTC")
    return seconds * SECOND + int(fraction[:6].ljust(6, "0")) if fraction else seconds * SECOND


def format_timestamp(micros: Micros) -> str:
    """RFC 3339 in UTC with a `Z` suffix; fraction only when non-zero."""
    seconds, fraction = divmod(micros, SECOND)
    text = _second_text(seconds)
    return f"{text}.{fraction:06d}Z" if fraction else text + "Z"


@lru_cache(maxsize=8192)
def _second_text(seconds: int) -> str:
    """A whole second as text, cached: the views format the same sessions'
    instants on every poll (a page of 1,000 sessions has 4,000)."""
    return (_NAIVE_EPOCH + timedelta(seconds=seconds)).isoformat()


def format_optional(micros: Micros | None) -> str | None:
    return None if micros is None else format_timestamp(micros)


def parse_optional(text: str | None) -> Micros | None:
    return None if text is None else parse_timestamp(text)
