"""The fault suite's oracle: what every run must have produced, checked exactly.

A `Ledger` learns, record by record, what was sent to the events topic and what
the service must make of it: the simulator's plan says it for simulated events
(`LedgerStamper` sees each one as it is encoded, re-sends and injected copies
included), and a test says it for the records it crafts itself (`expect`).

After a run, `check_run` reads the three topics and checks:

1. Input: the events topic holds exactly the records sent, each known to the
   ledger (so every later check covers every record).
2. Closures: every session has at least one; all copies of a session's
   closure are identical but for `emitted_at`; each equals the oracle's
   (reason, tokens, rounds, missing rounds, tenant, provider, model, TTL) and
   its record's timestamps equal the `occurred_at` the gateway stamped on the
   creation, activation and close it sent (a TTL close at `created_at + ttl`).
   Tokens add up to the token: nothing lost, nothing counted twice.
3. Every record is accounted for, by its (partition, offset): a record planned
   to be rejected has a rejection with that source and the planned reason
   (copies of it allowed, conflicting reasons not), and no other record has
   one. Records planned as applied show in the closures (3 + 2 above: the
   closure holds exactly the applied creation, activation, rounds, extension
   and close); the rest were duplicates.
4. `/stats`: per process, and the workers' counters die with a killed worker
   and recount the replay window after a crash, so after a crash the topic
   outputs (1-3) are the exact account; `/stats` is compared exactly only when
   every worker that ever ran is still running (`exact_stats`), and otherwise
   checked for sanity (no `internal_error`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from app.dev.oracle import Expected, ExpectedClosure, check_closures, listing
from app.dev.simulator import PlannedEvent, Simulation, Stamper
from app.rules import SECOND, CloseReason, Micros, Reason, Result, decode_state, format_timestamp

__all__ = [
    "Ledger",
    "LedgerStamper",
    "Outputs",
    "Record",
    "Verdict",
    "changelog_table",
    "check_run",
    "collect",
    "pieces",
    "print_figures",
    "raw_of",
    "session_of",
    "simulated",
    "split_points",
]

RECORD_FIELDS = {
    "session_id", "tenant_id", "provider_id", "model", "created_at", "activated_at", "closed_at", "ttl_secs",
    "round_count", "initial_token_count", "delta_token_count", "metadata",
}

ACCEPTED = "accepted"  # applied or duplicate: must not be rejected


@dataclass
class Ledger:
    """What was sent, and the fate each record must meet."""

    closures: dict[str, ExpectedClosure] = field(default_factory=dict)
    #: (key, value) -> ACCEPTED or the rejection reason; copies share an entry.
    fate: dict[tuple[bytes | None, bytes | None], str] = field(default_factory=dict)
    sent: int = 0
    applied: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: session_id -> event type -> occurred_at stamped on the applied event.
    stamped: dict[str, dict[str, Micros]] = field(default_factory=lambda: defaultdict(dict))
    #: session_id -> metadata of its creation.
    metadata: dict[str, Any] = field(default_factory=dict)

    def expect(self, key: bytes | None, value: bytes | None, result: Result, reason: Reason | str | None = None,
               body: dict[str, Any] | None = None, occurred_at: Micros | None = None) -> None:
        """One record sent, and what must become of it."""
        fate = ACCEPTED if result is not Result.REJECTED else str(Reason(reason))
        known = self.fate.setdefault((key, value), fate)
        assert known == fate, f"the same bytes planned as {known} and as {fate}: {value[:80]!r}"
        self.sent += 1
        if result is Result.APPLIED:
            self.applied += 1
            if body is not None and occurred_at is not None:
                self.stamped[body["session_id"]][body["type"]] = occurred_at
                if body["type"] == "session.created":
                    self.metadata[body["session_id"]] = body.get("metadata", {})
        elif result is Result.DUPLICATE:
            self.duplicate += 1
        else:
            self.rejected[fate] += 1

    def expected(self, run_id: str) -> Expected:
        """The simulator's `Expected` for this ledger (to reuse its closure check)."""
        return Expected(run_id, dict(self.closures), self.sent, self.applied, self.duplicate, Counter(self.rejected))


class LedgerStamper(Stamper):
    """A `Stamper` that tells the ledger about every record it encodes, and
    keeps every event's bytes so an event can be re-sent any number of times
    (a planned event with `body=None` repeats the bytes of its `event_id`)."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self._bytes: dict[str, bytes] = {}

    def encode(self, event: PlannedEvent, now: Micros) -> bytes:
        if event.body is None:
            value = self._bytes[event.event_id]
        else:
            value = super().encode(replace(event, resent_later=False), now)
            self._bytes[event.event_id] = value
        body = dict(event.body) if event.body is not None else None
        self.ledger.expect(event.key, value, event.result, event.reason, body, now + event.skew_secs * SECOND)
        return value


def simulated(simulation: Simulation) -> tuple[Ledger, LedgerStamper]:
    """A ledger holding the simulation's expected closures, and the stamper to publish it with."""
    ledger = Ledger(closures=dict(simulation.expected.closures))
    return ledger, LedgerStamper(ledger)


def session_of(event: PlannedEvent) -> str:
    """The simulated session an event belongs to (every event id starts with it)."""
    return event.event_id.rsplit("-e", 1)[0]


def split_points(events: list[PlannedEvent], simulation: Simulation, fractions: Iterable[float]) -> list[int]:
    """Indexes near `fractions` of the stream where a piece may end: never
    inside an idle session's burst, whose later events would otherwise be sent
    after a fault's downtime, past the session's short TTL."""
    idle = {plan.closure.session_id for plan in simulation.sessions() if plan.idle}
    points = []
    for fraction in fractions:
        index = max(1, min(len(events) - 1, int(len(events) * fraction)))
        while index < len(events) and session_of(events[index]) == session_of(events[index - 1]) \
                and session_of(events[index]) in idle:
            index += 1
        points.append(index)
    return points


def pieces(events: list[PlannedEvent], points: list[int]) -> list[list[PlannedEvent]]:
    bounds = [0, *points, len(events)]
    return [events[start:end] for start, end in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------
# Reading the topics


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Outputs:
    input: list[Record]
    closures: list[dict[str, Any]]
    #: (partition, offset) of the rejected event -> every rejection of it.
    rejections: dict[tuple[int, int], list[dict[str, Any]]]
    #: key of each rejection record, by source.
    rejection_keys: dict[tuple[int, int], set[bytes | None]]
    unparsable: int
    complete: bool
    seconds: float


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def _read_all(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> list[tuple[str, Any]]:
    """Every record of `partitions` up to their end offsets now."""
    ends = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    records = []
    while await _behind(consumer, ends):
        for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
            records.extend((tp.topic, record) for record in batch if record.offset < ends[tp])
    return records


async def _partitions(bootstrap: str, *topics: str) -> list[TopicPartition]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + 30
        while True:
            metadata = await client.fetch_all_metadata()
            found = {topic: metadata.partitions_for_topic(topic) for topic in topics}
            if all(found.values()):
                return [TopicPartition(topic, number) for topic in topics for number in sorted(found[topic])]
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {[t for t, n in found.items() if not n]} do not exist")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def collect(bootstrap: str, *, events_topic: str, closures_topic: str, rejected_topic: str,
                  ledger: Ledger, timeout: float) -> Outputs:
    """Read the input, then the outputs until every expected closure and every
    expected rejection is there (or `timeout`), then the outputs to their end
    offsets at that moment, so unexpected extras are seen too."""
    start = time.monotonic()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                # A 1 MB input record must fit (the default is 1 MiB per partition).
                                max_partition_fetch_bytes=4 * 1024 * 1024,
                                # As billing reads: under exactly_once, what an aborted
                                # transaction wrote is no output.
                                isolation_level="read_committed")
    await consumer.start()
    try:
        records = await _read_all(consumer, await _partitions(bootstrap, events_topic))
        inputs = [Record(r.partition, r.offset, r.key, r.value) for _, r in records]
        must_reject = {(r.partition, r.offset) for r in inputs if ledger.fate.get((r.key, r.value), ACCEPTED)
                       != ACCEPTED}
        outputs = await _partitions(bootstrap, closures_topic, rejected_topic)
        closures: list[dict[str, Any]] = []
        rejections: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        rejection_keys: dict[tuple[int, int], set[bytes | None]] = defaultdict(set)
        unparsable = 0

        def take(topic: str, record: Any) -> None:
            nonlocal unparsable
            try:
                output = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                output = None
            if not isinstance(output, dict):
                unparsable += 1
            elif topic == closures_topic:
                closures.append(output)
            else:
                source = output.get("source") or {}
                where = (source.get("partition"), source.get("offset"))
                rejections[where].append(output)
                rejection_keys[where].add(record.key)

        def complete() -> bool:
            return (ledger.closures.keys() <= {c.get("closure_id") for c in closures}
                    and must_reject <= rejections.keys())

        consumer.assign(outputs)
        await consumer.seek_to_beginning(*outputs)
        deadline = start + timeout
        next_note = time.monotonic() + 5
        while not complete() and time.monotonic() < deadline:
            for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
                for record in batch:
                    take(tp.topic, record)
            if time.monotonic() > next_note:
                next_note += 5
                missing = ledger.closures.keys() - {c.get("closure_id") for c in closures}
                print(f"[oracle] {time.monotonic() - start:.0f}s: waiting for {len(missing)} closures "
                      f"(e.g. {sorted(missing)[:3]}) and {len(must_reject - rejections.keys())} rejections",
                      flush=True)
        done = complete()
        # Whatever else is on the output topics now (an unexpected output must be seen).
        ends = await consumer.end_offsets(outputs)
        while await _behind(consumer, ends):
            for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
                for record in batch:
                    if record.offset < ends[tp]:
                        take(tp.topic, record)
        return Outputs(inputs, closures, dict(rejections), dict(rejection_keys), unparsable, done,
                       time.monotonic() - start)
    finally:
        await consumer.stop()


async def changelog_table(bootstrap: str, changelog_topic: str) -> dict[str, Any]:
    """The sessions table as its changelog holds it: session_id -> stored value (None once deleted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        latest: dict[bytes, bytes | None] = {}
        for _, record in await _read_all(consumer, await _partitions(bootstrap, changelog_topic)):
            latest[record.key] = record.value
    finally:
        await consumer.stop()
    return {key.decode(): None if value is None else decode_state(value) for key, value in latest.items()}


# --------------------------------------------------------------------------
# The checks


@dataclass
class Verdict:
    """Every problem found, and the figures of the run."""

    problems: list[str]
    figures: dict[str, Any]
    outputs: Outputs

    def assert_ok(self) -> None:
        assert not self.problems, "oracle found:\n  " + "\n  ".join(self.problems)


def check_run(ledger: Ledger, outputs: Outputs, *, events_topic: str, run_id: str,
              stats: dict[str, Any] | None = None, exact_stats: bool = False,
              exactly_once: bool = False) -> Verdict:
    """The oracle's verdict on a run. With `exactly_once` (the workers' mode),
    a closure or rejection that reached a read_committed reader twice is a
    problem too, and so are /stats counters inflated by a replay."""
    problems: list[str] = []

    # 1. The input topic holds what was sent, each record known.
    if len(outputs.input) != ledger.sent:
        problems.append(f"the events topic holds {len(outputs.input)} records, {ledger.sent} were sent")
    unknown = [(r.partition, r.offset) for r in outputs.input if (r.key, r.value) not in ledger.fate]
    if unknown:
        problems.append(f"records on the events topic the ledger does not know: {listing(unknown)}")
    if not outputs.complete:
        problems.append(f"timed out after {outputs.seconds:.0f} s before every expected output arrived")
    if outputs.unparsable:
        problems.append(f"{outputs.unparsable} output records are not JSON objects")

    # 2. Closures.
    expected = ledger.expected(run_id)
    report = check_closures(expected, outputs.closures)
    if report.missing:
        problems.append(f"{len(report.missing)} sessions without a closure: {listing(report.missing)}")
    if report.unexpected:
        problems.append(f"closures for sessions never planned: {listing(report.unexpected)}")
    if report.inconsistent:
        problems.append(f"repeated closures that differ beyond emitted_at: {listing(report.inconsistent)}")
    problems.extend(report.mismatch_lines())
    foreign = [c.get("closure_id") for c in outputs.closures
               if not str(c.get("closure_id")).startswith(expected.marker)]
    if foreign:
        problems.append(f"closures of no session of this run: {listing(foreign)}")
    first: dict[str, dict[str, Any]] = {}
    copies: Counter[str] = Counter()
    for closure in outputs.closures:
        closure_id = closure.get("closure_id")
        first.setdefault(closure_id, closure)
        copies[closure_id] += 1
    timestamp_problems = []
    for session_id, want in ledger.closures.items():
        closure = first.get(session_id)
        if closure is None:
            continue
        timestamp_problems.extend(_record_problems(session_id, want, closure, ledger))
    problems.extend(timestamp_problems[:8])
    if len(timestamp_problems) > 8:
        problems.append(f"... {len(timestamp_problems) - 8} more closure record problems")

    received_tokens = sum(first[sid].get("total_token_count", 0) for sid in ledger.closures if sid in first)
    # Lost: a session without closure, or billed fewer tokens than accepted;
    # double-billed: billed more, or repeats that disagree (billing would see two amounts).
    lost = under_tokens = over_tokens = 0
    double_billed = len(report.inconsistent)
    for session_id, want in ledger.closures.items():
        if session_id not in first:
            lost += 1
            under_tokens += want.total_token_count
            continue
        got = first[session_id].get("total_token_count", 0)
        got = got if isinstance(got, int) else 0
        lost += got < want.total_token_count
        under_tokens += max(0, want.total_token_count - got)
        double_billed += got > want.total_token_count
        over_tokens += max(0, got - want.total_token_count)
    if received_tokens != expected.total_tokens:
        problems.append(f"closures hold {received_tokens:,} tokens, the accepted events {expected.total_tokens:,}")

    # 3. Every record accounted for by its source.
    fate_at = {(r.partition, r.offset): ledger.fate.get((r.key, r.value)) for r in outputs.input}
    wrong_reason, not_rejected, wrongly_rejected, conflicting, foreign_sources = [], [], [], [], []
    for where, fate in fate_at.items():
        got = outputs.rejections.get(where)
        if fate == ACCEPTED or fate is None:
            if got:
                wrongly_rejected.append(f"{where} ({got[0].get('reason')}: {got[0].get('detail')})")
            continue
        if not got:
            not_rejected.append(f"{where} ({fate})")
            continue
        reasons = {rejection.get("reason") for rejection in got}
        if len(reasons) > 1:
            conflicting.append(f"{where} {sorted(reasons)}")
        elif reasons != {fate}:
            wrong_reason.append(f"{where} expected {fate} got {reasons.pop()} ({got[0].get('detail')})")
    for where, got in outputs.rejections.items():
        if where not in fate_at or got[0].get("source", {}).get("topic") != events_topic:
            foreign_sources.append(str(where))
    for title, items in (("rejected but planned accepted", wrongly_rejected),
                         ("planned rejected but no rejection", not_rejected),
                         ("rejected with the wrong reason", wrong_reason),
                         ("rejected with conflicting reasons", conflicting),
                         ("rejections whose source is no record of the events topic", foreign_sources)):
        if items:
            problems.append(f"{len(items)} {title}: {listing(items)}")
    received_by_reason = Counter(got[0].get("reason") for where, got in outputs.rejections.items()
                                 if where in fate_at)
    if dict(received_by_reason) != dict(ledger.rejected):
        problems.append(f"rejections by reason {dict(sorted(received_by_reason.items()))}, "
                        f"expected {dict(sorted(ledger.rejected.items()))}")

    # 4. /stats.
    if stats is not None:
        if stats.get("unreachable"):
            problems.append(f"/stats: workers did not answer: {stats['unreachable']}")
        if stats.get("rejected", {}).get("internal_error"):
            problems.append(f"/stats counts {stats['rejected']['internal_error']} internal_error rejections")
        if exact_stats:
            wanted = {"applied": ledger.applied, "duplicate": ledger.duplicate,
                      "rejected": dict(sorted(ledger.rejected.items()))}
            got = {"applied": stats.get("applied"), "duplicate": stats.get("duplicate"),
                   "rejected": dict(sorted((k, v) for k, v in stats.get("rejected", {}).items() if v))}
            if got != wanted:
                problems.append(f"/stats counts {got}, expected {wanted}")
            counted = stats.get("applied", 0) + stats.get("duplicate", 0) + stats.get("rejected_total", 0)
            if counted != ledger.sent:
                problems.append(f"/stats counts {counted} events applied, duplicate or rejected; {ledger.sent} sent")

    rejection_copies = sum(len(got) for got in outputs.rejections.values())
    rejections_repeated = sum(1 for got in outputs.rejections.values() if len(got) > 1)
    if exactly_once:
        repeated = sorted(closure_id for closure_id, n in copies.items() if n > 1)
        if repeated:
            problems.append(f"exactly_once: {len(repeated)} closures reached billing more than once: "
                            f"{listing(repeated)}")
        if rejections_repeated:
            problems.append(f"exactly_once: {rejections_repeated} rejections were published more than once")
        if stats is not None and stats.get("redelivered"):
            problems.append(f"exactly_once: /stats counts {stats['redelivered']} redelivered events")
    figures = {
        "events": ledger.sent,
        "sessions": len(ledger.closures),
        "applied": ledger.applied,
        "duplicate": ledger.duplicate,
        "rejected": expected.rejected_total,
        "closures_received": len(outputs.closures),
        "closures_repeated": sum(1 for n in copies.values() if n > 1),
        # Sessions whose closure is not the oracle's, in any field, or whose repeats disagree.
        "wrong": len(report.mismatched.keys() | set(report.inconsistent)),
        "rejections_received": rejection_copies,
        "rejections_repeated": rejections_repeated,
        "tokens": expected.total_tokens,
        "lost": lost,
        "lost_tokens": under_tokens,
        "double_billed": double_billed,
        "double_billed_tokens": over_tokens,
    }
    if stats is not None:
        figures["stats_applied"] = stats.get("applied")
        figures["stats_duplicate"] = stats.get("duplicate")
        figures["stats_rejected"] = stats.get("rejected_total")
        figures["stats_redelivered"] = stats.get("redelivered")
    return Verdict(problems, figures, outputs)


def _record_problems(session_id: str, want: ExpectedClosure, closure: dict[str, Any], ledger: Ledger) -> list[str]:
    """The closure's record against the gateway's own stamps: nothing but the
    first delivery of each applied event may shape it."""
    record = closure.get("record") or {}
    problems = []
    if set(record) != RECORD_FIELDS:
        problems.append(f"{session_id}: record fields {sorted(record)} are not SPEC §4's")
    stamped = ledger.stamped.get(session_id, {})
    created = stamped.get("session.created")
    if created is None:
        return problems  # crafted by the test, which checks it itself
    activated = stamped.get("session.activated")
    closed = stamped.get("session.closed") if want.reason is CloseReason.CLOSED else \
        created + want.ttl_secs * SECOND
    pairs = {
        "record.session_id": (session_id, record.get("session_id")),
        "record.created_at": (format_timestamp(created), record.get("created_at")),
        "record.activated_at": (None if activated is None else format_timestamp(activated), record.get("activated_at")),
        "record.closed_at": (None if closed is None else format_timestamp(closed), record.get("closed_at")),
        "record.metadata": (ledger.metadata.get(session_id), record.get("metadata")),
    }
    for name, (expected, actual) in pairs.items():
        if expected != actual:
            problems.append(f"{session_id}: {name} expected {expected!r} got {actual!r}")
    return problems


def print_figures(name: str, figures: dict[str, Any]) -> None:
    print(f"\n[fault figures] {name}: " + " ".join(f"{key}={value}" for key, value in figures.items()), flush=True)


def raw_of(rejection: dict[str, Any]) -> bytes | None:
    raw = rejection.get("raw")
    return None if raw is None else base64.b64decode(raw)
