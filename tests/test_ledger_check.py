"""The ledger's check against the simulator's oracle (app/dev/ledger_check.py): pure, no database."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.dev.ledger_check import check_ledger, format_ledger_report
from app.dev.oracle import Expected, ExpectedClosure
from app.dev.simulator import Simulation, SimulationConfig

EXPECTED = Simulation(SimulationConfig(sessions=40, seed=7, run_id="sim-check")).expected


def row(closure: ExpectedClosure, **changes: Any) -> dict[str, Any]:
    """The row the ledger stores for `closure` (read_ledger_closures' shape)."""
    values = {
        "closure_id": closure.session_id, "tenant_id": closure.tenant_id, "provider_id": closure.provider_id,
        "model": closure.model, "reason": closure.reason.value, "closed_at": "2026-01-05T10:00:00.000000Z",
        "ttl_secs": closure.ttl_secs, "round_count": closure.round_count, "missing_rounds": closure.missing_rounds,
        "initial_token_count": closure.initial_token_count, "delta_token_count": closure.delta_token_count,
        "total_token_count": closure.total_token_count, "duplicates": 0,
    }
    return {**values, **changes}


def rows(expected: Expected = EXPECTED) -> list[dict[str, Any]]:
    return [row(closure) for closure in expected.closures.values()]


def test_a_ledger_with_one_row_per_session_and_the_oracle_s_figures_is_ok() -> None:
    stored = rows()
    stored[0]["duplicates"] = 2
    report = check_ledger(EXPECTED, stored, [])
    assert report.ok, report.problems()
    assert (report.rows, report.lost, report.double_billed, report.duplicates) == (40, 0, 0, 2)
    assert report.tokens_by_tenant == EXPECTED.tokens_by_tenant()
    assert format_ledger_report(report).endswith("OK")


def test_a_missing_row_is_lost_and_its_tenant_short() -> None:
    stored = rows()
    gone = stored.pop(3)
    report = check_ledger(EXPECTED, stored, [])
    assert not report.ok and report.lost == 1 and report.double_billed == 0
    assert report.closures.missing == [gone["closure_id"]]
    want = EXPECTED.tokens_by_tenant()[gone["tenant_id"]]
    assert report.tenants_differing == {gone["tenant_id"]: (want, want - gone["total_token_count"])}
    assert format_ledger_report(report).endswith("MISMATCH")


def test_more_tokens_than_sent_is_double_billed_and_fewer_is_lost() -> None:
    stored = rows()
    stored[0] = {**stored[0], "total_token_count": stored[0]["total_token_count"] + 1}
    stored[1] = {**stored[1], "total_token_count": stored[1]["total_token_count"] - 1}
    report = check_ledger(EXPECTED, stored, [])
    assert not report.ok and (report.lost, report.double_billed) == (1, 1)
    assert set(report.closures.mismatched) == {stored[0]["closure_id"], stored[1]["closure_id"]}


def test_a_row_of_a_session_never_planned_is_double_billed() -> None:
    stored = [*rows(), row(replace(next(iter(EXPECTED.closures.values())), session_id="sim-check-s999999"))]
    report = check_ledger(EXPECTED, stored, [])
    assert not report.ok and report.double_billed == 1 and report.closures.unexpected == ["sim-check-s999999"]


def test_wrong_figures_besides_tokens_are_found() -> None:
    stored = rows()
    stored[5] = {**stored[5], "model": "another-model", "reason": "closed" if stored[5]["reason"] != "closed"
                 else "ttl_expired"}
    report = check_ledger(EXPECTED, stored, [])
    assert not report.ok and set(report.closures.mismatched[stored[5]["closure_id"]]) == {"reason", "record.model"}


def test_rows_and_conflicts_of_other_runs_are_left_out() -> None:
    other = Simulation(SimulationConfig(sessions=5, seed=8, run_id="sim-other")).expected
    report = check_ledger(EXPECTED, rows() + rows(other), [{"closure_id": "sim-other-s000001"}])
    assert report.ok, report.problems()
    assert report.rows == 40


def test_conflicts_must_be_exactly_the_expected_ones() -> None:
    first, second = list(EXPECTED.closures)[:2]
    conflicts = [{"closure_id": first}, {"closure_id": first}]
    assert check_ledger(EXPECTED, rows(), conflicts, expected_conflicts=[first]).ok
    assert check_ledger(EXPECTED, rows(), conflicts, expected_conflicts=[first]).conflicts == {first: 2}
    assert not check_ledger(EXPECTED, rows(), conflicts).ok
    assert not check_ledger(EXPECTED, rows(), conflicts, expected_conflicts=[first, second]).ok


def test_a_closure_of_the_run_among_the_rejects_is_a_problem() -> None:
    report = check_ledger(EXPECTED, rows(), [], ["t.session-closures/0@7: invalid closure"])
    assert not report.ok
    assert any("ledger_rejects" in problem for problem in report.problems())


def test_the_figures_name_the_ledger() -> None:
    figures = check_ledger(EXPECTED, rows()[1:], []).figures()
    assert figures["ledger_rows"] == 39 and figures["ledger_lost"] == 1 and figures["ledger_double_billed"] == 0
    assert set(figures) == {"ledger_rows", "ledger_tokens", "ledger_lost", "ledger_double_billed",
                            "ledger_duplicates", "ledger_conflicts", "ledger_rejects"}
