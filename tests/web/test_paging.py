"""Parameters, cursors and the paging merge over several workers, property-tested."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from app.rules import State
from app.web.errors import ApiError
from app.web.fanout import add_counts
from app.web.paging import CURSOR_PATTERN, decode_cursor, encode_cursor, merge_pages, page_after, page_in_order
from app.web.params import SessionListParams, SessionParams, TenantListParams, parse

keys = st.text(min_size=1, max_size=12)


def refused(model, query: list[tuple[str, str]], match_info: dict[str, str] | None = None) -> dict:
    """The body of the 400 answer to a request with these parameters."""
    with pytest.raises(ApiError) as error:
        parse(model, "/sessions", MultiDict(query), match_info or {})
    assert error.value.status == 400
    return error.value.body


@given(keys)
def test_a_cursor_is_the_position_after_its_key(key: str) -> None:
    cursor = encode_cursor(key)
    assert CURSOR_PATTERN.fullmatch(cursor)
    assert decode_cursor(cursor) == key.encode("utf-8")
    assert parse(SessionListParams, "/sessions", MultiDict(cursor=cursor), {}).cursor == key.encode("utf-8")


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True).filter(bool))
def test_every_well_formed_cursor_is_a_position(cursor: str) -> None:
    assert isinstance(decode_cursor(cursor), bytes)


@pytest.mark.parametrize("cursor", ["", "A", "AAAAA", "a+b/", "ab=", "é"])
def test_a_malformed_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(cursor)
    body = refused(TenantListParams, [("cursor", cursor)])
    assert body["parameter"] == "cursor" and body["detail"] == "parameter 'cursor' is not a cursor this API gave out"


def test_limit_defaults_to_100_and_stays_within_1_to_1000() -> None:
    def limit(value: str | None) -> int:
        return parse(SessionListParams, "/sessions", MultiDict([] if value is None else [("limit", value)]), {}).limit

    assert limit(None) == 100
    assert limit("1") == 1 and limit("1000") == 1000
    for bad in ("0", "1001", "-5", "+5", "1.5", "", " 7", "1_0", "١٢", "9" * 5000):
        body = refused(SessionListParams, [("limit", bad)])
        assert body["parameter"] == "limit" and body["detail"] == "parameter 'limit' must be an integer in 1..1000"


def test_state_filter_takes_a_comma_separated_list() -> None:
    def states(value: str | None) -> set[State] | None:
        query = MultiDict([] if value is None else [("state", value)])
        state = parse(SessionListParams, "/sessions", query, {}).state
        return None if state is None else set(state)

    assert states(None) is None
    assert states("pending,active") == {State.PENDING, State.ACTIVE}
    for bad in ("", "live", "active,", "ACTIVE"):
        body = refused(SessionListParams, [("state", bad)])
        assert body["detail"] == "parameter 'state' must be a comma-separated list of pending, active, closed"


def test_identifiers_are_1_to_128_characters_in_the_path_and_the_query() -> None:
    assert parse(SessionParams, "/sessions/x", MultiDict(), {"session_id": "s" * 128}).session_id == "s" * 128
    body = refused(SessionParams, [], {"session_id": "s" * 129})
    assert body == {"error": "bad_request", "detail": "parameter 'session_id' must be 1..128 characters",
                    "parameter": "session_id"}
    assert refused(SessionListParams, [("tenant_id", "")])["parameter"] == "tenant_id"


def test_unknown_and_repeated_parameters_are_refused() -> None:
    assert refused(SessionListParams, [("tenant", "acme")]) == {
        "error": "bad_request", "parameter": "tenant",
        "detail": "parameter 'tenant' is not a parameter of /sessions (expected: cursor, limit, state, tenant_id)"}
    assert refused(SessionListParams, [("limit", "1"), ("limit", "2")])["detail"] == \
        "parameter 'limit' is given more than once"
    # A path parameter is not also a query parameter.
    assert refused(SessionParams, [("session_id", "y")], {"session_id": "x"})["detail"].endswith("(expected: none)")


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
            items, next_key = page_after(((key, {"id": key}) for key in shard), after, limit)
            pages.append((items, None if next_key is None else next_key.encode("utf-8")))
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


@given(st.lists(st.tuples(keys, st.integers(0, 2), st.booleans()), max_size=60), st.integers(1, 7),
       st.integers(0, 5))
def test_pages_read_in_order_with_a_read_limit_yield_every_match_once(placed: list[tuple[str, int, bool]],
                                                                      limit: int, max_read: int) -> None:
    """/sessions: each worker reads its keys in order from the cursor, at most
    `max_read` keys the filter leaves out per page; pages may come short or
    empty, and paging on still yields every matching key once, in order."""
    shards: list[dict[str, bool]] = [{}, {}, {}]
    for key, shard, shown in placed:
        if not any(key in other for other in shards):
            shards[shard][key] = shown
    seen: list[str] = []
    after: bytes | None = None
    for _ in range(len(placed) * 2 + 2):
        pages = []
        for shard in shards:
            ordered = sorted(key for key in shard if after is None or key.encode("utf-8") > after)
            items, next_key = page_in_order(((key, {"id": key} if shard[key] else None) for key in ordered),
                                            limit, max_read)
            assert len(items) <= limit
            pages.append((items, None if next_key is None else next_key.encode("utf-8")))
        items, cursor = merge_pages(pages, "id", limit, combine=lambda first, _: first)
        seen += [item["id"] for item in items]
        if cursor is None:
            break
        after = decode_cursor(cursor)
    else:
        raise AssertionError("paging did not end")
    assert seen == sorted(key for shard in shards for key, shown in shard.items() if shown)


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


def test_a_page_reads_at_most_the_page_and_the_read_limit() -> None:
    """A filter that matches nothing in a huge table: the page stops reading."""
    read = []

    def keys_read() -> Iterator[tuple[str, None]]:
        for number in range(10**6):
            read.append(number)
            yield f"k{number:07}", None

    items, next_key = page_in_order(keys_read(), 100, 2000)
    assert items == [] and next_key == "k0002000" and len(read) == 2001
