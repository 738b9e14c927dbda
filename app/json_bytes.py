"""JSON bytes with orjson, and integers past 64 bits all the same.

Token sums over many sessions (a tenant's usage, a list's totals) can pass
the 64 bits orjson stops at; those rare values go through the standard
library instead of failing.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]


def dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode("utf-8")


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
