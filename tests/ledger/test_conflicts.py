"""The conflict rule (app/ledger/conflicts.py): pure, no servers."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from app.ledger.closure_row import ClosureRow, SourceOffset, decode_closure
from app.ledger.conflicts import Verdict, judge, plan_batch
from tests.support.closures import BASE_TIME, closure, encode


def row(closure_id: str, *, delta: int = 50, offset: int = 0, emitted_secs: int = 0) -> ClosureRow:
    value = closure(closure_id, delta=delta, emitted_at=BASE_TIME + timedelta(seconds=emitted_secs))
    result = decode_closure(SourceOffset("closures", 0, offset), None, encode(value))
    assert isinstance(result, ClosureRow)
    return result


def test_judge() -> None:
    assert judge(None, b"a") is Verdict.NEW
    assert judge(b"a", b"a") is Verdict.DUPLICATE
    assert judge(b"a", b"b") is Verdict.CONFLICT


def test_a_batch_repeating_a_closure_writes_it_once() -> None:
    plan = plan_batch({}, [row("s-1", offset=0), row("s-1", offset=1, emitted_secs=9), row("s-2", offset=2)])
    assert [new.closure_id for new in plan.new_rows] == ["s-1", "s-2"]
    assert plan.duplicates == Counter({"s-1": 1})
    assert plan.conflicts == []


def test_other_content_under_a_held_id_is_a_conflict_and_the_held_row_stands() -> None:
    held = row("s-1")
    plan = plan_batch({"s-1": held.content_sha256}, [row("s-1", delta=51, offset=7)])
    assert plan.new_rows == [] and not plan.duplicates
    [conflict] = plan.conflicts
    assert conflict.row.total_token_count == 151 and conflict.stored_sha256 == held.content_sha256


def test_the_first_delivery_in_a_batch_stands_for_the_later_ones() -> None:
    plan = plan_batch({}, [row("s-1", delta=1, offset=0), row("s-1", delta=2, offset=1), row("s-1", delta=1, offset=2)])
    assert [new.delta_token_count for new in plan.new_rows] == [1]
    assert plan.duplicates == Counter({"s-1": 1})
    assert [conflict.row.delta_token_count for conflict in plan.conflicts] == [2]


# Deliveries: (closure id, content variant, emitted_at), in offset order.
deliveries = st.lists(st.tuples(st.sampled_from(["s-1", "s-2", "s-3"]), st.integers(0, 2), st.integers(0, 100)),
                      max_size=40)


@settings(max_examples=300)
@given(deliveries, st.lists(st.integers(1, 10), max_size=10))
def test_batching_never_changes_the_outcome(stream: list[tuple[str, int, int]], cuts: list[int]) -> None:
    """Whatever the batch boundaries: one row per id with its first content,
    every identical repeat counted, every differing one a conflict."""
    rows = [row(closure_id, delta=variant, offset=offset, emitted_secs=emitted)
            for offset, (closure_id, variant, emitted) in enumerate(stream)]
    stored: dict[str, bytes] = {}
    stored_delta: dict[str, int] = {}
    duplicates: Counter[str] = Counter()
    conflicts = 0
    start = 0
    for size in [*cuts, len(rows)]:
        batch, start = rows[start:start + size], start + size
        plan = plan_batch(stored, batch)
        for new in plan.new_rows:
            assert new.closure_id not in stored
            stored[new.closure_id] = new.content_sha256
            stored_delta[new.closure_id] = new.delta_token_count
        duplicates += plan.duplicates
        conflicts += len(plan.conflicts)
        if start >= len(rows):
            break

    first_variant: dict[str, int] = {}
    for closure_id, variant, _ in stream:
        first_variant.setdefault(closure_id, variant)
    assert stored_delta == first_variant
    expected_duplicates = Counter(closure_id for index, (closure_id, variant, _) in enumerate(stream)
                                  if index != next(i for i, item in enumerate(stream) if item[0] == closure_id)
                                  and variant == first_variant[closure_id])
    assert duplicates == expected_duplicates
    assert conflicts == len(stream) - len(first_variant) - sum(expected_duplicates.values())
