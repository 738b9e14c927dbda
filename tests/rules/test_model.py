"""The positional copies `apply` uses instead of `dataclasses.replace` (for
speed) change what they name and keep every other field."""

from __future__ import annotations

from dataclasses import fields, replace

from app.rules import CloseReason, MissingRounds, Reason, Rejection, Session, SessionRecord, Source, Tombstone

RECORD = SessionRecord("s", "t", "p", "m", 1, 2, 3, 4, 5, 6, 7, {"k": "v"})
SESSION = Session(RECORD, 8, CloseReason.CLOSED, 9, 10, 11, 12, 13, MissingRounds((1, 2), 14),
                  (Rejection("s", Reason.OVERFLOW, "d", None, None, Source("x", 0, 1)),))
TOMBSTONE = Tombstone(b"d" * 16, 1, 2, 3, 4)


def test_the_samples_set_every_field_apart_from_its_default() -> None:
    """Or a field a copy forgets could go unnoticed."""
    for sample in (RECORD, SESSION, TOMBSTONE):
        values = [getattr(sample, f.name) for f in fields(sample)]
        assert all(value not in (None, ()) for value in values)


def test_a_record_with_new_round_totals_keeps_the_rest() -> None:
    assert RECORD.with_rounds(50, 70) == replace(RECORD, round_count=50, delta_token_count=70)


def test_an_advanced_session_keeps_the_rest() -> None:
    other = replace(RECORD, session_id="other")
    missing = MissingRounds((5, 6), 0)
    assert SESSION.advanced(other, 99, missing) == replace(SESSION, record=other, last_offset=99, missing=missing)
    assert SESSION.at_offset(99) == replace(SESSION, last_offset=99)


def test_a_tombstone_at_a_later_offset_keeps_the_rest() -> None:
    assert TOMBSTONE.at_offset(99) == replace(TOMBSTONE, last_offset=99)
