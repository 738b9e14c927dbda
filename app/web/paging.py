"""Paging: stable by key order, merged over the workers.

A cursor is the last key of a page, opaque to clients (unpadded base64url of
its UTF-8 bytes). Keys sort as Python strings, by code point, which is also
the order of their UTF-8 bytes; so a cursor stays valid while records come
and go: a page never repeats an item, and never skips one that existed
throughout.
"""

from __future__ import annotations

import base64
import heapq
import re
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any, TypeVar

__all__ = [
    "CURSOR_PATTERN", "DEFAULT_LIMIT", "MAX_LIMIT", "Item", "decode_cursor", "encode_cursor", "merge_pages",
    "page_after",
]

#: Pages of the listings hold at most this many items.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Unpadded base64url: what `next_cursor` looks like.
CURSOR_PATTERN = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?")

T = TypeVar("T")
#: A listed item as JSON: a session view or a tenant's usage.
Item = dict[str, Any]


def encode_cursor(key: str) -> str:
    """The cursor after `key`."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_cursor(value: str) -> bytes:
    """A position in key order. Any bytes are one, so every well-formed cursor
    is valid; raises ValueError on a malformed one."""
    if not value or not CURSOR_PATTERN.fullmatch(value):
        raise ValueError(f"not a cursor: {value!r}")
    return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_")


def page_after(items: Iterable[tuple[str, T]], after: bytes | None, limit: int) -> tuple[list[T], bool]:
    """The first `limit` items whose key sorts after `after`, and whether more follow."""
    candidates = ((key, item) for key, item in items if after is None or key.encode("utf-8") > after)
    first = heapq.nsmallest(limit + 1, candidates, key=itemgetter(0))
    return [item for _, item in first[:limit]], len(first) > limit


def merge_pages(pages: list[tuple[list[Item], bool]], key: str, limit: int,
                combine: Callable[[Item, Item], Item]) -> tuple[list[Item], str | None]:
    """Merge the workers' pages into one; returns the items and the next cursor.

    Each worker gave its first `limit` items after the cursor, so the first
    `limit` of the union are the first `limit` overall. Items with the same
    key (one tenant on several workers) are combined.
    """
    by_key: dict[str, Item] = {}
    for items, _ in pages:
        for item in items:
            name = item[key]
            by_key[name] = combine(by_key[name], item) if name in by_key else item
    ordered = sorted(by_key)
    chosen = ordered[:limit]
    has_more = len(ordered) > limit or any(shard_has_more for _, shard_has_more in pages)
    return [by_key[name] for name in chosen], encode_cursor(chosen[-1]) if has_more and chosen else None
