"""Gaps (app/ledger/gaps.py): pure, against a naive model of what Kafka holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.gaps import Gap, GapKind, accepted_gap_flag, find_gap


@given(stored=st.none() | st.integers(0, 200), start=st.integers(0, 100), length=st.integers(0, 100))
def test_a_gap_is_found_exactly_when_the_ledger_cannot_resume_where_it_stands(
        stored: int | None, start: int, length: int) -> None:
    end = start + length
    held = set(range(start, end))  # the offsets Kafka still holds
    position = 0 if stored is None else stored
    # Naive: the ledger may resume iff every offset from its position to the end is still held.
    resumable = position <= end and all(offset in held for offset in range(position, end))
    gap = find_gap("t", 3, stored, start, end)
    assert (gap is None) == resumable
    if gap is not None:
        assert (gap.topic, gap.partition, gap.from_offset, gap.to_offset) == ("t", 3, position, start)
        assert gap.kind is (GapKind.DELETED if position < start else GapKind.PAST_END)
        assert accepted_gap_flag(gap.flag) == gap.flag


def test_the_flag_and_the_description_say_what_to_run_and_what_was_lost() -> None:
    gap = Gap("closures", 2, 100, 250, GapKind.DELETED)
    assert gap.flag == "2:100-250"
    assert "offsets 100..249 were deleted" in gap.describe() and "150 records" in gap.describe()
    assert "past the partition's end" in Gap("closures", 2, 900, 0, GapKind.PAST_END).describe()


@pytest.mark.parametrize("text, flag", [("0:0-5", "0:0-5"), (" 12:007-30 ", "12:7-30")])
def test_an_accepted_gap_is_read_as_the_flag_spells_it(text: str, flag: str) -> None:
    assert accepted_gap_flag(text) == flag


@pytest.mark.parametrize("text", ["0:5", "a:0-5", "0:0-5,1:0-2", "-1:0-5", ""])
def test_a_malformed_accepted_gap_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="PARTITION:FROM-TO"):
        accepted_gap_flag(text)
