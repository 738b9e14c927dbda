"""A gateway simulator: realistic sessions published to the events topic.

The simulator plays many LLM-gateway sessions at once against the events topic,
the way a gateway fleet would: sessions are created, activated, run tool-loop
rounds, sometimes extend their TTL and close; some are abandoned (left to the
service's TTL), some events are re-sent, and some are broken on purpose.

Everything the service must conclude is known by construction, before a single
byte is sent: `Simulation.expected` is the oracle (`app.dev.oracle.Expected`)
holding, per session, the closure it must publish, and the counts of applied,
duplicate and rejected events; `collect_outputs` reads back what the service
published, for the oracle's checks.

Generation is pure and seeded (`random.Random`), so a run is reproducible from
its seed and run id.  Only the timestamps are not: an event carries the wall
clock of the moment it is sent (`Stamper`), as a gateway's would, so it is
always within the service's clock-skew and TTL windows.

Rounds arrive as SPEC revision 2 expects gateways to deliver them: in some
sessions a round lands late, after a higher one (swapped with the next, or
re-sent after several), and some are lost for good (the next skips a number).

The gateway's side is the project's own: every well-formed event is built and
checked by the publisher library (`app.publisher.build_event`), and records go
to Kafka through its `SessionPublisher` (`publish`), or through a worker's
`POST /events` (`publish_http`), where the events the API refuses never reach
the topic and the oracle expects them refused instead of rejected.

Plans are generated lazily, session by session, so a benchmark of millions of
events holds only the sessions in flight plus the oracle in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from enum import Enum
from functools import cached_property
from typing import Any, Literal, TextIO

import click
import orjson
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from app.dev.ledger_check import format_ledger_report, verify_simulation_ledger
from app.dev.oracle import (
    Collected,
    Expected,
    ExpectedClosure,
    VerifyReport,
    belongs_to_run,
    check_refusals,
    format_report,
    source_of,
    verify_outputs,
)
from app.dev.partitioners import Partitioner, partition_for
from app.kafka_config import security_options
from app.publisher import SessionPublisher, build_event
from app.rules import MAX_COUNT, SECOND, CloseReason, Micros, Reason, Result, format_timestamp
from app.settings import load_settings

__all__ = [
    "BAD_KINDS",
    "CLOCK_SKEW_SECS",
    "KAFKA_ONLY_KINDS",
    "Form",
    "IngestFailed",
    "PlannedEvent",
    "PublishStats",
    "SessionPlan",
    "Simulation",
    "SimulationConfig",
    "Stamper",
    "TopicMissing",
    "Transport",
    "Window",
    "collect_outputs",
    "fit_to_rate",
    "format_totals",
    "new_run_id",
    "publish",
    "publish_http",
    "simulate_command",
]

# --------------------------------------------------------------------------
# The simulated world

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
# A few large customers and a tail, as on a real gateway.
TENANT_WEIGHTS = (40, 25, 15, 12, 8)
MODELS_BY_PROVIDER = {
    "openai": ("gpt-4o", "gpt-4o-mini", "o3-mini"),
    "anthropic": ("claude-sonnet-4", "claude-3-5-haiku"),
    "google": ("gemini-2.0-flash", "gemini-1.5-pro"),
    "mistral": ("mistral-large", "codestral"),
}
PROVIDERS = tuple(MODELS_BY_PROVIDER)
ALL_MODELS = tuple(model for models in MODELS_BY_PROVIDER.values() for model in models)
AGENTS = ("code-review", "support-bot", "sql-analyst", "research", "triage")
REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2")
CLOSE_REASONS = (None, "completed", "client_disconnect", "max_rounds")

# Sessions that close themselves get TTLs far longer than any run's span, so
# none of their events can be late; idle ones get a short TTL so the service
# closes them by TTL within the run.
LIVE_TTLS_SECS = (1800, 3600, 7200)
EXTENSION_SECS = (900, 1800, 3600)
DEFAULT_IDLE_TTL_SECS = (5, 10)
IDLE_MAX_ROUNDS = 3
NEVER_ACTIVATED_SHARE = 0.03
EXTENSION_SHARE = 0.2
MODEL_IN_ROUNDS_SHARE = 0.5
# Rounds per session are exponential (many short agent loops, a few long
# ones), capped so one session cannot dominate a run.
ROUNDS_CAP_FACTOR = 4
# Token sizes: an initial context of system prompt, tools and history; a round
# adds a tool result and a reply.  Log-normal, clamped.
INITIAL_TOKENS = (3000, 0.8, 1, 200_000)  # median, sigma, min, max
DELTA_TOKENS = (600, 1.0, 1, 50_000)
# A gateway clock this far ahead is beyond any accepted max_clock_skew (the
# setting's upper bound is one day).
CLOCK_SKEW_SECS = 2 * 86_400


class Window(Enum):
    """Where in its session's stream a bad event may go, so that its expected
    rejection reason does not depend on the session's state at that point."""

    ANYWHERE = "anywhere"  # the reason does not depend on the state, once created
    WHILE_ACTIVE = "while_active"  # after activation, before close
    AFTER_CLOSE = "after_close"


# Each kind of broken event, the rejection it must get, and where it may go.
BAD_KINDS: dict[str, tuple[Reason, Window]] = {
    "malformed_json": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "non_utf8_value": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "not_an_object": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "wrong_type": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "missing_field": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "negative_count": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "unknown_type": (Reason.INVALID_EVENT, Window.ANYWHERE),
    "non_utf8_key": (Reason.KEY_MISMATCH, Window.ANYWHERE),
    "key_mismatch": (Reason.KEY_MISMATCH, Window.ANYWHERE),
    "unknown_session": (Reason.UNKNOWN_SESSION, Window.ANYWHERE),
    # Judged before the session's state is looked at (rules order).
    "tenant_mismatch": (Reason.TENANT_MISMATCH, Window.ANYWHERE),
    "session_exists": (Reason.SESSION_EXISTS, Window.ANYWHERE),
    "clock_skew": (Reason.CLOCK_SKEW, Window.ANYWHERE),
    # A different initial count: invalid_transition while active, session_closed once closed (§5.2).
    "invalid_transition": (Reason.INVALID_TRANSITION, Window.WHILE_ACTIVE),
    "model_mismatch": (Reason.MODEL_MISMATCH, Window.WHILE_ACTIVE),
    "overflow": (Reason.OVERFLOW, Window.WHILE_ACTIVE),
    "session_closed": (Reason.SESSION_CLOSED, Window.AFTER_CLOSE),
}
#: Kinds whose key differs from their session_id: `POST /events` keys every
#: event by its session_id, so they can only be sent straight to Kafka.
KAFKA_ONLY_KINDS = frozenset({"non_utf8_key", "key_mismatch"})

#: How the simulated gateways publish: straight to Kafka, or through a worker's `POST /events`.
Transport = Literal["kafka", "http"]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    sessions: int = 1000
    #: Mean tool-loop rounds per session.
    rounds: float = 8.0
    #: Probability that a gateway event is re-sent later (same bytes).
    duplicates: float = 0.02
    #: Probability that a gateway event is accompanied by a broken one.
    bad: float = 0.01
    #: Share of sessions abandoned without a close (closed by TTL).
    idle: float = 0.1
    #: Probability that a round is lost for good, so the next one skips a number.
    lost_rounds: float = 0.02
    #: Probability that a round lands late: after the next round or several
    #: (a gateway's retry), always before the session's close (SPEC §5.3).
    late_rounds: float = 0.05
    seed: int = 0
    #: Prefix of every id, so runs never collide on the same topics.
    run_id: str = "sim"
    #: Sessions with events in flight at once.
    in_flight: int = 64
    idle_ttl_secs: tuple[int, int] = DEFAULT_IDLE_TTL_SECS
    #: How the events are published; over HTTP no record's key differs from its session_id.
    via: Transport = "kafka"


# created, activated, rounds; each may be re-sent and may bring a bad event.
_IDLE_MAX_BURST = (2 + IDLE_MAX_ROUNDS) * 3


def new_run_id() -> str:
    return f"sim-{secrets.token_hex(4)}"


def fit_to_rate(config: SimulationConfig, rate: float) -> SimulationConfig:
    """Adapt a config to a slow send rate, so no planned event is sent after
    its session's TTL (which would make it `session_expired`, not what the
    oracle says).

    A session's events spread over about `in_flight` x its length sends, so
    the window shrinks until the longest session fits in a quarter of the
    shortest live TTL; an idle session is sent as one burst, whose duration
    its TTL must comfortably exceed.
    """
    if rate <= 0:
        return config
    longest_session = (4 + math.ceil(ROUNDS_CAP_FACTOR * config.rounds)) * 3  # with re-sends and bad events
    in_flight = max(1, min(config.in_flight, int(rate * min(LIVE_TTLS_SECS) / 4 / longest_session)))
    burst_secs = _IDLE_MAX_BURST / rate
    low, high = config.idle_ttl_secs
    idle_ttl = config.idle_ttl_secs
    if burst_secs > low / 2:  # keep at least half the shortest TTL after the burst
        shift = math.ceil(burst_secs)
        idle_ttl = (low + shift, high + shift)
    return replace(config, in_flight=in_flight, idle_ttl_secs=idle_ttl)


# --------------------------------------------------------------------------
# Plans: what is sent, and what the service must make of it


class Form(Enum):
    """How a planned event's body becomes bytes."""

    #: A gateway's event: built and checked by the publisher library.
    EVENT = "event"
    JSON = "json"  # the body as it is: a broken gateway's
    TRUNCATED = "truncated"  # cut short: not JSON
    NON_UTF8 = "non_utf8"  # an invalid UTF-8 sequence inside a string
    NOT_AN_OBJECT = "not_an_object"  # a JSON array holding the event


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One Kafka record the simulated gateway sends, and its expected fate."""

    key: bytes
    event_id: str
    #: The event without `occurred_at`, which is stamped when sent; None for
    #: a re-send, which repeats the bytes sent for `event_id`.
    body: Mapping[str, Any] | None
    result: Result
    reason: Reason | None = None
    form: Form = Form.EVENT
    #: Seconds added to the send time for `occurred_at` (a gateway clock ahead).
    skew_secs: int = 0
    #: Whether these bytes are sent again later, so must be kept.
    resent_later: bool = False
    #: A round that lands after a higher round of its session: applied all the same (SPEC §5.3).
    late: bool = False


@dataclass(frozen=True, slots=True)
class SessionPlan:
    closure: ExpectedClosure
    #: Abandoned: its events go out as one burst and the TTL closes it.
    idle: bool
    events: tuple[PlannedEvent, ...]


class Simulation:
    """A seeded simulation: its sessions, their interleaving, and the oracle.

    `sessions()` and `events()` start from the seed on every call, so the
    oracle and the producer can each walk the plan without holding it.
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config

    def sessions(self) -> Iterator[SessionPlan]:
        rng = random.Random(f"{self.config.seed}/sessions")
        for index in range(self.config.sessions):
            yield _plan_session(rng, self.config, index)

    def events(self) -> Iterator[PlannedEvent]:
        """All records in send order: up to `in_flight` sessions interleaved,
        each idle session as one burst (an abandoned client fires a few quick
        calls, then vanishes)."""
        rng = random.Random(f"{self.config.seed}/interleave")
        pending = self.sessions()
        in_flight: list[deque[PlannedEvent]] = []
        while True:
            while len(in_flight) < self.config.in_flight:
                plan = next(pending, None)
                if plan is None:
                    break
                if plan.idle:
                    yield from plan.events
                else:
                    in_flight.append(deque(plan.events))
            if not in_flight:
                return
            index = rng.randrange(len(in_flight))
            session = in_flight[index]
            yield session.popleft()
            if not session:
                in_flight[index] = in_flight[-1]
                in_flight.pop()

    @cached_property
    def expected(self) -> Expected:
        expected = Expected(self.config.run_id, via_http=self.config.via == "http")
        for plan in self.sessions():
            expected.add(plan.closure, plan.events)
        return expected


def _log_normal(rng: random.Random, shape: tuple[int, float, int, int]) -> int:
    median, sigma, low, high = shape
    return min(high, max(low, int(rng.lognormvariate(math.log(median), sigma))))


def _plan_session(rng: random.Random, config: SimulationConfig, index: int) -> SessionPlan:
    session_id = f"{config.run_id}-s{index:06d}"
    key = session_id.encode()
    tenant = rng.choices(TENANTS, TENANT_WEIGHTS)[0]
    provider = rng.choice(PROVIDERS)
    model = rng.choice(MODELS_BY_PROVIDER[provider])
    idle = rng.random() < config.idle
    ttl = rng.randint(*config.idle_ttl_secs) if idle else rng.choice(LIVE_TTLS_SECS)
    activated = idle or rng.random() >= NEVER_ACTIVATED_SHARE
    initial = _log_normal(rng, INITIAL_TOKENS) if activated else 0
    if idle:
        round_total = rng.randint(0, IDLE_MAX_ROUNDS)
    elif activated:
        round_total = min(round(rng.expovariate(1 / config.rounds)) if config.rounds > 0 else 0,
                          math.ceil(ROUNDS_CAP_FACTOR * config.rounds))
    else:
        round_total = 0
    model_in_rounds = rng.random() < MODEL_IN_ROUNDS_SHARE
    ids = (f"{session_id}-e{n}" for n in itertools.count())

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": next(ids), "type": kind, "session_id": session_id, "tenant_id": tenant, **fields}

    metadata = {"agent": rng.choice(AGENTS), "user": f"u-{rng.randrange(10_000):04d}", "region": rng.choice(REGIONS)}
    gateway_events = [event("session.created", provider_id=provider, model=model, ttl_secs=ttl, metadata=metadata)]
    if activated:
        gateway_events.append(event("session.activated", initial_token_count=initial))
    round_number = missing_rounds = delta_total = 0
    for _ in range(round_total):
        skipped = 1 if rng.random() < config.lost_rounds else 0
        missing_rounds += skipped
        round_number += 1 + skipped
        delta = _log_normal(rng, DELTA_TOKENS)
        delta_total += delta
        extra = {"model": model} if model_in_rounds else {}
        gateway_events.append(event("round.completed", round=round_number, delta_token_count=delta, **extra))
    if activated and not idle and rng.random() < EXTENSION_SHARE:
        ttl += rng.choice(EXTENSION_SECS)
        gateway_events.insert(rng.randint(2, len(gateway_events)), event("session.extended", ttl_secs=ttl))
    if not idle:
        reason = rng.choice(CLOSE_REASONS)
        gateway_events.append(event("session.closed", **({} if reason is None else {"reason": reason})))

    closure = ExpectedClosure(
        session_id=session_id, tenant_id=tenant, provider_id=provider, model=model, ttl_secs=ttl,
        reason=CloseReason.TTL_EXPIRED if idle else CloseReason.CLOSED, initial_token_count=initial,
        delta_token_count=delta_total, round_count=round_number, missing_rounds=missing_rounds,
    )
    context = _SessionContext(session_id, key, tenant, model, initial, round_number + 1, ids)
    last = len(gateway_events) - 1
    # Until the close (at `last`), or the end of an idle session's burst.
    open_until = float(last) if not idle else last + 1.0
    windows = {
        Window.ANYWHERE: (0.0, last + 1.0),
        Window.WHILE_ACTIVE: (1.0, open_until),
        Window.AFTER_CLOSE: (float(last), last + 1.0),
    }
    allowed = {Window.ANYWHERE}
    if activated:
        allowed.add(Window.WHILE_ACTIVE)
    if not idle:
        allowed.add(Window.AFTER_CLOSE)
    bad_kinds = [kind for kind, (_, window) in BAD_KINDS.items()
                 if window in allowed and (config.via == "kafka" or kind not in KAFKA_ONLY_KINDS)]

    # Each record gets a position: gateway events at 0..last, late rounds,
    # re-sends and bad events at a random point of their window; at equal
    # positions a gateway event goes first, so "after position i" includes i.
    placed: list[tuple[float, int, int, PlannedEvent]] = []
    for position, body in enumerate(gateway_events):
        at = float(position)
        if body["type"] == "round.completed" and position + 1 < open_until and rng.random() < config.late_rounds:
            at = position + 1 + rng.random() * (open_until - position - 1)
        # Re-sending an extension would apply it again (it is not a duplicate
        # by the rules), so extensions are never re-sent.
        resent = body["type"] != "session.extended" and rng.random() < config.duplicates
        placed.append((at, 0 if at == position else 1, len(placed),
                       PlannedEvent(key, body["event_id"], body, Result.APPLIED, resent_later=resent)))
        if resent:
            again = at + rng.random() * (last + 1 - at)
            placed.append((again, 1, len(placed), PlannedEvent(key, body["event_id"], None, Result.DUPLICATE)))
        if rng.random() < config.bad:
            kind = rng.choice(bad_kinds)
            reason, window = BAD_KINDS[kind]
            low, high = windows[window]
            placed.append((low + rng.random() * (high - low), 1, len(placed), _bad_event(kind, reason, rng, context)))
    placed.sort(key=lambda item: item[:3])
    return SessionPlan(closure, idle, tuple(_mark_late_rounds(item[3] for item in placed)))


def _mark_late_rounds(events: Iterable[PlannedEvent]) -> Iterator[PlannedEvent]:
    """The events, each round that comes after a higher round marked `late`."""
    highest = 0
    for event in events:
        if event.form is Form.EVENT and event.body is not None and event.body["type"] == "round.completed":
            number = event.body["round"]
            if number < highest:
                event = replace(event, late=True)
            highest = max(highest, number)
        yield event


@dataclass(frozen=True, slots=True)
class _SessionContext:
    session_id: str
    key: bytes
    tenant_id: str
    model: str
    initial_token_count: int
    #: A round number beyond every round of the session, so a round event is
    #: never taken for a duplicate.
    next_round: int
    ids: Iterator[str]


def _bad_event(kind: str, reason: Reason, rng: random.Random, session: _SessionContext) -> PlannedEvent:
    event_id = next(session.ids)
    body: dict[str, Any] = {
        "event_id": event_id, "type": "round.completed", "session_id": session.session_id,
        "tenant_id": session.tenant_id, "round": session.next_round,
        "delta_token_count": _log_normal(rng, DELTA_TOKENS),
    }
    key = session.key
    form = Form.JSON
    skew_secs = 0
    match kind:
        case "malformed_json":
            form = Form.TRUNCATED
        case "non_utf8_value":
            body["note"] = _NON_UTF8_PLACEHOLDER
            form = Form.NON_UTF8
        case "not_an_object":
            form = Form.NOT_AN_OBJECT
        case "wrong_type":
            body["delta_token_count"] = str(body["delta_token_count"])
        case "missing_field":
            del body["tenant_id"]
        case "negative_count":
            body["delta_token_count"] = -body["delta_token_count"]
        case "unknown_type":
            body["type"] = "session.paused"
        case "non_utf8_key":
            key = b"\xff" + key
        case "key_mismatch":
            body["session_id"] = f"{session.session_id}-other"
        case "unknown_session":
            body["session_id"] = f"{event_id}-ghost"
            key = body["session_id"].encode()
        case "tenant_mismatch":
            body["tenant_id"] = rng.choice([tenant for tenant in TENANTS if tenant != session.tenant_id])
        case "session_exists":
            other_model = rng.choice([model for model in ALL_MODELS if model != session.model])
            provider = next(name for name, models in MODELS_BY_PROVIDER.items() if other_model in models)
            body = {"event_id": event_id, "type": "session.created", "session_id": session.session_id,
                    "tenant_id": session.tenant_id, "provider_id": provider, "model": other_model,
                    "ttl_secs": rng.choice(LIVE_TTLS_SECS), "metadata": {}}
        case "clock_skew":
            skew_secs = CLOCK_SKEW_SECS
        case "invalid_transition":
            body = {"event_id": event_id, "type": "session.activated", "session_id": session.session_id,
                    "tenant_id": session.tenant_id, "initial_token_count": session.initial_token_count + 1}
        case "model_mismatch":
            body["model"] = rng.choice([model for model in ALL_MODELS if model != session.model])
        case "overflow":
            # The session's initial count is at least 1, so this passes 2^63-1.
            body["delta_token_count"] = MAX_COUNT
        case "session_closed":
            pass  # a new round after the close
        case _:
            raise ValueError(f"unknown bad event kind {kind!r}")
    return PlannedEvent(key, event_id, body, Result.REJECTED, reason, form, skew_secs)


_NON_UTF8_PLACEHOLDER = "@@not-utf-8@@"
_COMMON_FIELDS = ("event_id", "type", "session_id", "tenant_id")


def _built(body: Mapping[str, Any], occurred_at: str) -> dict[str, Any]:
    fields = {name: value for name, value in body.items() if name not in _COMMON_FIELDS}
    return build_event(body["type"], session_id=body["session_id"], tenant_id=body["tenant_id"],
                       occurred_at=occurred_at, event_id=body["event_id"], **fields)


class Stamper:
    """Turns planned events into the bytes sent at a given moment.

    `occurred_at` is the send time, as a gateway stamps it.  A gateway's
    event is built by `app.publisher.build_event`, which raises
    `InvalidEventError` if the plan made one the worker would refuse.  The
    bytes of an event that is re-sent later are kept until then: a re-send is
    the exact same bytes, `occurred_at` included, like a gateway retry.
    """

    def __init__(self) -> None:
        self._kept: dict[str, bytes] = {}

    def encode(self, event: PlannedEvent, now: Micros) -> bytes:
        if event.body is None:
            return self._kept.pop(event.event_id)
        occurred_at = format_timestamp(now + event.skew_secs * SECOND)
        if event.form is Form.EVENT:
            value = orjson.dumps(_built(event.body, occurred_at))
        else:
            body = {**event.body, "occurred_at": occurred_at}
            value = orjson.dumps([body] if event.form is Form.NOT_AN_OBJECT else body)
        if event.form is Form.TRUNCATED:
            # Two thirds keep the event_id (the first field), so the
            # rejection can still be traced to this run.
            value = value[: len(value) * 2 // 3]
        elif event.form is Form.NON_UTF8:
            value = value.replace(_NON_UTF8_PLACEHOLDER.encode(), b"\xc3\x28")
        if event.resent_later:
            self._kept[event.event_id] = value
        return value


# --------------------------------------------------------------------------
# Kafka: publishing the events, collecting the outputs


@dataclass(frozen=True, slots=True)
class PublishStats:
    events: int
    seconds: float
    partitions: int
    #: HTTP requests, when published through `POST /events`.
    requests: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class TopicMissing(RuntimeError):
    """The topic does not exist; the service creates it when it starts."""


class IngestFailed(RuntimeError):
    """`POST /events` answered something the simulator cannot go on from."""


# Futures gathered at once: large enough to keep batches full, small enough
# that a failed send surfaces quickly.
SEND_CHUNK = 2000
# Pacing sleeps shorter than this cost more than they gain; the lag is made
# up by the next sleep.
MIN_PACING_SLEEP_SECS = 0.001


class _KeyPartitioner:
    """aiokafka's `partitioner` hook, choosing as `partition_for` does (as the
    gateway's client would), each key hashed once: murmur2 is pure Python in
    aiokafka."""

    def __init__(self, partitioner: Partitioner) -> None:
        self.partitioner = partitioner
        self._chosen: dict[bytes, int] = {}

    def __call__(self, key: bytes, all_partitions: list[int], available_partitions: list[int]) -> int:
        partition = self._chosen.get(key)
        if partition is None:
            partition = self._chosen[key] = partition_for(key, len(all_partitions), self.partitioner)
        return partition


async def _pace(start: float, sent: int, rate: float) -> None:
    if rate > 0:
        delay = start + sent / rate - time.monotonic()
        if delay >= MIN_PACING_SLEEP_SECS:
            await asyncio.sleep(delay)


async def publish(
    events: Iterable[PlannedEvent],
    bootstrap: str | list[str],
    topic: str,
    *,
    rate: float = 0.0,
    partitioner: Partitioner = "murmur2",
    stamper: Stamper | None = None,
    progress: TextIO | None = sys.stderr,
    topic_wait_secs: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> PublishStats:
    """Send events to `topic` through the publisher library's
    `SessionPublisher` (idempotent, `acks="all"`), keyed by session, at
    `rate` events/s (0: as fast as possible), one chunk of sends in flight.

    The partition is chosen with `partitioner`, as the gateway's client
    would.  Pass the same `stamper` to publish one simulation in several
    pieces, so re-sends find the bytes sent before.  Raises `TopicMissing` if
    the topic does not appear within `topic_wait_secs`. `security`:
    `app.kafka_config.security_options(settings)` for a TLS/SASL cluster.
    """
    stamper = stamper or Stamper()
    partitions = len((await _wait_for_topics(bootstrap, [topic], topic_wait_secs, security))[topic])
    # Idempotence matters here too: a retried batch must not add records at
    # new offsets, since the oracle counts every record once.
    publisher = SessionPublisher(bootstrap, topic=topic, client_options={
        **(security or {}), "partitioner": _KeyPartitioner(partitioner),
        "linger_ms": 5, "max_batch_size": 512 * 1024,
    })
    await publisher.start()
    try:
        throttle = _Throttle()
        start = time.monotonic()
        sent = 0
        previous_chunk: list[asyncio.Future[Any]] = []
        chunk: list[asyncio.Future[Any]] = []
        for event in events:
            await _pace(start, sent, rate)
            chunk.append(await publisher.send_record(event.key, stamper.encode(event, time.time_ns() // 1000)))
            sent += 1
            if len(chunk) >= SEND_CHUNK:
                # Wait for the chunk before, so one chunk is always in flight.
                await asyncio.gather(*previous_chunk)
                previous_chunk, chunk = chunk, []
            if progress is not None and throttle.due():
                _show_rate(progress, sent, start)
        await asyncio.gather(*previous_chunk, *chunk)
        seconds = time.monotonic() - start
        if progress is not None:
            _show_rate(progress, sent, start)
        return PublishStats(sent, seconds, partitions)
    finally:
        await publisher.stop()


#: How long `publish_http` keeps sending a request again while the API answers 503.
UNAVAILABLE_PATIENCE_SECS = 120.0


async def publish_http(
    events: Iterable[PlannedEvent],
    url: str,
    *,
    token: str = "",
    batch: int = 100,
    rate: float = 0.0,
    stamper: Stamper | None = None,
    progress: TextIO | None = sys.stderr,
) -> tuple[PublishStats, list[tuple[PlannedEvent, bool]]]:
    """POST the events to the worker at `url` (`/events`, NDJSON, `batch`
    per request, with the API `token` when set) at `rate` events/s.

    One request at a time, each answered before the next goes: 202 means the
    broker has its events, so each session's events reach the topic in plan
    order.  A 503 is waited out (Retry-After) and the same bytes sent again,
    as a gateway would; any other answer raises `IngestFailed`.  Returns the
    figures, and for each event the API refused or the plan says it must
    refuse (the worker would reject it `invalid_event`): the event and
    whether it was refused, for `app.dev.oracle.check_refusals`.
    """
    # Here, not at the top: aiohttp and app.web (which imports Faust) would
    # double the start-up time of every `accountant` command.
    import aiohttp

    from app.web.ingest import INGEST_PATH, NDJSON

    stamper = stamper or Stamper()
    endpoint = url.rstrip("/") + INGEST_PATH
    headers = {"Content-Type": NDJSON, **({"Authorization": f"Bearer {token}"} if token else {})}
    judged: list[tuple[PlannedEvent, bool]] = []
    throttle = _Throttle()
    start = time.monotonic()
    sent = requests = 0
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as client:
        for chunk in _batched(events, batch):
            await _pace(start, sent, rate)
            now = time.time_ns() // 1000
            body = b"\n".join(stamper.encode(event, now) for event in chunk)
            try:
                refused, attempts = await _post_until_taken(client, endpoint, body)
            except aiohttp.ClientError as error:
                raise IngestFailed(f"POST {endpoint}: {error!r}; is a worker running there?") from error
            requests += attempts
            for index, event in enumerate(chunk):
                if index in refused or event.reason is Reason.INVALID_EVENT:
                    judged.append((event, index in refused))
            sent += len(chunk)
            if progress is not None and throttle.due():
                _show_rate(progress, sent, start)
    seconds = time.monotonic() - start
    if progress is not None:
        _show_rate(progress, sent, start)
    return PublishStats(sent, seconds, 0, requests), judged


def _batched(events: Iterable[PlannedEvent], size: int) -> Iterator[list[PlannedEvent]]:
    iterator = iter(events)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def _post_until_taken(client: Any, endpoint: str, body: bytes) -> tuple[set[int], int]:
    """POST `body` until it is answered 202 or 422; the refused indexes and the attempts it took."""
    deadline = time.monotonic() + UNAVAILABLE_PATIENCE_SECS
    attempts = 0
    while True:
        attempts += 1
        async with client.post(endpoint, data=body) as response:
            answer = await response.json(content_type=None)
            if response.status in (202, 422):
                return {refusal["index"] for refusal in answer["refused"]}, attempts
            if response.status != 503 or time.monotonic() > deadline:
                raise IngestFailed(f"POST {endpoint} answered {response.status}: {answer}")
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))


async def _wait_for_topics(bootstrap: str | list[str], topics: list[str], wait_secs: float,
                           security: Mapping[str, Any] | None) -> dict[str, set[int]]:
    """The partitions of each topic, waiting for the service to create them.

    Asks for all topics' metadata: asking for one by name would let the
    broker auto-create it with its default partition count.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **(security or {}))
    await client.bootstrap()
    try:
        deadline = time.monotonic() + wait_secs
        while True:
            metadata = await client.fetch_all_metadata()
            partitions = {topic: metadata.partitions_for_topic(topic) for topic in topics}
            missing = [topic for topic, found in partitions.items() if not found]
            if not missing:
                return partitions
            if time.monotonic() >= deadline:
                raise TopicMissing(f"topic {', '.join(map(repr, missing))} does not exist: start the service "
                                   "first (`accountant dev` or `accountant worker`)")
            await asyncio.sleep(0.5)
    finally:
        await client.close()


class _Throttle:
    """Due at most once a second, so progress lines do not flood stderr."""

    def __init__(self) -> None:
        self._next_at = time.monotonic() + 1.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next_at:
            return False
        self._next_at = now + 1.0
        return True


def _show_rate(stream: TextIO, sent: int, start: float) -> None:
    elapsed = time.monotonic() - start
    rate = sent / elapsed if elapsed > 0 else 0.0
    print(f"simulate: {sent:,} events sent ({rate:,.0f}/s)", file=stream, flush=True)


async def collect_outputs(
    bootstrap: str | list[str],
    expected: Expected,
    *,
    closures_topic: str,
    rejected_topic: str,
    timeout: float,
    progress: TextIO | None = sys.stderr,
    security: Mapping[str, Any] | None = None,
) -> Collected:
    """Read the closures and rejections topics from the start until every
    expected closure and every expected rejection of this run is there, or
    `timeout` seconds pass.  Outputs of other runs are skipped. `security`: as
    for `publish`."""
    deadline = time.monotonic() + timeout
    closures: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    closure_ids: set[str] = set()
    rejection_sources: set[tuple[Any, ...]] = set()
    unparsable = 0

    def complete() -> bool:
        return len(closure_ids) >= expected.sessions and len(rejection_sources) >= expected.rejected_total

    # The service creates its output topics when it starts.
    partitions = await _wait_for_topics(bootstrap, [closures_topic, rejected_topic], timeout, security)
    # read_committed, as billing reads: under exactly_once a closure of an
    # aborted transaction is no closure.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", **(security or {}))
    await consumer.start()
    try:
        assignment = [TopicPartition(topic, partition)
                      for topic, numbers in partitions.items() for partition in sorted(numbers)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        throttle = _Throttle()
        while not complete() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        output = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        output = None
                    if not isinstance(output, dict):
                        unparsable += 1
                    elif tp.topic == closures_topic:
                        closure_id = output.get("closure_id")
                        if isinstance(closure_id, str) and closure_id.startswith(expected.marker):
                            closures.append(output)
                            closure_ids.add(closure_id)
                    elif belongs_to_run(expected, output):
                        rejections.append(output)
                        rejection_sources.add(source_of(output))
            if progress is not None and throttle.due():
                print(f"simulate: waiting for outputs: {len(closure_ids):,}/{expected.sessions:,} closures, "
                      f"{len(rejection_sources):,}/{expected.rejected_total:,} rejections",
                      file=progress, flush=True)
        return Collected(closures, rejections, unparsable, complete())
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------
# The `accountant simulate` command


def format_totals(config: SimulationConfig, expected: Expected, stats: PublishStats | None) -> str:
    """The totals the service's closures must add up to, as a table."""
    rows: list[tuple[str, str]] = [
        ("run", f"{config.run_id} (seed {config.seed})"),
        ("sessions", f"{expected.sessions:,}"),
        ("closures expected", f"{expected.sessions:,}"),
        *((f"  {reason}", f"{count:,}") for reason, count in expected.closures_by_reason().items()),
        ("total tokens", f"{expected.total_tokens:,}"),
        *((f"  {tenant}", f"{tokens:,}") for tenant, tokens in expected.tokens_by_tenant().items()),
        ("events sent", f"{expected.events_sent:,}"),
        ("  applied", f"{expected.applied:,}"),
        ("  duplicate", f"{expected.duplicate:,}"),
        ("  rejected", f"{expected.rejected_total:,}"),
        *((f"    {reason}", f"{count:,}") for reason, count in sorted(expected.rejected.items())),
        *([("  refused by POST /events", f"{expected.refused:,}")] if expected.via_http else []),
        ("rounds applied late", f"{expected.late_rounds:,}"),
        ("rounds missing for good", f"{expected.missing_rounds:,}"),
    ]
    if stats is not None:
        where = (f"in {stats.requests:,} requests to POST /events" if stats.requests
                 else f"to {stats.partitions} partitions")
        rows.append(("published", f"{stats.events:,} in {stats.seconds:.1f} s ({stats.rate:,.0f}/s) {where}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@click.command("simulate")
@click.option("--broker", metavar="HOST:PORT[,...]",
              help="Kafka bootstrap servers [default: ACCOUNTANT_BROKER].")
@click.option("--sessions", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Gateway sessions to simulate.")
@click.option("--rounds", type=click.FloatRange(min=0), default=8.0, show_default=True,
              help="Mean tool-loop rounds per session.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second; 0 sends as fast as possible.")
@click.option("--duplicates", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Probability that an event is re-sent later (same bytes).")
@click.option("--bad", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Probability that an event is accompanied by a broken one.")
@click.option("--idle", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of sessions abandoned, to be closed by TTL (short TTLs of a few seconds).")
@click.option("--seed", type=int, help="Random seed [default: a new one, printed].")
@click.option("--late-rounds", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Probability that a round lands after a later one of its session (a gateway's retry).")
@click.option("--partitioner", type=click.Choice(["murmur2", "crc32"]), default="murmur2", show_default=True,
              help="murmur2 as the Java client and aiokafka; crc32 as librdkafka's default (--via kafka).")
@click.option("--via", type=click.Choice(["kafka", "http"]), default="kafka", show_default=True,
              help="Publish straight to Kafka (with app.publisher), or through a worker's POST /events "
                   "(with ACCOUNTANT_API_TOKEN when set).")
@click.option("--url", metavar="URL",
              help="The worker --via http posts to [default: ACCOUNTANT_WEB_ADVERTISED_URL, else "
                   "http://ACCOUNTANT_WEB_HOST:ACCOUNTANT_WEB_PORT].")
@click.option("--batch", type=click.IntRange(min=1), default=100, show_default=True,
              help="Events per request --via http.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Wait for the closures (TTL ones included) and rejections, and check them.")
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds to wait for the outputs after publishing.")
@click.option("--json", "as_json", is_flag=True, help="Print the totals and the report as JSON.")
def simulate_command(broker: str | None, sessions: int, rounds: float, rate: float, duplicates: float,
                     bad: float, idle: float, seed: int | None, late_rounds: float, partitioner: Partitioner,
                     via: Transport, url: str | None, batch: int, verify: bool, timeout: float,
                     as_json: bool) -> None:
    """Publish simulated gateway sessions and print the totals the closures must add up to.

    Exits 1 when --verify finds the service's outputs differ from the expected ones.
    """
    settings = load_settings(**({"broker": broker} if broker else {}))
    if not settings.bootstrap_servers and (via == "kafka" or verify):
        raise click.UsageError("no Kafka broker: start one with `accountant dev`, "
                               "or set ACCOUNTANT_BROKER or --broker to host:port")
    if via == "http" and partitioner != "murmur2":
        raise click.UsageError("--partitioner: the worker's POST /events produces with murmur2")
    config = fit_to_rate(SimulationConfig(
        sessions=sessions, rounds=rounds, duplicates=duplicates, bad=bad, idle=idle, late_rounds=late_rounds,
        seed=seed if seed is not None else secrets.randbelow(2**31), run_id=new_run_id(), via=via,
    ), rate)
    simulation = Simulation(config)
    expected = simulation.expected
    security = security_options(settings)

    async def run() -> tuple[PublishStats, VerifyReport | None]:
        refusals = None
        if via == "http":
            stats, judged = await publish_http(simulation.events(), url or settings.advertised_url,
                                               token=settings.api_token, batch=batch, rate=rate)
            refusals = check_refusals(expected, judged)
        else:
            stats = await publish(simulation.events(), settings.bootstrap_servers, settings.events_topic,
                                  rate=rate, partitioner=partitioner, security=security)
        if not verify:
            return stats, None
        collected = await collect_outputs(settings.bootstrap_servers, expected,
                                          closures_topic=settings.closures_topic,
                                          rejected_topic=settings.rejected_topic, timeout=timeout,
                                          security=security)
        return stats, verify_outputs(expected, collected, refusals)

    try:
        stats, report = asyncio.run(run())
        ledger = verify_simulation_ledger(settings, expected, timeout) if verify else None
    except (KafkaError, TopicMissing, IngestFailed, OSError) as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    if as_json:
        body = {"config": {**asdict(config), "rate": rate, "partitioner": partitioner},
                "expected": expected.to_json(),
                "published": {**asdict(stats), "rate": stats.rate},
                "verify": report.to_json() if report else None, "ledger": ledger.to_json() if ledger else None}
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_totals(config, expected, stats))
        if report is not None:
            click.echo(format_report(report))
        if ledger is not None:
            click.echo(format_ledger_report(ledger))
    if (report is not None and not report.ok) or (ledger is not None and not ledger.ok):
        sys.exit(1)

