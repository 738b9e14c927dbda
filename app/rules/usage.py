"""Tenant period usage, budgets and threshold alerts (SPEC §9), as pure functions.

A tenant's usage is kept as the tokens of its open sessions (`open_tokens`,
which count in whatever month is current) and, per UTC month, the tokens of
the closures whose `closed_at` falls in it (`closed`). The usage of month P
at time `now` is then `closed[P]`, plus `open_tokens` when P is the month of
`now`: open sessions carry into a new month by themselves, and a month that
has ended keeps only its closures, which is what the ledger bills for it.

The agent turns each change of a session's state into a `UsageStep` (what
the change adds to its tenant: `usage_step`). Steps travel to the tenant's
owner as `UsageDelta`s, one per (tenant, input partition) and batch, each
step carrying the input offset of the event that made it. The owner applies
a delta with `apply_delta`, which skips the steps whose offset it has
already applied from that input partition: a delta re-sent after a crash,
whatever its batch boundaries, counts once. Steps of the TTL timer have no
input offset (see docs/budgets.md for what that means under at_least_once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from datetime import UTC, datetime
from fractions import Fraction
from functools import lru_cache
from math import ceil
from typing import Any

from app.rules.limits import MAX_COUNT
from app.rules.model import Session, Stored
from app.rules.record import CloseReason
from app.rules.timestamps import SECOND, Micros, format_timestamp, parse_timestamp
from app.rules.values import value

#: A UTC calendar month, "YYYY-MM".
Period = str

DEFAULT_THRESHOLDS = (0.8, 1.0)
MAX_THRESHOLDS = 10
MAX_THRESHOLD = 10.0
ALERT_TYPE = "budget.threshold_crossed"
BUDGET_FIELDS = ("limit_tokens", "thresholds")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_of(at: Micros) -> Period:
    """The UTC month an instant falls in."""
    moment = datetime.fromtimestamp(at // SECOND, UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


@lru_cache(maxsize=64)
def period_start(period: Period) -> Micros:
    """The first microsecond of a month."""
    year, month = (int(part) for part in period.split("-"))
    return int((datetime(year, month, 1, tzinfo=UTC) - _EPOCH).total_seconds()) * SECOND


def next_period(period: Period) -> Period:
    year, month = (int(part) for part in period.split("-"))
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


# --------------------------------------------------------------------------
# What one session change adds to its tenant


@value
class UsageStep:
    """What one change of one session adds to its tenant's usage.

    A session that is created or grows adds to the open figures; one that
    closes leaves them (`open_sessions` -1, `open_tokens` minus what it held
    while open) and adds its total to `closed_period`.
    """

    tenant_id: str
    open_sessions: int
    open_tokens: int
    closed_period: Period | None = None
    closed_tokens: int = 0
    close_reason: CloseReason | None = None


def usage_step(before: Stored | None, after: Stored | None) -> UsageStep | None:
    """What a session's change from `before` to `after` adds to its tenant;
    None when nothing. A purge (a closed session becoming a tombstone, then
    nothing) changes no usage: its closure still counts in its month."""
    if not isinstance(after, Session):
        return None
    record = after.record
    was_open = isinstance(before, Session) and before.close_reason is None
    held = before.record.total_token_count if isinstance(before, Session) and was_open else 0
    if after.close_reason is None:
        if before is not None and held == record.total_token_count:
            return None
        return UsageStep(record.tenant_id, 0 if was_open else 1, record.total_token_count - held)
    if isinstance(before, Session) and not was_open:
        return None  # closed already: a closed session never changes its totals
    assert record.closed_at is not None
    return UsageStep(record.tenant_id, -1 if was_open else 0, -held, period_of(record.closed_at),
                     record.total_token_count, after.close_reason)


@value
class UsageEntry:
    """A step where it happened: the input offset of the event that made it
    (None for the TTL timer's closes), and when (the event's `occurred_at`,
    or a TTL close's `closed_at`)."""

    step: UsageStep
    offset: int | None
    occurred_at: Micros


@value
class UsageDelta:
    """What one batch of one input partition adds to one tenant, in order.

    `delta_id` tells a record the producer wrote twice (a retried send)
    from the next delta: the sender makes it unique per delta."""

    tenant_id: str
    source_partition: int
    entries: tuple[UsageEntry, ...]
    delta_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "source_partition": self.source_partition,
            "delta_id": self.delta_id,
            "entries": [_entry_json(entry) for entry in self.entries],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageDelta:
        tenant_id = data["tenant_id"]
        return cls(tenant_id, data["source_partition"],
                   tuple(_entry_from_json(tenant_id, entry) for entry in data["entries"]), data["delta_id"])


def _entry_json(entry: UsageEntry) -> list[Any]:
    step = entry.step
    reason = None if step.close_reason is None else step.close_reason.value
    return [entry.offset, entry.occurred_at, step.open_sessions, step.open_tokens, step.closed_period,
            step.closed_tokens, reason]


def _entry_from_json(tenant_id: str, data: list[Any]) -> UsageEntry:
    offset, occurred_at, open_sessions, open_tokens, closed_period, closed_tokens, reason = data
    step = UsageStep(tenant_id, open_sessions, open_tokens, closed_period, closed_tokens,
                     None if reason is None else CloseReason(reason))
    return UsageEntry(step, offset, occurred_at)


# --------------------------------------------------------------------------
# Budgets


@value
class Budget:
    """A tenant's budget (SPEC §9): it applies to every month from `from_period`."""

    limit_tokens: int
    thresholds: tuple[float, ...]
    from_period: Period
    set_at: Micros

    def applies_to(self, period: Period) -> bool:
        return period >= self.from_period

    def to_json(self) -> dict[str, Any]:
        return {"limit_tokens": self.limit_tokens, "thresholds": list(self.thresholds),
                "from_period": self.from_period, "set_at": format_timestamp(self.set_at)}


class BudgetError(ValueError):
    """A budget request that breaks SPEC §9; `field` names the offending field."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field_name


def parse_budget(data: Any, now: Micros) -> Budget:
    """A `PUT /tenants/{id}/budget` body as a budget set at `now`; raises
    BudgetError naming the field."""
    if not isinstance(data, dict):
        raise BudgetError("body", "the body must be a JSON object")
    for name in data:
        if name not in BUDGET_FIELDS:
            raise BudgetError(name, f"{name} is not a field of a budget (expected: {', '.join(BUDGET_FIELDS)})")
    limit = data.get("limit_tokens")
    if isinstance(limit, float) and limit.is_integer() and abs(limit) <= 2**53:
        limit = int(limit)  # JSON Schema's integer: 5.0 is one, and exact as a double up to 2^53
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_COUNT:
        raise BudgetError("limit_tokens", f"limit_tokens must be an integer in 1..{MAX_COUNT}")
    raw = data.get("thresholds", list(DEFAULT_THRESHOLDS))
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_THRESHOLDS:
        raise BudgetError("thresholds", f"thresholds must be a list of 1 to {MAX_THRESHOLDS} numbers")
    thresholds = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item <= MAX_THRESHOLD:
            raise BudgetError("thresholds", f"every threshold must be a number in (0, {MAX_THRESHOLD:g}]")
        thresholds.append(float(item))  # 1 and 1.0 are one threshold, named "1.0" in alert ids
    if len(set(thresholds)) != len(thresholds):
        raise BudgetError("thresholds", "thresholds must be distinct")
    return Budget(limit, tuple(sorted(thresholds)), period_of(now), now)


def budget_from_json(data: Mapping[str, Any]) -> Budget:
    """A budget as stored in `tenant-budgets`."""
    return Budget(data["limit_tokens"], tuple(float(t) for t in data["thresholds"]), data["from_period"],
                  parse_timestamp(data["set_at"]))


def reaches(usage: int, threshold: float, limit_tokens: int) -> bool:
    """usage >= threshold x limit, exactly: 0.8 is four fifths, not the
    binary float just above it."""
    return usage >= threshold_tokens(threshold, limit_tokens)


@lru_cache(maxsize=4096)
def threshold_tokens(threshold: float, limit_tokens: int) -> int:
    """The fewest tokens that reach `threshold x limit_tokens`; cached, as
    every usage step checks every threshold not alerted yet (a Fraction
    from a repr costs microseconds)."""
    return ceil(Fraction(repr(threshold)) * limit_tokens)


def threshold_name(threshold: float) -> str:
    return repr(float(threshold))


# --------------------------------------------------------------------------
# The tenant's state and its alerts


@value
class Alert:
    """A `budget.threshold_crossed` alert without its `emitted_at`."""

    tenant_id: str
    period: Period
    threshold: float
    limit_tokens: int
    usage_tokens: int
    crossed_at: Micros

    @property
    def alert_id(self) -> str:
        return alert_id(self.tenant_id, self.period, self.threshold)

    def to_json(self, emitted_at: Micros) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "type": ALERT_TYPE,
            "tenant_id": self.tenant_id,
            "period": self.period,
            "threshold": self.threshold,
            "limit_tokens": self.limit_tokens,
            "usage_tokens": self.usage_tokens,
            "crossed_at": format_timestamp(self.crossed_at),
            "emitted_at": format_timestamp(emitted_at),
        }


def alert_id(tenant_id: str, period: Period, threshold: float) -> str:
    return f"{tenant_id}:{period}:{threshold_name(threshold)}"


@value
class PeriodTotals:
    """A month's closures of one tenant."""

    tokens: int = 0
    closed: int = 0
    ttl_expired: int = 0

    def plus(self, tokens: int, reason: CloseReason | None) -> PeriodTotals:
        return PeriodTotals(self.tokens + tokens, self.closed + (reason is CloseReason.CLOSED),
                            self.ttl_expired + (reason is CloseReason.TTL_EXPIRED))


@value
class TenantUsage:
    """What a tenant's owner keeps: the table value of the tenant table."""

    tenant_id: str
    open_sessions: int = 0
    open_tokens: int = 0
    #: Per month, the closures whose closed_at falls in it.
    closed: Mapping[Period, PeriodTotals] = field(default_factory=dict)
    #: Per input partition, the next input offset not applied yet.
    applied_through: Mapping[int, int] = field(default_factory=dict)
    #: Per month, the names of the thresholds alerted.
    alerted: Mapping[Period, frozenset[str]] = field(default_factory=dict)
    #: Per input partition, the id of the last delta applied.
    last_delta: Mapping[int, str] = field(default_factory=dict)
    #: The position (offset in the tenant's partition of the repartition
    #: topic) of the last delta applied: the owner reading its input again
    #: after a crash skips what it applied, TTL steps included.
    read_through: int = -1

    def usage(self, period: Period, now: Micros) -> int:
        """SPEC §9: the month's closures, plus the open sessions when it is the month of `now`."""
        totals = self.closed.get(period)
        closed = 0 if totals is None else totals.tokens
        return closed + (self.open_tokens if period == period_of(now) else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "open_sessions": self.open_sessions,
            "open_tokens": self.open_tokens,
            "closed": {period: [t.tokens, t.closed, t.ttl_expired] for period, t in sorted(self.closed.items())},
            "applied_through": {str(p): offset for p, offset in sorted(self.applied_through.items())},
            "alerted": {period: sorted(names) for period, names in sorted(self.alerted.items())},
            "last_delta": {str(p): delta_id for p, delta_id in sorted(self.last_delta.items())},
            "read_through": self.read_through,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TenantUsage:
        return cls(
            data["tenant_id"], data["open_sessions"], data["open_tokens"],
            {period: PeriodTotals(*totals) for period, totals in data["closed"].items()},
            {int(p): offset for p, offset in data["applied_through"].items()},
            {period: frozenset(names) for period, names in data["alerted"].items()},
            {int(p): delta_id for p, delta_id in data["last_delta"].items()},
            data["read_through"],
        )


class _Working:
    """A tenant's state while one delta is applied to it (apply_delta's scratch)."""

    def __init__(self, state: TenantUsage) -> None:
        self.state = state
        self.open_sessions = state.open_sessions
        self.open_tokens = state.open_tokens
        self.closed = dict(state.closed)
        self.applied_through = dict(state.applied_through)
        self.alerted = {period: set(names) for period, names in state.alerted.items()}
        self.last_delta = dict(state.last_delta)
        self.read_through = state.read_through
        self.alerts: list[Alert] = []

    def usage(self, period: Period, current: Period) -> int:
        totals = self.closed.get(period)
        return (0 if totals is None else totals.tokens) + (self.open_tokens if period == current else 0)

    def check(self, period: Period, current: Period, budget: Budget | None, crossed_at: Micros) -> None:
        if budget is None or not budget.applies_to(period):
            return
        usage = self.usage(period, current)
        names = self.alerted.setdefault(period, set())
        for threshold in budget.thresholds:
            name = threshold_name(threshold)
            if name not in names and reaches(usage, threshold, budget.limit_tokens):
                names.add(name)
                self.alerts.append(Alert(self.state.tenant_id, period, threshold, budget.limit_tokens, usage,
                                         crossed_at))

    def apply(self, step: UsageStep) -> None:
        self.open_sessions += step.open_sessions
        self.open_tokens += step.open_tokens
        if step.closed_period is not None:
            totals = self.closed.get(step.closed_period, PeriodTotals())
            self.closed[step.closed_period] = totals.plus(step.closed_tokens, step.close_reason)

    def result(self) -> tuple[TenantUsage, tuple[Alert, ...]]:
        state = TenantUsage(self.state.tenant_id, self.open_sessions, self.open_tokens, self.closed,
                            self.applied_through,
                            {period: frozenset(names) for period, names in self.alerted.items() if names},
                            self.last_delta, self.read_through)
        return state, tuple(self.alerts)


def carried_alerts(state: TenantUsage, budget: Budget | None, now: Micros) -> tuple[TenantUsage, tuple[Alert, ...]]:
    """The thresholds the month of `now` has reached with no event of its
    own: open sessions carried into a new month, or a budget set or lowered
    below the usage. `crossed_at` is the month's start, or when the budget
    was set if that is later."""
    working = _Working(state)
    current = period_of(now)
    crossed_at = period_start(current) if budget is None else max(period_start(current), budget.set_at)
    working.check(current, current, budget, crossed_at)
    return working.result() if working.alerts else (state, ())


def apply_delta(state: TenantUsage, delta: UsageDelta, budget: Budget | None, now: Micros,
                position: int) -> tuple[TenantUsage, tuple[Alert, ...]]:
    """The tenant's state with the delta's new steps applied, and the alerts
    of the thresholds they reach. `position` is the delta's offset in the
    tenant's partition of the repartition topic. Skipped: a delta at or
    before the last position applied (the owner reading its input again), a
    delta that is the last one applied from its input partition (a send
    retried), and each step whose input offset was applied before (the
    source reading its input again after a crash, with other batch bounds)."""
    partition = delta.source_partition
    if position <= state.read_through or (delta.delta_id and state.last_delta.get(partition) == delta.delta_id):
        return state, ()
    state, carried = carried_alerts(state, budget, now)
    working = _Working(state)
    working.last_delta[partition] = delta.delta_id
    working.read_through = position
    current = period_of(now)
    current_start = period_start(current)
    for entry in delta.entries:
        if entry.offset is not None:
            if entry.offset < working.applied_through.get(partition, 0):
                continue
            working.applied_through[partition] = entry.offset + 1
        working.apply(entry.step)
        # An event that occurred before the month began counts in it through
        # its open session: the month's crossing is then at its start.
        working.check(current, current, budget, max(entry.occurred_at, current_start))
        closed_period = entry.step.closed_period
        if closed_period is not None and closed_period != current:
            working.check(closed_period, current, budget, entry.occurred_at)
    new_state, alerts = working.result()
    return new_state, carried + alerts



def budget_state(usage: int, budget: Budget | None, period: Period) -> str:
    """SPEC §9: `none` without a budget for the month, `exceeded` at or past
    the limit, `warning` from the lowest threshold on, else `ok`."""
    if budget is None or not budget.applies_to(period):
        return "none"
    if usage >= budget.limit_tokens:
        return "exceeded"
    return "warning" if reaches(usage, budget.thresholds[0], budget.limit_tokens) else "ok"


def usage_view(tenant_id: str, state: TenantUsage | None, budget: Budget | None, now: Micros) -> dict[str, Any]:
    """`GET /tenants/{id}/usage`: the tenant's live figures and the month of `now` (SPEC §8, §9)."""
    state = state or TenantUsage(tenant_id)
    period = period_of(now)
    usage = state.usage(period, now)
    totals = state.closed.get(period, PeriodTotals())
    applies = budget is not None and budget.applies_to(period)
    return {
        "tenant_id": tenant_id,
        "live_sessions": state.open_sessions,
        "live_token_count": state.open_tokens,
        "closures": {CloseReason.CLOSED.value: totals.closed, CloseReason.TTL_EXPIRED.value: totals.ttl_expired},
        "period": period,
        "usage_tokens": usage,
        "budget": budget.to_json() if budget is not None and applies else None,
        "remaining_tokens": max(budget.limit_tokens - usage, 0) if budget is not None and applies else None,
        "state": budget_state(usage, budget, period),
    }
