"""Parameters, cursors and the paging merge over several workers, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.openapi import CURSOR_PATTERN
from app.rules import State
from app.web import (
    ApiError, add_counts, decode_cursor, encode_cursor, merge_pages, page_after, page_limit, state_filter,
)

keys = st.text(min_size=1, max_size=12)


@given(keys)
def test_a_cursor_is_the_position_after_its_key(key: str) -> None:
    cursor = encode_cursor(key)
    assert CURSOR_PATTERN.fullmatch(cursor)
    assert decode_cursor(cursor) == key.encode("utf-8")


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True).filter(bool))
def test_every_well_formed_cursor_is_a_position(cursor: str) -> None:
    assert isinstance(decode_cursor(cursor), bytes)


@pytest.mark.parametrize("cursor", ["", "A", "AAAAA", "a+b/", "ab=", "é"])
def test_a_malformed_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(ApiError) as refused:
        decode_cursor(cursor)
    assert refused.value.status == 400 and refused.value.body["parameter"] == "cursor"


def test_limit_defaults_to_100_and_stays_within_1_to_1000() -> None:
    assert page_limit(None) == 100
    assert page_limit("1") == 1 and page_limit("1000") == 1000
    for bad in ("0", "1001", "-5", "+5", "1.5", "", " 7", "1_0", "١٢", "9" * 5000):
        with pytest.raises(ApiError):
            page_limit(bad)


def test_state_filter_takes_a_comma_separated_list() -> None:
    assert state_filter(None) is None
    assert state_filter("pending,active") == {State.PENDING, State.ACTIVE}
    for bad in ("", "live", "active,", "ACTIVE"):
        with pytest.raises(ApiError):
            state_filter(bad)


def test_counts_add_up_field_by_field() -> None:
    total = add_counts({"tenant_id": "a", "n": 1, "by": {"x": 1}, "urls": ["u1"], "retention_secs": 5.0},
                       {"tenant_id": "a", "n": 2, "by": {"x": 1, "y": 3}, "urls": ["u2"], "retention_secs": 5.0},
                       keep=("retention_secs",))
    assert total == {"tenant_id": "a", "n": 3, "by": {"x": 2, "y": 3}, "urls": ["u1", "u2"], "retention_secs": 5.0}


def page_through(shards: list[set[str]], limit: int, between_pages=lambda: None) -> list[str]:
    """Page through the union of the shards as a client would, merging every page."""
    seen: list[str] = []
    after: bytes | None = None
    while True:
        pages = []
        for shard in shards:
            items, more = page_after(((key, {"id": key}) for key in shard), after, limit)
            pages.append((items, more))
        items, cursor = merge_pages(pages, "id", limit, combine=lambda first, _: first)
        assert len(items) <= limit
        seen += [item["id"] for item in items]
        if cursor is None:
            return seen
        after = decode_cursor(cursor)
        between_pages()


@given(st.lists(st.tuples(keys, st.integers(0, 3)), max_size=40), st.integers(1, 7))
def test_paging_over_shards_yields_every_key_once_in_order(placed: list[tuple[str, int]], limit: int) -> None:
    shards: list[set[str]] = [set() for _ in range(4)]
    for key, shard in placed:
        shards[shard].add(key)
    assert page_through(shards, limit) == sorted({key for key, _ in placed})


@given(st.lists(keys, unique=True, max_size=30), st.lists(keys, max_size=10), st.integers(1, 5), st.randoms())
def test_paging_is_stable_while_records_come_and_go(initial: list[str], arriving: list[str], limit: int,
                                                    chance) -> None:
    """Keys present from start to end appear exactly once; no key appears twice."""
    shards: list[set[str]] = [set(), set()]
    for key in initial:
        shards[chance.randrange(2)].add(key)
    doomed = chance.sample(initial, len(initial) // 3)
    removed: set[str] = set()
    arrivals = list(arriving)

    def churn() -> None:
        if doomed:
            removed.add(doomed.pop())
            for shard in shards:
                shard -= removed
        if arrivals:
            shards[chance.randrange(2)].add(arrivals.pop())

    seen = page_through(shards, limit, churn)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(initial) - removed <= set(seen)
