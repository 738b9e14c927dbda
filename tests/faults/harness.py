"""Driving a fault run: publishing pieces, watching workers, finishing with the oracle."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.dev.partitioners import partition_for
from app.dev.simulator import PlannedEvent, PublishStats, Simulation, publish
from app.rules import Reason, Result
from tests.support.deployment import FAST_SETTINGS, Deployment
from tests.support.ledger import (
    Ledger,
    LedgerStamper,
    Verdict,
    changelog_table,
    check_run,
    collect,
    print_figures,
    session_of,
)
from tests.support.ledger_processes import LedgerDeployment
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, accounted

PARTITIONS = int(FAST_SETTINGS["ACCOUNTANT_PARTITIONS"])


class Timeline:
    """Seconds since the start at each named step, printed with the figures."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def __call__(self, step: str) -> None:
        self.marks.append((step, time.monotonic() - self.start))

    def __str__(self) -> str:
        return ", ".join(f"{step} {at:.1f}s" for step, at in self.marks)


def publish_piece(deployment: Deployment, events: list[PlannedEvent], stamper: LedgerStamper,
                  rate: float = 0.0) -> PublishStats:
    """Publish `events` at `rate` events/s (0: as fast as possible)."""
    return asyncio.run(publish(events, deployment.bootstrap, deployment.events_topic, stamper=stamper,
                               rate=rate, progress=None))


def wait_applied(worker: WorkerProcess, at_least: int, timeout: float = 90) -> int:
    """Wait until the worker's own `applied` counter reaches `at_least`; returns it."""
    seen = [0]

    def reached() -> bool:
        try:
            seen[0] = worker.stats(local=True)["applied"]
        except OSError:
            return False
        return seen[0] >= at_least

    wait_for(f"{worker.name} to apply {at_least} events", reached, timeout)
    return seen[0]


def settled_stats(worker: WorkerProcess, ledger: Ledger, timeout: float = 30) -> dict[str, Any]:
    """/stats summed over the live workers, once it counts every sent event, or
    stops moving for a second (after a crash it may count less or more)."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        stats = worker.stats()
        if accounted(stats) == ledger.sent or stats == previous or time.monotonic() > deadline:
            return stats
        previous = stats
        time.sleep(1.0)


def finish(deployment: Deployment, ledger: Ledger, simulation: Simulation, *, faults: int,
           report: Callable[[dict], None], stats_from: WorkerProcess | None = None, exact_stats: bool = False,
           timeout: float = 120, extra: dict[str, Any] | None = None, timeline: Timeline | None = None,
           billing: LedgerDeployment | None = None, injected: Iterable[dict[str, Any]] = (),
           expected_conflicts: Collection[str] = ()) -> Verdict:
    """Collect the outputs, run the oracle, print and report the figures, and
    fail on any problem.

    With `billing` (the billing ledger, app/ledger, reading the closures), its
    database is checked against the oracle too, once it caught up: the same
    closures, per-tenant token sums, `expected_conflicts` and no other
    conflicts (`ledger_*` figures). `injected` are the closures the test itself
    put on the closures topic: the workers' outputs are checked without them.
    """
    outputs = asyncio.run(collect(deployment.bootstrap, events_topic=deployment.events_topic,
                                  closures_topic=deployment.closures_topic, rejected_topic=deployment.rejected_topic,
                                  ledger=ledger, timeout=timeout))
    outputs.closures = _without(outputs.closures, injected)
    stats = settled_stats(stats_from, ledger) if stats_from is not None else None
    exactly_once = deployment.config.processing_guarantee == "exactly_once"
    verdict = check_run(ledger, outputs, events_topic=deployment.events_topic, run_id=simulation.config.run_id,
                        stats=stats, exact_stats=exact_stats, exactly_once=exactly_once)
    missing = [sid for sid in ledger.closures if sid not in {c.get("closure_id") for c in outputs.closures}]
    if missing:
        # What the changelog says of them, for the diagnosis.
        table = asyncio.run(changelog_table(deployment.bootstrap, deployment.changelog_topic))
        for session_id in missing[:5]:
            verdict.problems.append(f"changelog of {session_id}: {table.get(session_id)!r}")
    if stats_from is not None and stats_from.process is not None and stats_from.process.poll() is None:
        # At rest every output the worker sent has been acknowledged.
        status, metrics = stats_from.get("/metrics")
        in_flight = [line for line in str(metrics).splitlines() if line.startswith("accountant_outputs_in_flight ")]
        if status != 200 or in_flight != ["accountant_outputs_in_flight 0.0"]:
            verdict.problems.append(f"outputs still in flight at rest: {status} {in_flight}")
    if billing is not None:
        billed = billing.verify(ledger.expected(simulation.config.run_id), timeout=timeout,
                                expected_conflicts=expected_conflicts)
        verdict.problems.extend(f"ledger: {problem}" for problem in billed.problems())
        verdict.figures.update(billed.figures())
    figures = {**verdict.figures, "faults_injected": faults, "guarantee": deployment.config.processing_guarantee,
               **(extra or {})}
    if timeline is not None:
        timeline("checked")
        figures["seconds"] = round(time.monotonic() - timeline.start, 1)
        print(f"[fault timeline] {timeline}", flush=True)
    print_figures(simulation.config.run_id, figures)
    report(figures)
    verdict.assert_ok()
    assert figures["lost"] == 0 and figures["double_billed"] == 0
    assert figures.get("ledger_lost", 0) == 0 and figures.get("ledger_double_billed", 0) == 0
    return verdict


def _without(closures: list[dict[str, Any]], injected: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`closures` minus one occurrence of each of `injected`."""
    left = Counter(orjson.dumps(closure, option=orjson.OPT_SORT_KEYS) for closure in injected)
    kept = []
    for closure in closures:
        key = orjson.dumps(closure, option=orjson.OPT_SORT_KEYS)
        if left[key] > 0:
            left[key] -= 1
        else:
            kept.append(closure)
    assert not +left, f"{sum(left.values())} injected closures are not on the closures topic"
    return kept


# --------------------------------------------------------------------------
# A rebalance storm: members of the group come and go while input flows

#: What a worker logs each time it is assigned input partitions (app/faust_compat.py `perform_seek`).
ASSIGNMENT_LOG_LINE = "reading partitions from"
#: Where the worker counts the input it skipped at an assignment (issue 20), once it does.
INPUT_GAPS_METRIC = "accountant_input_gaps_total"


@dataclass
class Storm:
    """Extra workers of the deployment's consumer group, started, SIGTERMed and
    SIGKILLed at random intervals: each start and each exit changes the group.

    One seeded generator chooses the actions, the victims and the intervals,
    so a seed gives the same sequence of actions; when they land relative to
    the input still depends on the machine's speed."""

    deployment: Deployment
    seed: int
    #: Extra workers alive at once, at most (besides the ones that stay up).
    max_extras: int = 3
    interval_secs: tuple[float, float] = (3.0, 6.0)
    live: list[WorkerProcess] = field(default_factory=list)
    #: SIGTERMed, maybe still shutting down.
    leaving: list[WorkerProcess] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    #: Extras that exited without being told to, with their exit codes.
    exited_unasked: list[str] = field(default_factory=list)
    #: accountant_input_gaps_total read from each extra just before it went,
    #: summed; None while no worker exported it.
    gaps: float | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}/storm")

    def run(self, until: Callable[[], bool], timeline: Timeline | None = None) -> None:
        """Change the group every `interval_secs` until `until()` holds."""
        while not until():
            action = self.step()
            if timeline is not None:
                timeline(action)
            pause_until = time.monotonic() + self.rng.uniform(*self.interval_secs)
            while time.monotonic() < pause_until and not until():
                time.sleep(0.1)

    def step(self) -> str:
        """One change of the group: start an extra, or SIGTERM or SIGKILL a
        live one (which may still be starting or recovering its tables)."""
        self._forget_exited()
        # Kills outweigh SIGTERMs: a killed member's partitions wait for its
        # session timeout, so its successors start on a backlog.
        choices = (["start", "start"] if len(self.live) < self.max_extras else []) + \
            (["term", "kill", "kill"] if self.live else [])
        action = self.rng.choice(choices)
        if action == "start":
            # Sometimes two at once: their start-up loads the machine while the group rebalances.
            names = []
            for _ in range(self.rng.randint(1, min(2, self.max_extras - len(self.live)))):
                names.append(f"extra-{self.actions['start'] + 1}")
                self.live.append(self.deployment.worker(names[-1]).start())
                self.actions["start"] += 1
            return f"start {'+'.join(names)}"
        victim = self.live.pop(self.rng.randrange(len(self.live)))
        self.read_gaps(victim)
        if action == "term":
            victim.terminate()
            self.leaving.append(victim)
        else:
            victim.kill()
        self.actions[action] += 1
        return f"{action} {victim.name}"

    def calm(self, timeout: float = 60) -> None:
        """SIGTERM every extra still running and wait until all are gone."""
        for worker in self.live:
            self.read_gaps(worker)
            worker.terminate()
            self.actions["term"] += 1
        self.leaving.extend(self.live)
        self.live.clear()
        for worker in self.leaving:
            worker.stop(timeout)
        self.leaving.clear()

    @property
    def member_changes(self) -> int:
        """Joins and leaves this storm caused: a rebalance of the group each,
        unless two fall into the same one."""
        return sum(self.actions.values())

    def assignments_logged(self) -> tuple[int, int]:
        """Assignments logged by every worker of the deployment, ever, and the
        input partitions they started reading (each a chance to skip input)."""
        lines = [line for worker in self.deployment.started if worker.log_path.exists()
                 for line in worker.log_path.read_text(errors="replace").splitlines() if ASSIGNMENT_LOG_LINE in line]
        input_partition = f"{self.deployment.events_topic}:"
        return len(lines), sum(line.split(ASSIGNMENT_LOG_LINE, 1)[1].count(input_partition) for line in lines)

    def figures(self) -> dict[str, Any]:
        assignments, read_starts = self.assignments_logged()
        return {"member_changes": self.member_changes, "starts": self.actions["start"],
                "terms": self.actions["term"], "kills": self.actions["kill"],
                "assignments_logged": assignments, "partition_read_starts": read_starts,
                "input_gaps": "not exported" if self.gaps is None else self.gaps,
                "extras_exited_unasked": len(self.exited_unasked)}

    def read_gaps(self, worker: WorkerProcess) -> None:
        """Add what `worker` counts of input gaps (an extra before it goes, one that stays up at the end)."""
        try:
            gaps = worker.exported_metric(INPUT_GAPS_METRIC)
        except (OSError, AssertionError):
            return  # not answering yet (starting) or any more: it has nothing to tell
        if gaps is not None:
            self.gaps = (self.gaps or 0.0) + gaps

    def _forget_exited(self) -> None:
        for worker in list(self.live):
            code = worker.process.poll() if worker.process is not None else None
            if code is not None:
                self.live.remove(worker)
                self.exited_unasked.append(f"{worker.name} ({code})")
        self.leaving = [w for w in self.leaving if w.process is not None and w.process.poll() is None]


# --------------------------------------------------------------------------
# Gateways re-sending everything


#: Reasons a copy may only get while the session is open: after the close the
#: same bytes are `session_closed` (the rules look at the close first; SPEC
#: revision 2 §5.2 made a different initial count one of them).
_OPEN_ONLY = {Reason.MODEL_MISMATCH, Reason.OVERFLOW, Reason.INVALID_TRANSITION}


def with_copies(simulation: Simulation, seed: int, deliveries: tuple[int, ...] = (2, 3)) -> list[PlannedEvent]:
    """The simulation's stream with every record delivered 2 or 3 times.

    Copies repeat the bytes of their original (`body=None`) and go to a random
    later point of the same session's stream, so they interleave with the
    session's later events and, on the same partition, with other sessions'.
    A copy of an accepted event must be a duplicate; a copy of a rejected one
    is rejected for the same reason, so a copy whose reason depends on the
    session being open stays before the session's close.  Sessions are then
    interleaved as `Simulation.events` does (idle ones as one burst).
    """
    rng = random.Random(f"{seed}/copies")
    in_flight_limit = simulation.config.in_flight
    plans = simulation.sessions()
    streams: list[list[PlannedEvent]] = []
    out: list[PlannedEvent] = []

    def expand(plan) -> list[PlannedEvent]:
        events = plan.events
        close_at = next((i for i, e in enumerate(events) if e.body is not None and e.result is Result.APPLIED
                         and e.body.get("type") == "session.closed"), len(events))
        placed: list[tuple[float, int, PlannedEvent]] = [(float(i), 0, e) for i, e in enumerate(events)]
        for i, event in enumerate(events):
            end = close_at if event.reason in _OPEN_ONLY else len(events)
            for n in range(rng.choice(deliveries) - 1):
                copy = PlannedEvent(event.key, event.event_id, None,
                                    Result.REJECTED if event.result is Result.REJECTED else Result.DUPLICATE,
                                    event.reason)
                placed.append((i + rng.random() * max(0.0, end - i - 0.5) + 0.25, 1 + n, copy))
        placed.sort(key=lambda item: item[:2])
        return [item[2] for item in placed]

    interleave = random.Random(f"{seed}/interleave")
    while True:
        while len(streams) < in_flight_limit:
            plan = next(plans, None)
            if plan is None:
                break
            if plan.idle:
                out.extend(expand(plan))
            else:
                streams.append(expand(plan))
        if not streams:
            return out
        index = interleave.randrange(len(streams))
        out.append(streams[index].pop(0))
        if not streams[index]:
            streams[index] = streams[-1]
            streams.pop()


def copies_interleaved(stream: list[PlannedEvent]) -> dict[str, Any]:
    """How far copies landed from their originals: the share of copies with a
    later event of their own session in between, and the median number of
    records of the same partition in between."""
    first_at: dict[str, int] = {}
    partition_of = [partition_for(event.key, PARTITIONS, "murmur2") for event in stream]
    same_partition_before: list[int] = []
    counts = [0] * PARTITIONS
    for partition in partition_of:
        same_partition_before.append(counts[partition])
        counts[partition] += 1
    session_events: dict[str, list[int]] = {}
    for index, event in enumerate(stream):
        session_events.setdefault(session_of(event), []).append(index)
    gaps, after_own = [], 0
    copies = 0
    for index, event in enumerate(stream):
        original = first_at.setdefault(event.event_id, index)
        if original == index or event.body is not None:
            continue
        copies += 1
        gaps.append(same_partition_before[index] - same_partition_before[original] - 1)
        own = session_events[session_of(event)]
        after_own += any(original < other < index and stream[other].event_id != event.event_id for other in own)
    gaps.sort()
    return {"copies_after_own_later_events": f"{after_own / max(1, copies):.0%}",
            "median_same_partition_records_between": gaps[len(gaps) // 2] if gaps else 0}
