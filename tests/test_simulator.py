"""The simulator's plan and oracle, checked against the accounting rules.

`app.rules` is the independent judge: the simulated events are folded through
`apply` exactly as a worker would (decode, deliver with increasing offsets per
partition, expire idle sessions once their TTL and grace are over), and every
verdict and closure must be the one the oracle claims.  No broker needed.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from app.dev.oracle import Expected, check_closures, check_rejections
from app.dev.partitioners import partition_for
from app.dev.simulator import (
    BAD_KINDS,
    CLOCK_SKEW_SECS,
    Form,
    PlannedEvent,
    Simulation,
    SimulationConfig,
    Stamper,
    fit_to_rate,
    simulate_command,
)
from app.rules import (
    DEFAULT_POLICY,
    SECOND,
    Closure,
    Delivery,
    Expire,
    InvalidEvent,
    Outcome,
    Rejection,
    Result,
    Session,
    Source,
    apply,
    decode_event,
    parse_timestamp,
)

EVENTS_TOPIC = "session-events"
PARTITIONS = 4
START = parse_timestamp("2025-06-01T12:00:00Z")
# Time between two sends in the fold: a fast gateway.
SEND_INTERVAL = 1_000  # µs


@dataclass
class Fold:
    """What a single worker would make of a simulation's records, in order."""

    verdicts: list[tuple[PlannedEvent, Outcome]] = field(default_factory=list)
    closures: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    open_before_expiry: set[str] = field(default_factory=set)


def fold(simulation: Simulation) -> Fold:
    result = Fold()
    stamper = Stamper()
    table: dict[str, Session] = {}
    next_offset = Counter()
    now = START

    def deliver(session_id: str | None, delivery: Delivery, at: int) -> Outcome:
        state = table.get(session_id) if session_id is not None else None
        state, outputs = apply(state, delivery, at)
        if session_id is not None:
            if state is None:
                table.pop(session_id, None)
            else:
                table[session_id] = state
        outcomes = [output for output in outputs if isinstance(output, Outcome)]
        assert len(outcomes) == 1
        for output in outputs:
            if isinstance(output, Closure):
                result.closures.append(output.to_json(at))
            elif isinstance(output, Rejection):
                result.rejections.append(output.to_json(at))
        return outcomes[0]

    for planned in simulation.events():
        now += SEND_INTERVAL
        value = stamper.encode(planned, now)
        partition = partition_for(planned.key, PARTITIONS, "crc32")
        source = Source(EVENTS_TOPIC, partition, next_offset[partition])
        next_offset[partition] += 1
        message = decode_event(planned.key, value)
        session_id = message.session_key if isinstance(message, InvalidEvent) else message.session_id
        result.verdicts.append((planned, deliver(session_id, Delivery(source, message), now)))

    # The TTL timer's turn: every session still open, once its deadline passed.
    result.open_before_expiry = {sid for sid, state in table.items() if state.record.closed_at is None}
    deadline = max((table[sid].record.expires_at for sid in result.open_before_expiry), default=now)
    expire_at = deadline + DEFAULT_POLICY.grace + SECOND
    for session_id in sorted(result.open_before_expiry):
        deliver(session_id, Expire(session_id), expire_at)
    return result


MIXED = SimulationConfig(sessions=400, rounds=6, duplicates=0.15, bad=0.15, idle=0.2, lost_rounds=0.05,
                         seed=11, run_id="sim-test")


@pytest.fixture(scope="module")
def mixed() -> tuple[Simulation, Fold]:
    simulation = Simulation(MIXED)
    return simulation, fold(simulation)


# --------------------------------------------------------------------------
# The plan


def test_same_seed_same_plan() -> None:
    first, second = Simulation(MIXED), Simulation(MIXED)
    assert list(first.events()) == list(second.events())
    assert first.expected == second.expected


def test_other_seed_other_plan() -> None:
    assert list(Simulation(MIXED).events()) != list(Simulation(replace(MIXED, seed=12)).events())


def test_events_walks_every_session_event_once_in_session_order() -> None:
    simulation = Simulation(MIXED)
    by_key: dict[bytes, list[PlannedEvent]] = {}
    for event in simulation.events():
        by_key.setdefault(event.key, []).append(event)
    for plan in simulation.sessions():
        key = plan.closure.session_id.encode()
        assert [e for e in plan.events if e.key == key] == by_key[key]


def test_events_are_interleaved_across_sessions() -> None:
    keys = [event.key for event in Simulation(MIXED).events()]
    switches = sum(1 for a, b in itertools.pairwise(keys) if a != b)
    assert switches > len(keys) / 2


def test_event_ids_are_unique_and_carry_the_run_id(mixed) -> None:
    simulation, _ = mixed
    sent = [event for event in simulation.events() if event.body is not None]
    ids = [event.event_id for event in sent]
    assert len(ids) == len(set(ids))
    assert all(event_id.startswith("sim-test-") for event_id in ids)


def test_plan_covers_every_outcome(mixed) -> None:
    simulation, _ = mixed
    expected = simulation.expected
    assert set(expected.rejected) == {reason.value for reason, _ in BAD_KINDS.values()}
    assert expected.duplicate > 0
    assert all(count > 0 for count in expected.closures_by_reason().values())
    assert any(closure.missing_rounds for closure in expected.closures.values())


def test_resend_is_the_same_bytes_and_stamps_are_the_send_time() -> None:
    stamper = Stamper()
    original = PlannedEvent(b"s", "s-e0", {"event_id": "s-e0", "type": "session.closed"}, Result.APPLIED,
                            resent_later=True)
    value = stamper.encode(original, START)
    assert orjson.loads(value)["occurred_at"] == "2025-06-01T12:00:00Z"
    assert stamper.encode(PlannedEvent(b"s", "s-e0", None, Result.DUPLICATE), START + 60 * SECOND) == value
    skewed = PlannedEvent(b"s", "s-e1", {"event_id": "s-e1"}, Result.REJECTED, skew_secs=CLOCK_SKEW_SECS)
    assert parse_timestamp(orjson.loads(stamper.encode(skewed, START))["occurred_at"]) == \
        START + CLOCK_SKEW_SECS * SECOND


@pytest.mark.parametrize("form", [Form.TRUNCATED, Form.NON_UTF8])
def test_broken_bytes_still_name_the_run(form: Form) -> None:
    body = {"event_id": "sim-x-s000001-e3", "type": "round.completed", "note": "@@not-utf-8@@"}
    value = Stamper().encode(PlannedEvent(b"k", "sim-x-s000001-e3", body, Result.REJECTED, form=form), START)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(value)
    assert b"sim-x-" in value


# --------------------------------------------------------------------------
# The oracle, against the rules


def test_every_verdict_is_the_planned_one(mixed) -> None:
    _, result = mixed
    wrong = [(planned.event_id, planned.result, planned.reason, outcome.result, outcome.reason)
             for planned, outcome in result.verdicts
             if (outcome.result, outcome.reason) != (planned.result, planned.reason)]
    assert wrong == []


def test_outcome_counts_match_expected(mixed) -> None:
    simulation, result = mixed
    expected = simulation.expected
    outcomes = Counter(outcome.result for _, outcome in result.verdicts)
    rejected = Counter(outcome.reason.value for _, outcome in result.verdicts if outcome.result is Result.REJECTED)
    assert len(result.verdicts) == expected.events_sent
    assert outcomes[Result.APPLIED] == expected.applied
    assert outcomes[Result.DUPLICATE] == expected.duplicate
    assert rejected == expected.rejected
    assert set(outcomes) <= {Result.APPLIED, Result.DUPLICATE, Result.REJECTED}


def test_only_idle_sessions_wait_for_the_ttl(mixed) -> None:
    simulation, result = mixed
    idle = {plan.closure.session_id for plan in simulation.sessions() if plan.idle}
    assert result.open_before_expiry == idle


def test_closures_match_expected(mixed) -> None:
    simulation, result = mixed
    expected = simulation.expected
    report = check_closures(expected, result.closures)
    assert report.ok, report
    assert (report.received, report.repeated) == (expected.sessions, 0)
    assert sum(closure["total_token_count"] for closure in result.closures) == expected.total_tokens
    assert Counter(closure["reason"] for closure in result.closures) == expected.closures_by_reason()


def test_rejections_match_expected(mixed) -> None:
    simulation, result = mixed
    report = check_rejections(simulation.expected, result.rejections)
    assert report.ok, report
    assert report.repeated == 0


@settings(max_examples=25, deadline=None)
@given(
    sessions=st.integers(0, 40),
    rounds=st.floats(0, 12),
    duplicates=st.floats(0, 1),
    bad=st.floats(0, 1),
    idle=st.floats(0, 1),
    lost_rounds=st.floats(0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_any_config_folds_to_its_oracle(sessions, rounds, duplicates, bad, idle, lost_rounds, seed) -> None:
    simulation = Simulation(SimulationConfig(sessions=sessions, rounds=rounds, duplicates=duplicates, bad=bad,
                                             idle=idle, lost_rounds=lost_rounds, seed=seed, run_id="sim-prop"))
    result = fold(simulation)
    assert all((outcome.result, outcome.reason) == (planned.result, planned.reason)
               for planned, outcome in result.verdicts)
    assert check_closures(simulation.expected, result.closures).ok
    assert check_rejections(simulation.expected, result.rejections).ok


# --------------------------------------------------------------------------
# The checkers


def test_closure_checker_flags_missing_different_and_unexpected(mixed) -> None:
    simulation, result = mixed
    expected = simulation.expected
    closures = [dict(closure) for closure in result.closures]
    missing = closures.pop()["closure_id"]
    wrong = closures[0]
    wrong["total_token_count"] += 1
    stranger = {**closures[1], "closure_id": "sim-test-s999999"}
    other_run = {**closures[2], "closure_id": "sim-other-s000001"}
    report = check_closures(expected, [*closures, stranger, other_run])
    assert not report.ok
    assert report.missing == [missing]
    assert report.unexpected == ["sim-test-s999999"]
    assert report.mismatched == {wrong["closure_id"]: {
        "total_token_count": {"expected": wrong["total_token_count"] - 1, "actual": wrong["total_token_count"]}}}
    assert report.inconsistent == []


def test_closure_checker_accepts_identical_repeats(mixed) -> None:
    simulation, result = mixed
    repeat = {**result.closures[0], "emitted_at": "2030-01-01T00:00:00Z"}
    report = check_closures(simulation.expected, [*result.closures, repeat])
    assert report.ok
    assert report.repeated == 1


def test_closure_checker_flags_repeats_that_differ(mixed) -> None:
    simulation, result = mixed
    first = result.closures[0]
    repeat = {**first, "record": {**first["record"], "closed_at": "2030-01-01T00:00:00Z"}}
    report = check_closures(simulation.expected, [*result.closures, repeat])
    assert not report.ok
    assert report.inconsistent == [first["closure_id"]]
    assert report.mismatched == {}


def test_closure_checker_flags_a_wrong_record(mixed) -> None:
    simulation, result = mixed
    closure = result.closures[0]
    wrong = {**closure, "reason": "ttl_expired" if closure["reason"] == "closed" else "closed",
             "record": {**closure["record"], "round_count": closure["record"]["round_count"] + 2}}
    report = check_closures(simulation.expected, [wrong, *result.closures[1:]])
    assert set(report.mismatched[closure["closure_id"]]) == {"reason", "record.round_count"}


def test_rejection_checker_counts_each_source_once(mixed) -> None:
    simulation, result = mixed
    expected = simulation.expected
    again = {**result.rejections[0], "rejected_at": "2030-01-01T00:00:00Z"}
    report = check_rejections(expected, [*result.rejections, again])
    assert report.ok
    assert report.repeated == 1

    extra = {**result.rejections[0], "source": {"topic": EVENTS_TOPIC, "partition": 0, "offset": 10**9}}
    assert not check_rejections(expected, [*result.rejections, extra]).ok
    conflict = {**result.rejections[0], "reason": "internal_error"}
    report = check_rejections(expected, [*result.rejections, conflict])
    assert not report.ok
    assert len(report.conflicting) == 1
    assert not check_rejections(expected, result.rejections[1:]).ok


def test_rejection_checker_ignores_other_runs(mixed) -> None:
    simulation, result = mixed
    stranger = {"reason": "invalid_event", "event": {"event_id": "sim-other-s1-e1"}, "raw": None,
                "source": {"topic": EVENTS_TOPIC, "partition": 0, "offset": 10**9}}
    assert check_rejections(simulation.expected, [*result.rejections, stranger]).ok


def test_empty_expectation_is_met_by_nothing() -> None:
    expected = Expected("sim-none")
    assert check_closures(expected, []).ok
    assert check_rejections(expected, []).ok


# --------------------------------------------------------------------------
# Partitioning, pacing, the command


@pytest.mark.parametrize("key", [b"sim-1-s000001", b"\xffsim", b"", b"a" * 200])
def test_partitioners_match_the_clients(key: bytes) -> None:
    assert partition_for(key, 12, "murmur2") == DefaultPartitioner()(key, list(range(12)), list(range(12)))
    assert partition_for(key, 12, "crc32") == zlib.crc32(key) % 12


def test_fit_to_rate_keeps_fast_runs_and_slows_nothing_into_expiry() -> None:
    config = SimulationConfig()
    assert fit_to_rate(config, 0) == config
    assert fit_to_rate(config, 10_000) == config
    slow = fit_to_rate(config, 0.5)
    assert slow.in_flight < config.in_flight
    low, high = slow.idle_ttl_secs
    assert low > 30 and high > low  # an idle burst takes up to 30 s at 0.5 events/s


def test_simulate_without_a_broker_says_how_to_get_one(monkeypatch) -> None:
    monkeypatch.delenv("ACCOUNTANT_BROKER", raising=False)
    result = CliRunner().invoke(simulate_command, ["--sessions", "1"])
    assert result.exit_code == 2
    assert "accountant dev" in result.output and "ACCOUNTANT_BROKER" in result.output
