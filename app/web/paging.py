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
    "page_after", "page_in_order",
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


def page_after(items: Iterable[tuple[str, T]], after: bytes | None, limit: int) -> tuple[list[T], str | None]:
    """The first `limit` items whose key sorts after `after`, and the key to
    continue after (None: no more). Reads every item: for small sets (tenants)."""
    candidates = ((key, item) for key, item in items if after is None or key.encode("utf-8") > after)
    first = heapq.nsmallest(limit + 1, candidates, key=itemgetter(0))
    page = first[:limit]
    return [item for _, item in page], page[-1][0] if len(first) > limit else None


def page_in_order(items: Iterable[tuple[str, T | None]], limit: int, max_read: int) -> tuple[list[T], str | None]:
    """The first `limit` items of `items`, read in key order (None for a key
    the filters leave out), and the key to continue after (None: no more).
    Reads at most `max_read` keys past the page's first, so a request costs
    O(page) however large the table: a sparse filter answers a short page
    (or none) that continues where the reading stopped."""
    page: list[T] = []
    last_key: str | None = None
    for read, (key, item) in enumerate(items):
        if item is not None:
            if len(page) == limit:
                return page, last_key  # one more exists
            page.append(item)
            last_key = key
        elif read >= max_read:
            return page, key
    return page, None


def merge_pages(pages: list[tuple[list[Item], bytes | None]], key: str, limit: int,
                combine: Callable[[Item, Item], Item]) -> tuple[list[Item], str | None]:
    """Merge the workers' pages into one; returns the items and the next cursor.

    Each worker gave its items in key order after the cursor, up to the key it
    would continue after (None: it has no more). Every key up to the smallest
    of those was seen by every worker, so the page is the first `limit` keys
    up to it. Items with the same key (one tenant on several workers) are
    combined.
    """
    by_key: dict[str, Item] = {}
    for items, _ in pages:
        for item in items:
            name = item[key]
            by_key[name] = combine(by_key[name], item) if name in by_key else item
    continuations = [after for _, after in pages if after is not None]
    bound = min(continuations) if continuations else None
    ordered = sorted(name for name in by_key if bound is None or name.encode("utf-8") <= bound)
    chosen = ordered[:limit]
    if len(ordered) > limit:
        cursor: str | None = encode_cursor(chosen[-1])
    elif bound is not None:
        cursor = encode_cursor(bound.decode("utf-8"))
    else:
        cursor = None
    return [by_key[name] for name in chosen], cursor
