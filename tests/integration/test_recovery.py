"""Stopping or killing the worker mid-stream loses no usage and bills nothing twice."""

from __future__ import annotations

import importlib.util
import random
import re

import pytest

from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import consume_json, end_offsets, produce_events, record_count
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, accounted

pytestmark = pytest.mark.integration


def make_sessions(prefix: str, count: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Interleaved events of `count` closed sessions, and each one's expected total."""
    rng = random.Random(seed)
    per_session = {}
    expected = {}
    for n in range(count):
        sid = f"{prefix}-{n}"
        deltas = [rng.randrange(1, 5000) for _ in range(rng.randrange(1, 12))]
        per_session[sid] = session_events(sid, deltas, initial=rng.randrange(0, 10_000), ttl_secs=3600)
        expected[sid] = per_session[sid][1]["initial_token_count"] + sum(deltas)
    # Interleave like a gateway: sessions progress concurrently, each in order.
    queues = list(per_session.values())
    events = []
    while queues:
        queue = rng.choice(queues)
        events.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return events, expected


def assert_closures_exact(deployment: Deployment, expected: dict[str, int], timeout: float = 120) -> dict:
    closures = consume_json(deployment.bootstrap, deployment.closures_topic,
                            lambda got: set(expected) <= {c["closure_id"] for c in got}, timeout)
    by_session: dict[str, list[dict]] = {}
    for closure in closures:
        by_session.setdefault(closure["closure_id"], []).append(closure)
    missing = set(expected) - set(by_session)
    assert not missing, f"{len(missing)} sessions without closure, e.g. {sorted(missing)[:5]}"
    wrong = {sid: (by_session[sid][0]["total_token_count"], tokens, by_session[sid][0]["missing_rounds"],
                   by_session[sid][0]["record"]["round_count"])
             for sid, tokens in expected.items() if by_session[sid][0]["total_token_count"] != tokens}
    assert not wrong, f"token totals differ (got, sent, missing_rounds, round_count): {dict(list(wrong.items())[:5])}"
    for sid, copies in by_session.items():
        bodies = [{k: v for k, v in copy.items() if k != "emitted_at"} for copy in copies]
        assert all(body == bodies[0] for body in bodies), f"repeated closures of {sid} differ"
    return {"sessions": len(expected), "closures": len(closures),
            "repeats": len(closures) - len(by_session), "tokens": sum(expected.values())}


def wait_until_processing(worker: WorkerProcess, at_least: int, timeout: float = 60) -> None:
    def applied() -> bool:
        status, stats = worker.get("/stats")
        return status == 200 and stats["applied"] >= at_least

    wait_for(f"{worker.name} to apply {at_least} events", applied, timeout)


def assert_reads_on_from_the_commit(worker: WorkerProcess, committed: dict[int, int], ends: dict[int, int]) -> dict:
    """The worker that took over counted every input record from the offsets its
    predecessor committed to the end (each applied, duplicate, rejected or a
    redelivery), and rejected none: a crash or a restart is no bad input.
    Waited for: when the predecessor had sent every closure before it died,
    the oracle is satisfied before this worker has read anything."""
    from_commit = sum(end - committed.get(partition, 0) for partition, end in ends.items())
    seen: dict = {}

    def read_on() -> bool:
        seen.update(worker.stats(local=True))
        return accounted(seen) + seen["redelivered"] >= from_commit

    wait_for(f"{worker.name} to count the {from_commit} records from the commit on", read_on, timeout=60,
             observed=lambda: (seen, committed, ends))
    assert seen["rejected_total"] == 0, seen["rejected"]
    return seen


@pytest.mark.parametrize("store", ["memory", pytest.param("rocksdb", marks=pytest.mark.skipif(
    importlib.util.find_spec("rocksdict") is None, reason="rocksdict not installed (extra: rocksdb)"))])
def test_restart_recovers_the_table_from_the_changelog(deployment: Deployment, store: str) -> None:
    deployment.settings["ACCOUNTANT_STORE"] = store
    events, expected = make_sessions("restart", 200, seed=1)
    half = len(events) // 2
    first = deployment.worker("first").start().wait_ready()
    produce_events(deployment.bootstrap, deployment.events_topic, events[:half])
    wait_until_processing(first, half // 2)
    first.stop()
    committed = deployment.committed_offsets(deployment.events_topic)

    changelog_records = record_count(deployment.bootstrap, deployment.changelog_topic, deployment.partitions)
    second = deployment.worker("second").start().wait_ready()
    if store == "memory":
        # tables/changelog.py: the changelog is read in bulk, not through Faust's replay.
        loaded = re.findall(r"loaded changelog partitions \[0, 1, 2, 3\]: (\d+) records", second.log_path.read_text())
        assert loaded == [str(changelog_records)], loaded
    produce_events(deployment.bootstrap, deployment.events_topic, events[half:])
    assert_closures_exact(deployment, expected)
    ends = end_offsets(deployment.bootstrap, deployment.events_topic, deployment.partitions)
    stats = assert_reads_on_from_the_commit(second, committed, ends)
    assert stats["applied"] >= len(events) - half, "the second half was only ever sent to the second worker"


@pytest.mark.faults
def test_kill_9_under_load_loses_nothing_and_bills_nothing_twice(deployment: Deployment) -> None:
    events, expected = make_sessions("crash", 1500, seed=2)
    deployment.create_topics()
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    victim = deployment.worker("victim").start().wait_ready()
    wait_until_processing(victim, len(events) // 3)
    victim.kill()
    committed = deployment.committed_offsets(deployment.events_topic)

    survivor = deployment.worker("survivor").start().wait_ready()
    figures = assert_closures_exact(deployment, expected, timeout=180)
    print(f"kill -9 figures: events={len(events)} {figures}")
    ends = end_offsets(deployment.bootstrap, deployment.events_topic, deployment.partitions)
    assert sum(ends.values()) == len(events)
    assert_reads_on_from_the_commit(survivor, committed, ends)


@pytest.mark.faults
def test_a_takeover_before_the_first_commit_accounts_the_whole_input(deployment: Deployment) -> None:
    """The victim is killed before it ever commits an input offset; the input
    is complete and quiet when the survivor starts. Faust's seek after
    recovery only seeks partitions with a committed offset, so the events it
    fetched and dropped during recovery were never handed over and the
    survivor sat idle (app/faust_compat.py, `BatchConsumer.perform_seek`)."""
    events, expected = make_sessions("first-commit", 1500, seed=3)
    deployment.create_topics()
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    never = {"ACCOUNTANT_COMMIT_INTERVAL_SECS": "60", "ACCOUNTANT_TRANSACTION_COMMIT_INTERVAL_SECS": "60"}
    deployment.settings.update(never)  # the victim never commits, in either mode
    victim = deployment.worker("victim").start().wait_ready()
    wait_until_processing(victim, len(events) // 3)
    victim.kill()
    assert not deployment.committed_offsets(deployment.events_topic), "the victim committed: nothing shown"

    for setting in never:
        del deployment.settings[setting]
    survivor = deployment.worker("survivor").start().wait_ready()
    figures = assert_closures_exact(deployment, expected, timeout=120)
    print(f"takeover before the first commit: events={len(events)} {figures}")
    ends = end_offsets(deployment.bootstrap, deployment.events_topic, deployment.partitions)
    assert_reads_on_from_the_commit(survivor, {}, ends)


def test_idle_session_closes_by_ttl_after_a_restart_with_no_new_events(deployment: Deployment) -> None:
    events = session_events("restart-idle", [11, 22], ttl_secs=6, close=False, initial=5)
    first = deployment.worker("first").start().wait_ready()
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    wait_until_processing(first, len(events))
    first.stop()

    deployment.worker("second").start().wait_ready()
    closure = assert_closures_exact(deployment, {"restart-idle": 38}, timeout=60)
    assert closure["sessions"] == 1
    reasons = {c["reason"] for c in consume_json(deployment.bootstrap, deployment.closures_topic,
                                                 lambda got: bool(got), 10)}
    assert reasons == {"ttl_expired"}
