"""Builders, a driver and hypothesis strategies for the tests of `app.rules`.

* Builders (`created`, `activated`, `round_`, `extended`, `closed`) make event
  dicts as a gateway would send them; `encode` turns them into Kafka bytes.
* `Driver` folds `rules.apply` over deliveries, keeping `session_id -> Stored`
  the way the agent keeps its table, and logs every step so a run can be
  replayed (Kafka redelivery after a crash).
* `histories()` generates realistic gateway traffic for several sessions over a
  few partitions: creations, activations, rounds with gaps, swapped and late
  rounds (a skipped number sent later) and re-numbered repeats, extensions,
  closes, malformed bytes, tenant and model clashes, events for unknown
  sessions, clock-skewed events, and gateway re-sends (the same bytes again
  at a later offset).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from hypothesis import strategies as st

from app import rules
from app.rules import (
    SECOND,
    Command,
    Delivery,
    Expire,
    Outcome,
    Policy,
    Purge,
    Session,
    Source,
    Stored,
    decode_event,
    format_timestamp,
    parse_timestamp,
)

T0 = parse_timestamp("2024-05-01T12:00:00Z")
EVENTS_TOPIC = "session-events"
POLICY = Policy()

# --------------------------------------------------------------------------
# Event builders

_ids = itertools.count(1)


def _event(kind: str, session_id: str, at: int | str, tenant: str, event_id: str | None, **fields: Any) -> dict:
    return {
        "event_id": event_id or f"ev-{next(_ids)}",
        "type": kind,
        "session_id": session_id,
        "tenant_id": tenant,
        "occurred_at": at if isinstance(at, str) else format_timestamp(at),
        **fields,
    }


def created(session_id: str = "s-1", *, at: int | str = T0, tenant: str = "acme", provider: str = "openai",
            model: str = "gpt-x", ttl: int = 600, metadata: Any = ..., event_id: str | None = None,
            **extra: Any) -> dict:
    body = _event("session.created", session_id, at, tenant, event_id, provider_id=provider, model=model,
                  ttl_secs=ttl, **extra)
    if metadata is not ...:
        body["metadata"] = metadata
    return body


def activated(session_id: str = "s-1", *, at: int | str = T0 + SECOND, tenant: str = "acme", initial: int = 1000,
              event_id: str | None = None, **extra: Any) -> dict:
    return _event("session.activated", session_id, at, tenant, event_id, initial_token_count=initial, **extra)


def round_(session_id: str = "s-1", *, n: int, delta: int, at: int | str, tenant: str = "acme",
           model: str | None = None, event_id: str | None = None, **extra: Any) -> dict:
    body = _event("round.completed", session_id, at, tenant, event_id, round=n, delta_token_count=delta, **extra)
    if model is not None:
        body["model"] = model
    return body


def extended(session_id: str = "s-1", *, ttl: int, at: int | str, tenant: str = "acme",
             event_id: str | None = None, **extra: Any) -> dict:
    return _event("session.extended", session_id, at, tenant, event_id, ttl_secs=ttl, **extra)


def closed(session_id: str = "s-1", *, at: int | str, tenant: str = "acme", reason: str | None = None,
           event_id: str | None = None, **extra: Any) -> dict:
    body = _event("session.closed", session_id, at, tenant, event_id, **extra)
    if reason is not None:
        body["reason"] = reason
    return body


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def key_of(body: Any) -> bytes | None:
    if isinstance(body, dict) and isinstance(body.get("session_id"), str):
        return body["session_id"].encode()
    return None


def event_delivery(body: Any, *, partition: int = 0, offset: int = 0, key: bytes | type | None = ...,
                   policy: Policy = POLICY) -> Delivery:
    """A delivery of one gateway record; the key defaults to the event's session_id."""
    kafka_key = key_of(body) if key is ... else key
    return Delivery(Source(EVENTS_TOPIC, partition, offset), decode_event(kafka_key, encode(body), policy))


# --------------------------------------------------------------------------
# Output helpers


def outcome_of(outputs: tuple) -> Outcome:
    outcomes = [o for o in outputs if isinstance(o, Outcome)]
    assert len(outcomes) == 1, f"expected exactly one Outcome, got {outputs!r}"
    return outcomes[0]


def closures_in(outputs: tuple) -> list[rules.Closure]:
    return [o for o in outputs if isinstance(o, rules.Closure)]


def rejections_in(outputs: tuple) -> list[rules.Rejection]:
    return [o for o in outputs if isinstance(o, rules.Rejection)]


def closure_content(closure: rules.Closure) -> bytes:
    """The closure's JSON without `emitted_at`, canonically encoded (hashable)."""
    body = closure.to_json(0)
    del body["emitted_at"]
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


# --------------------------------------------------------------------------
# The driver: `apply` folded over deliveries, like the agent over its table


def is_open(state: Stored) -> bool:
    return isinstance(state, Session) and state.close_reason is None


def lookup_key(delivery: Delivery | Command) -> str | None:
    """The table key the agent reads for a delivery."""
    if not isinstance(delivery, Delivery):
        return delivery.session_id
    if isinstance(delivery.message, rules.InvalidEvent):
        return delivery.message.session_key
    return delivery.message.session_id


@dataclass(frozen=True)
class Step:
    delivery: Delivery | Command
    now: int


@dataclass
class Logged:
    step: Step
    key: str | None
    before: Stored | None
    after: Stored | None
    outputs: tuple


@dataclass
class Driver:
    policy: Policy = POLICY
    states: dict[str, Stored] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)

    def deliver(self, step: Step) -> tuple:
        key = lookup_key(step.delivery)
        before = self.states.get(key) if key is not None else None
        unchanged = copy.deepcopy((before, step.delivery))
        after, outputs = rules.apply(before, step.delivery, step.now, self.policy)
        # The rules' values are immutable for the type checker only (app/rules/values.py).
        assert (before, step.delivery) == unchanged, "apply changed what it was given"
        if key is not None:
            if after is None:
                self.states.pop(key, None)
            else:
                self.states[key] = after
        else:
            assert after is None, "a delivery without a key cannot create state"
        self.log.append(Logged(step, key, before, after, outputs))
        return outputs

    def command(self, command: Command, now: int) -> tuple:
        """What the agent's timer does: deliver a command for one session."""
        return self.deliver(Step(command, now))

    def timer(self, now: int) -> None:
        """What the agent's timer does on a tick: expire the open sessions that
        are due, purge the closed ones and tombstones whose time has come."""
        due = sorted((s.due_at(self.policy), sid) for sid, s in self.states.items())
        for due_at, session_id in due:
            if due_at <= now:
                self.command(Expire(session_id) if is_open(self.states[session_id]) else Purge(session_id), now)

    def closures(self) -> list[rules.Closure]:
        return [c for entry in self.log for c in closures_in(entry.outputs)]


def replay(states: dict[str, Stored], steps: list[Step], policy: Policy = POLICY) -> Driver:
    driver = Driver(policy=policy, states=dict(states))
    for step in steps:
        driver.deliver(step)
    return driver


def shift(step: Step, by: int) -> Step:
    return replace(step, now=step.now + by)


# --------------------------------------------------------------------------
# Gateway histories


@dataclass(frozen=True)
class Sent:
    """One record a gateway put on `session-events`."""

    partition: int
    key: bytes | None
    value: bytes
    send_time: int  # when the gateway sent it; the worker sees it within grace
    session_id: str
    kind: str  # what the generator meant it to be, for debugging
    resend_of: int | None = None  # index of the original in History.sent


@dataclass(frozen=True)
class History:
    sent: tuple[Sent, ...]  # in topic order (increasing offsets per partition)
    offsets: tuple[int, ...]  # the offset of each record in its partition
    sessions: tuple[str, ...]  # ids of sessions the gateways created

    def steps(self, lags: list[int] | None = None, policy: Policy = POLICY) -> list[tuple[Step, Sent]]:
        """Deliveries with processing times: each record is processed within
        `grace` of being sent, and the worker's clock never goes back."""
        lags = lags or [0] * len(self.sent)
        now = 0
        result = []
        for sent, offset, lag in zip(self.sent, self.offsets, lags, strict=True):
            now = max(now, sent.send_time + lag)
            assert now < sent.send_time + policy.grace
            delivery = Delivery(Source(EVENTS_TOPIC, sent.partition, offset),
                                decode_event(sent.key, sent.value, policy))
            result.append((Step(delivery, now), sent))
        return result


def lags(n: int, policy: Policy = POLICY) -> st.SearchStrategy[list[int]]:
    """Processing delays, each below grace."""
    return st.lists(st.integers(0, policy.grace - 1), min_size=n, max_size=n)


TENANTS = ("acme", "globex")
MODELS = ("gpt-x", "claude-y")
ROUND_MOVES = ("next", "next", "next", "next", "gap", "gap", "swap", "late", "late", "renumbered", "wrong_model",
               "right_model", "wrong_tenant", "extend", "extend", "skew", "malformed", "key_mismatch", "huge")


@st.composite
def histories(draw: st.DrawFn, max_sessions: int = 5, resends: bool = True) -> History:
    n_partitions = draw(st.integers(1, 3))
    n_sessions = draw(st.integers(1, max_sessions))
    originals: list[Sent] = []

    def emit(sid: str, partition: int, body: Any, send_time: int, kind: str, key: Any = ...) -> None:
        kafka_key = (key_of(body) or sid.encode()) if key is ... else key
        originals.append(Sent(partition, kafka_key, encode(body), send_time, sid, kind))

    for i in range(n_sessions):
        sid = f"sess-{i}"
        partition = draw(st.integers(0, n_partitions - 1))
        tenant = draw(st.sampled_from(TENANTS))
        model = draw(st.sampled_from(MODELS))
        ttl = draw(st.integers(15, 240))
        t = T0 + draw(st.integers(0, 120)) * SECOND + draw(st.integers(0, SECOND - 1))
        creation = created(sid, at=t, tenant=tenant, model=model, ttl=ttl,
                           metadata=draw(st.sampled_from([..., {}, {"team": "x"}, [1, 2], None, "note"])))
        emit(sid, partition, creation, t, "created")

        def later(lo: int = 1, hi: int = 20) -> int:
            return draw(st.integers(lo, hi)) * SECOND + draw(st.integers(0, SECOND - 1))

        if draw(st.integers(0, 9)) == 0:
            # Another gateway reuses the id with another creation.
            clash = dict(creation, event_id=f"clash-{i}", model="other-model")
            emit(sid, partition, clash, t + later(0, 5), "clash")
        if draw(st.integers(0, 9)) > 0:
            t += later(0, 10)
            near_max = draw(st.integers(0, 7)) == 0  # so that rounds can overflow
            initial = rules.MAX_COUNT - 10 if near_max else draw(st.integers(0, 100_000))
            emit(sid, partition, activated(sid, at=t, tenant=tenant, initial=initial), t, "activated")
        n = 0
        skipped: list[int] = []  # round numbers jumped over, not sent yet
        for _ in range(draw(st.integers(0, 9))):
            t += later(1, 25)
            move = draw(st.sampled_from(ROUND_MOVES))
            delta = draw(st.integers(0, 50_000))
            if move == "gap":
                jump = draw(st.integers(1, 3))
                skipped.extend(range(n + 1, n + 1 + jump))
                n += jump
            if move in ("next", "gap", "wrong_model", "right_model", "huge"):
                n += 1
                use_model = {"wrong_model": "other-model", "right_model": model}.get(move)
                if move == "huge":
                    delta = 2**62
                emit(sid, partition, round_(sid, n=n, delta=delta, at=t, tenant=tenant, model=use_model), t, move)
            elif move == "swap":
                # Two new rounds, the later one first (a retried round landing late).
                for number in (n + 2, n + 1):
                    emit(sid, partition, round_(sid, n=number, delta=draw(st.integers(0, 50_000)), at=t,
                                                tenant=tenant), t, move)
                n += 2
            elif move == "late" and skipped:
                number = skipped.pop(draw(st.integers(0, len(skipped) - 1)))
                emit(sid, partition, round_(sid, n=number, delta=delta, at=t, tenant=tenant), t, move)
            elif move == "renumbered":
                # A round number already sent, under a new event id: a duplicate,
                # unless that round was rejected and is still missing.
                emit(sid, partition, round_(sid, n=max(n, 1), delta=delta, at=t, tenant=tenant), t, move)
            elif move == "wrong_tenant":
                other = TENANTS[1 - TENANTS.index(tenant)]
                emit(sid, partition, round_(sid, n=n + 1, delta=delta, at=t, tenant=other), t, move)
            elif move == "extend":
                new_ttl = draw(st.integers(15, 300))
                emit(sid, partition, extended(sid, ttl=new_ttl, at=t, tenant=tenant), t, move)
            elif move == "skew":
                body = round_(sid, n=n + 1, delta=delta, at=t + 86_400 * SECOND, tenant=tenant)
                emit(sid, partition, body, t, move)
            elif move == "malformed":
                junk = draw(st.sampled_from([b"\xff\xfe not json", b"{\"type\": \"round.completed\"}",
                                             orjson.dumps(round_(sid, n=n + 1, delta=-1, at=t, tenant=tenant))]))
                emit(sid, partition, junk, t, move, key=sid.encode())
            elif move == "key_mismatch":
                body = round_(sid, n=n + 1, delta=delta, at=t, tenant=tenant)
                emit(sid, partition, body, t, move, key=b"someone-else")
        if draw(st.integers(0, 9)) < 6:
            t += later(1, 30)
            emit(sid, partition, closed(sid, at=t, tenant=tenant, reason="done"), t, "closed")
            if draw(st.booleans()):
                t += later(1, 10)
                emit(sid, partition, round_(sid, n=n + 1, delta=5, at=t, tenant=tenant), t, "after_close")
        if draw(st.integers(0, 9)) == 0:
            ghost = f"ghost-{i}"
            emit(ghost, partition, round_(ghost, n=1, delta=7, at=t, tenant=tenant), t, "ghost")

    # Gateway re-sends: the same bytes again, later, at a new offset.
    sent = list(originals)
    if resends:
        for index, original in enumerate(originals):
            if draw(st.integers(0, 9)) < 2:
                delay = draw(st.integers(1, 90)) * SECOND
                sent.append(replace(original, send_time=original.send_time + delay, kind="resend:" + original.kind,
                                    resend_of=index))
    sent.sort(key=lambda s: s.send_time)
    # Offsets: increasing per partition, from an arbitrary base, with gaps.
    bases = {p: draw(st.integers(0, 1000)) for p in range(n_partitions)}
    step = draw(st.integers(1, 3))
    offsets = []
    for record in sent:
        offsets.append(bases[record.partition])
        bases[record.partition] += step
    return History(tuple(sent), tuple(offsets), tuple(f"sess-{i}" for i in range(n_sessions)))


def run_history(history: History, lags: list[int] | None = None,
                policy: Policy = POLICY) -> tuple[Driver, list[tuple[Logged, Sent]]]:
    """Deliver the history with the scheduler's timer running before each
    event. Returns the driver and the log entry of each gateway record."""
    driver = Driver(policy=policy)
    per_event: list[tuple[Logged, Sent]] = []
    for step, sent in history.steps(lags, policy):
        driver.timer(step.now)
        driver.deliver(step)
        per_event.append((driver.log[-1], sent))
    return driver, per_event


def finish(driver: Driver) -> int:
    """Let every open session expire: deliver Expire once it is due.  Returns
    the time after the last expiry."""
    now = max([e.step.now for e in driver.log], default=T0)
    open_due = [s.due_at(driver.policy) for s in driver.states.values() if is_open(s)]
    now = max([now, *open_due])
    driver.timer(now)
    return now
