"""The simulator's oracle: what the accountant must conclude from a simulation,
and the checks of what it published against that.

`Expected` holds, per session, the closure the service must publish, and the
counts of applied, duplicate and rejected events (and, for events sent
through `POST /events`, refused ones); the simulator fills it by
construction (`Simulation.expected`), before a byte is sent. `check_closures`
and `check_rejections` compare the outputs read back from the topics with it,
`check_refusals` the answers of `POST /events`, `verify_outputs` does all,
and `format_report` says the result to a person.

SPEC revision 2 (§5.3): a round that lands after a higher one is applied, so
a session's closure counts every round delivered, whatever the order, and
its `missing_rounds` counts the numbers in 1..round_count never delivered.

Pure: no Kafka, no clock. Reading the topics is the simulator's job
(`app.dev.simulator.collect_outputs`).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from app.rules import CloseReason, Reason, Result

__all__ = [
    "ClosureReport",
    "Collected",
    "Expected",
    "ExpectedClosure",
    "PlannedFate",
    "RefusalReport",
    "RejectionReport",
    "VerifyReport",
    "belongs_to_run",
    "check_closures",
    "check_refusals",
    "check_rejections",
    "format_report",
    "listing",
    "source_of",
    "verify_outputs",
]


class PlannedFate(Protocol):
    """A record sent, as far as the oracle cares: what must become of it."""

    @property
    def event_id(self) -> str: ...

    @property
    def result(self) -> Result: ...

    @property
    def reason(self) -> Reason | None: ...

    @property
    def late(self) -> bool:
        """A round landing after a higher round of its session."""
        ...


@dataclass(frozen=True, slots=True)
class ExpectedClosure:
    """The closure a session must get; fields as in the closure (SPEC §6)."""

    session_id: str
    tenant_id: str
    provider_id: str
    model: str
    ttl_secs: int
    reason: CloseReason
    initial_token_count: int
    delta_token_count: int
    round_count: int
    missing_rounds: int

    @property
    def total_token_count(self) -> int:
        return self.initial_token_count + self.delta_token_count



@dataclass
class Expected:
    """The oracle: what the service must conclude from a whole simulation."""

    run_id: str
    closures: dict[str, ExpectedClosure] = field(default_factory=dict)
    events_sent: int = 0
    applied: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: Rounds applied though they land after a higher round of their session.
    late_rounds: int = 0
    #: Events `POST /events` must refuse: those the worker would reject `invalid_event`.
    refused: int = 0
    #: The events go through `POST /events` (else straight to Kafka).
    via_http: bool = False

    @property
    def marker(self) -> str:
        """Every id of this run starts with it."""
        return f"{self.run_id}-"

    @property
    def sessions(self) -> int:
        return len(self.closures)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def missing_rounds(self) -> int:
        """Round numbers never delivered, over all sessions."""
        return sum(closure.missing_rounds for closure in self.closures.values())

    @property
    def total_tokens(self) -> int:
        return sum(closure.total_token_count for closure in self.closures.values())

    def closures_by_reason(self) -> dict[str, int]:
        counts = Counter(closure.reason.value for closure in self.closures.values())
        return {reason.value: counts[reason.value] for reason in CloseReason}

    def tokens_by_tenant(self) -> dict[str, int]:
        tokens: Counter[str] = Counter()
        for closure in self.closures.values():
            tokens[closure.tenant_id] += closure.total_token_count
        return dict(sorted(tokens.items()))

    def add(self, closure: ExpectedClosure, events: Iterable[PlannedFate]) -> None:
        """One session: the closure it must get, and the fate of each record sent for it."""
        self.closures[closure.session_id] = closure
        for event in events:
            self.events_sent += 1
            if event.result is Result.APPLIED:
                self.applied += 1
                self.late_rounds += event.late
            elif event.result is Result.DUPLICATE:
                self.duplicate += 1
            elif self.via_http and event.reason is Reason.INVALID_EVENT:
                self.refused += 1
            else:
                assert event.reason is not None, "a record planned to be rejected has a reason"
                self.rejected[event.reason.value] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "sessions": self.sessions,
            "closures_by_reason": self.closures_by_reason(),
            "total_tokens": self.total_tokens,
            "tokens_by_tenant": self.tokens_by_tenant(),
            "events": {
                "sent": self.events_sent,
                "applied": self.applied,
                "duplicate": self.duplicate,
                "rejected": self.rejected_total,
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                **({"refused": self.refused} if self.via_http else {}),
            },
            "rounds": {"late": self.late_rounds, "missing": self.missing_rounds},
        }


@dataclass
class Collected:
    """This run's outputs, parsed, in the order consumed (repeats included)."""

    closures: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    #: Records on the output topics that were not JSON objects.
    unparsable: int
    #: Every expected closure and rejection arrived before the timeout.
    complete: bool


@dataclass
class ClosureReport:
    expected: int
    received: int  # distinct closure ids of this run
    repeated: int  # closure ids received more than once (allowed when identical)
    missing: list[str]
    unexpected: list[str]
    inconsistent: list[str]  # repeats that differ in more than emitted_at
    #: closure id -> field -> {"expected": ..., "actual": ...}
    mismatched: dict[str, dict[str, dict[str, Any]]]
    expected_tokens: int
    received_tokens: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.inconsistent or self.mismatched)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def mismatch_lines(self, what: str = "closure", limit: int = 8) -> list[str]:
        """One line per wrong `what` (up to `limit`) naming each field that differs."""
        lines = [f"wrong {what} {closure_id}: " + "; ".join(
            f"{name} expected {d['expected']!r} got {d['actual']!r}" for name, d in differences.items())
            for closure_id, differences in list(self.mismatched.items())[:limit]]
        if len(self.mismatched) > limit:
            lines.append(f"... {len(self.mismatched) - limit} more wrong {what}s")
        return lines


def listing(items: Iterable[Any], limit: int = 8) -> str:
    """The first `limit` items, comma-separated, and how many more there are."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_closures(expected: Expected, closures: Iterable[Mapping[str, Any]]) -> ClosureReport:
    """Compare closures consumed from the closures topic with the oracle.

    Closures of other runs on the same topic are ignored.
    """
    copies_by_id: dict[str, list[Mapping[str, Any]]] = {}
    for closure in closures:
        closure_id = closure.get("closure_id")
        if isinstance(closure_id, str) and closure_id.startswith(expected.marker):
            copies_by_id.setdefault(closure_id, []).append(closure)
    inconsistent = sorted(
        closure_id for closure_id, copies in copies_by_id.items()
        if len({_without_emitted_at(copy) for copy in copies}) > 1
    )
    mismatched = {}
    received_tokens = 0
    for closure_id, copies in copies_by_id.items():
        want = expected.closures.get(closure_id)
        if want is None:
            continue
        differences = _differences(want, copies[0])
        if differences:
            mismatched[closure_id] = differences
        total = copies[0].get("total_token_count")
        received_tokens += total if isinstance(total, int) else 0
    return ClosureReport(
        expected=expected.sessions,
        received=len(copies_by_id),
        repeated=sum(1 for copies in copies_by_id.values() if len(copies) > 1),
        missing=sorted(expected.closures.keys() - copies_by_id.keys()),
        unexpected=sorted(copies_by_id.keys() - expected.closures.keys()),
        inconsistent=inconsistent,
        mismatched=mismatched,
        expected_tokens=expected.total_tokens,
        received_tokens=received_tokens,
    )


def _without_emitted_at(closure: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in closure.items() if k != "emitted_at"}, option=orjson.OPT_SORT_KEYS)


def _differences(want: ExpectedClosure, closure: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    record = closure.get("record")
    record = record if isinstance(record, Mapping) else {}
    pairs = {
        "reason": (want.reason.value, closure.get("reason")),
        "total_token_count": (want.total_token_count, closure.get("total_token_count")),
        "missing_rounds": (want.missing_rounds, closure.get("missing_rounds")),
        "record.tenant_id": (want.tenant_id, record.get("tenant_id")),
        "record.provider_id": (want.provider_id, record.get("provider_id")),
        "record.model": (want.model, record.get("model")),
        "record.ttl_secs": (want.ttl_secs, record.get("ttl_secs")),
        "record.round_count": (want.round_count, record.get("round_count")),
        "record.initial_token_count": (want.initial_token_count, record.get("initial_token_count")),
        "record.delta_token_count": (want.delta_token_count, record.get("delta_token_count")),
        "record.closed_at is set": (True, record.get("closed_at") is not None),
    }
    return {name: {"expected": wanted, "actual": actual}
            for name, (wanted, actual) in pairs.items() if wanted != actual}


@dataclass
class RejectionReport:
    expected: dict[str, int]
    received: dict[str, int]  # by reason, each source offset counted once
    repeated: int  # copies of a rejection already received (same source)
    conflicting: list[str]  # sources rejected more than once with different reasons

    @property
    def ok(self) -> bool:
        return self.expected == self.received and not self.conflicting

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_rejections(expected: Expected, rejections: Iterable[Mapping[str, Any]]) -> RejectionReport:
    """Compare rejections consumed from the rejections topic with the oracle.

    A rejection is identified by the event's source topic, partition and
    offset, so a re-published copy counts once.  Rejections of other runs are
    ignored.
    """
    reason_by_source: dict[tuple[Any, ...], Any] = {}
    conflicting = set()
    copies = 0
    for rejection in rejections:
        if not belongs_to_run(expected, rejection):
            continue
        copies += 1
        source = source_of(rejection)
        reason = rejection.get("reason")
        if reason_by_source.setdefault(source, reason) != reason:
            conflicting.add(":".join(map(str, source)))
    received = Counter(str(reason) for reason in reason_by_source.values())
    return RejectionReport(
        expected=dict(sorted(expected.rejected.items())),
        received=dict(sorted(received.items())),
        repeated=copies - len(reason_by_source),
        conflicting=sorted(conflicting),
    )


def source_of(rejection: Mapping[str, Any]) -> tuple[Any, ...]:
    source = rejection.get("source")
    source = source if isinstance(source, Mapping) else {}
    return source.get("topic"), source.get("partition"), source.get("offset")


def belongs_to_run(expected: Expected, rejection: Mapping[str, Any]) -> bool:
    """Whether a rejection is of an event of this run: every event the run
    sends carries the run's marker in its ids, and a rejection holds either
    the parsed event or the raw bytes."""
    marker = expected.marker.encode()
    event = rejection.get("event")
    if event is not None and marker in orjson.dumps(event):
        return True
    raw = rejection.get("raw")
    if isinstance(raw, str):
        try:
            return marker in base64.b64decode(raw, validate=True)
        except binascii.Error:
            return False
    return False


@dataclass
class RefusalReport:
    expected: int
    received: int
    #: Event ids `POST /events` refused though the worker would take them.
    unexpected: list[str]
    #: Event ids it let through though the worker rejects them `invalid_event`.
    missing: list[str]

    @property
    def ok(self) -> bool:
        return self.expected == self.received and not self.unexpected and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_refusals(expected: Expected, judged: Iterable[tuple[PlannedFate, bool]]) -> RefusalReport:
    """Compare what `POST /events` refused with the plan: `judged` holds
    (event, refused) for every event refused or planned to be."""
    unexpected, missing = [], []
    received = 0
    for event, refused in judged:
        received += refused
        planned = event.reason is Reason.INVALID_EVENT
        if refused and not planned:
            unexpected.append(event.event_id)
        elif planned and not refused:
            missing.append(event.event_id)
    return RefusalReport(expected.refused, received, unexpected, missing)


@dataclass
class VerifyReport:
    closures: ClosureReport
    rejections: RejectionReport
    #: Records on the output topics that were not JSON.
    unparsable: int
    #: Whether every expected output arrived before the timeout.
    complete: bool
    #: What `POST /events` refused, when the events went through it.
    refusals: RefusalReport | None = None

    @property
    def ok(self) -> bool:
        return (self.closures.ok and self.rejections.ok and not self.unparsable
                and (self.refusals is None or self.refusals.ok))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "complete": self.complete, "unparsable": self.unparsable,
                "closures": self.closures.to_json(), "rejections": self.rejections.to_json(),
                **({"refusals": self.refusals.to_json()} if self.refusals is not None else {})}


def verify_outputs(expected: Expected, collected: Collected, refusals: RefusalReport | None = None) -> VerifyReport:
    return VerifyReport(
        closures=check_closures(expected, collected.closures),
        rejections=check_rejections(expected, collected.rejections),
        unparsable=collected.unparsable,
        complete=collected.complete,
        refusals=refusals,
    )


def format_report(report: VerifyReport, *, limit: int = 10) -> str:
    closures, rejections = report.closures, report.rejections
    lines = [
        "verify",
        f"  closures    {closures.received:,} of {closures.expected:,} sessions"
        f" ({closures.repeated:,} repeated)",
        f"  tokens      {closures.received_tokens:,} of {closures.expected_tokens:,}",
        f"  rejections  {sum(rejections.received.values()):,} of {sum(rejections.expected.values()):,}"
        f" ({rejections.repeated:,} repeated)",
    ]
    refusals = report.refusals
    if refusals is not None:
        lines.append(f"  refused by POST /events  {refusals.received:,} of {refusals.expected:,}")

    def titled(title: str, items: list[str]) -> None:
        if items:
            lines.append(f"  {title}: {listing(items, limit)}")

    titled("missing closures", closures.missing)
    titled("unexpected closures", closures.unexpected)
    titled("repeated closures that differ", closures.inconsistent)
    lines.extend(f"  {line}" for line in closures.mismatch_lines(limit=limit))
    for reason in sorted(rejections.expected.keys() | rejections.received.keys()):
        want, got = rejections.expected.get(reason, 0), rejections.received.get(reason, 0)
        if want != got:
            lines.append(f"  rejections {reason}: expected {want:,} got {got:,}")
    titled("sources rejected with different reasons", rejections.conflicting)
    if refusals is not None:
        titled("refused by POST /events but not planned to be", refusals.unexpected)
        titled("planned to be refused by POST /events but accepted", refusals.missing)
    if report.unparsable:
        lines.append(f"  {report.unparsable:,} output records were not JSON objects")
    if not report.complete:
        lines.append("  timed out before every expected output arrived")
    lines.append("  OK" if report.ok else "  MISMATCH")
    return "\n".join(lines)
