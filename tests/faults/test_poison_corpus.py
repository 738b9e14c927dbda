"""Fault 4: a poison corpus among good traffic.

Every poison record is rejected with its reason and a detail naming the
offending field (SPEC §7), the raw bytes of what did not parse are kept, the
worker stays up (same process, /healthz 200), and the good events around the
poison — simulated sessions, and one session the poison is aimed at — are
accounted exactly as without it.

The events topic allows 2 MiB records (`max.message.bytes`, as an operator
accepting large gateway events would set it), so the 1 MB values reach the
worker; the rejections topic gets the same allowance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.dev.oracle import ExpectedClosure
from app.dev.partitioners import partition_for
from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from app.rules import MAX_COUNT, SECOND, CloseReason, Reason, Result, format_timestamp, parse_timestamp
from tests.faults.harness import PARTITIONS, Timeline, finish, publish_piece
from tests.support.deployment import Deployment
from tests.support.ledger import pieces, raw_of, simulated, split_points

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MIB = 1024 * 1024
ONE_MB = 1_000_000


@dataclass
class Poison:
    name: str
    key: bytes | None
    value: bytes | None
    result: Result
    reason: Reason | None = None
    #: Must appear in the rejection's detail (the offending field, or the problem).
    detail: str = ""
    #: The event's body, for applied events of the target session (timestamps).
    body: dict[str, Any] | None = None
    occurred_at: int | None = None
    #: The Kafka key of the rejection: the session named by the parsed event,
    #: else the record's key when it is UTF-8, else null.
    rejection_key: bytes | None = None


class Corpus:
    """Records for one target session and stateless poison, built at send time."""

    def __init__(self, run_id: str) -> None:
        self.target = f"{run_id}-poison-target"
        self.key = self.target.encode()
        self.run_id = run_id
        self.ids = iter(range(10**6))

    def event(self, kind: str, session_id: str | None = None, offset_secs: float = 0, **fields: Any) -> dict:
        now = time.time_ns() // 1000 + int(offset_secs * SECOND)
        return {"event_id": f"{self.run_id}-poison-{next(self.ids)}", "type": kind,
                "session_id": session_id or self.target, "tenant_id": "acme",
                "occurred_at": format_timestamp(now), **fields}

    def applied(self, name: str, body: dict) -> Poison:
        return Poison(name, self.key, orjson.dumps(body), Result.APPLIED, body=body,
                      occurred_at=parse_timestamp(body["occurred_at"]))

    def bad(self, name: str, value: bytes | dict | list | None, reason: Reason, detail: str,
            key: Any = ..., rejection_key: Any = ...) -> Poison:
        key = self.key if key is ... else key
        if rejection_key is ...:
            rejection_key = key if key is not None and _utf8(key) else None
        if isinstance(value, (dict, list)):
            value = orjson.dumps(value)
        return Poison(name, key, value, Result.REJECTED, reason, detail, rejection_key=rejection_key)

    def round(self, number: int, delta: int, **fields: Any) -> dict:
        return self.event("round.completed", round=number, delta_token_count=delta, **fields)

    # -- the three batches, sent between pieces of simulated traffic

    def opening(self) -> list[Poison]:
        e, bad = self.event, self.bad
        invalid = Reason.INVALID_EVENT
        created = e("session.created", provider_id="openai", model="gpt-4o", ttl_secs=3600, metadata={"k": "v"})
        too_big = e("session.created", f"{self.run_id}-poison-big-meta", provider_id="openai", model="gpt-4o",
                    ttl_secs=60, metadata={"blob": "x" * (16 * 1024)})
        return [
            self.applied("created", created),
            self.applied("activated", e("session.activated", initial_token_count=1000)),
            self.applied("round 1", self.round(1, 10, model="gpt-4o")),
            # Not JSON, not UTF-8, not an object.
            bad("malformed JSON", b'{"event_id": "x", "type": "round.compl', invalid, "JSON"),
            bad("non-UTF-8 bytes in a string", orjson.dumps(self.round(2, 5)).replace(b'"acme"', b'"ac\xff\xfeme"'),
                invalid, "UTF-8"),
            bad("non-UTF-8 garbage", bytes(range(256)) * 4, invalid, "UTF-8"),
            bad("a JSON array", [self.round(2, 5)], invalid, "object"),
            bad("a JSON number", b"42", invalid, "object"),
            # Wrong types.
            bad("count as a string", self.round(2, "5"), invalid, "'delta_token_count'"),
            bad("round as a boolean", self.round(True, 5), invalid, "'round'"),
            bad("ttl as a float", {**created, "ttl_secs": 1.5}, invalid, "'ttl_secs'"),
            bad("session_id as a number", {**self.round(2, 5), "session_id": 42}, invalid, "'session_id'"),
            bad("occurred_at as a number", {**self.round(2, 5), "occurred_at": 1700000000},
                invalid, "'occurred_at'"),
            # Missing fields.
            bad("no tenant_id", _without(self.round(2, 5), "tenant_id"), invalid, "'tenant_id'"),
            bad("no occurred_at", _without(self.round(2, 5), "occurred_at"), invalid, "'occurred_at'"),
            bad("no type", _without(self.round(2, 5), "type"), invalid, "'type'"),
            bad("no delta_token_count", _without(self.round(2, 5), "delta_token_count"), invalid,
                "'delta_token_count'"),
            bad("no event_id", _without(self.round(2, 5), "event_id"), invalid, "'event_id'"),
            # Huge metadata (> 16 KiB encoded), with a key of its own.
            bad("metadata over 16 KiB", too_big, invalid, "'metadata'", key=too_big["session_id"].encode()),
            # Negative and overflowing counts.
            bad("negative initial count", e("session.activated", initial_token_count=-1), invalid,
                "'initial_token_count'"),
            bad("negative delta", self.round(2, -5), invalid, "'delta_token_count'"),
            bad("delta of 2^63", self.round(2, MAX_COUNT + 1), invalid, "'delta_token_count'"),
            bad("delta literal beyond 2^64",
                orjson.dumps(self.round(2, 7)).replace(b'"delta_token_count":7', b'"delta_token_count":'
                                                       b'184467440737095516160000'),
                invalid, "'delta_token_count'"),
            bad("ttl of 0", {**created, "ttl_secs": 0}, invalid, "'ttl_secs'"),
            bad("ttl beyond 2^32", {**created, "ttl_secs": 2**32 + 1}, invalid, "'ttl_secs'"),
            bad("sum past 2^63-1", self.round(2, MAX_COUNT), Reason.OVERFLOW, "'delta_token_count'"),
            # Key trouble.
            bad("key mismatch", {**self.round(2, 5), "session_id": f"{self.target}-other"}, Reason.KEY_MISMATCH,
                "'session_id'"),
            bad("non-UTF-8 key", self.round(2, 5), Reason.KEY_MISMATCH, "key", key=b"\xff\xfe" + self.key),
            bad("null key, malformed value", b"{not json", invalid, "JSON", key=None),
            bad("null key, empty value", b"", invalid, "JSON", key=None),
            # SPEC rev 2: a keyless record is refused, however valid its event.
            bad("null key, a valid event", e("round.completed", f"{self.run_id}-poison-ghost", round=1,
                                             delta_token_count=5), Reason.KEY_MISMATCH, "'session_id'",
                key=None, rejection_key=f"{self.run_id}-poison-ghost".encode()),
            bad("empty value", b"", invalid, "JSON"),
            bad("null value (tombstone)", None, invalid, "JSON"),
            # Shapes and values the rules refuse.
            bad("unknown type", {**self.round(2, 5), "type": "session.paused"}, invalid, "'type'"),
            bad("model of 1,025 characters", {**created, "model": "m" * 1025}, invalid, "'model'"),
            bad("provider of 1,025 characters", {**created, "provider_id": "p" * 1025}, invalid, "'provider_id'"),
            bad("close reason of 1,025 characters", e("session.closed", reason="r" * 1025), invalid, "'reason'"),
            bad("event_id of 129 characters", {**self.round(2, 5), "event_id": "e" * 129}, invalid, "'event_id'"),
            bad("timestamp without offset", {**self.round(2, 5), "occurred_at": "2026-01-01T00:00:00"}, invalid,
                "'occurred_at'"),
            bad("timestamp beyond year 9999 in UTC", {**self.round(2, 5), "occurred_at": "9999-12-31T23:59:59-23:59"},
                invalid, "'occurred_at'"),
            bad("metadata nested 300 deep", orjson.dumps({**created, "metadata": "@"}).replace(b'"@"', _nested(300)),
                invalid, "'metadata'"),
            bad("JSON nested 2000 deep", b"[" * 2000 + b"]" * 2000, invalid, "JSON"),
            # Stateful rejections against the live target session.
            bad("tenant mismatch", {**self.round(2, 5), "tenant_id": "globex"}, Reason.TENANT_MISMATCH,
                "'tenant_id'"),
            bad("model mismatch", self.round(2, 5, model="gpt-4o-mini"), Reason.MODEL_MISMATCH, "'model'"),
            bad("creation clash", {**created, "model": "o3-mini"}, Reason.SESSION_EXISTS, "session_id"),
            bad("second activation", e("session.activated", initial_token_count=999), Reason.INVALID_TRANSITION,
                "'initial_token_count'"),
            bad("clock 2 days ahead", e("round.completed", offset_secs=2 * 86_400, round=2, delta_token_count=5),
                Reason.CLOCK_SKEW, "'occurred_at'"),
            bad("unknown session", e("round.completed", f"{self.run_id}-poison-nobody", round=1, delta_token_count=5),
                Reason.UNKNOWN_SESSION, "'session_id'", key=f"{self.run_id}-poison-nobody".encode()),
        ]

    def middle(self) -> list[Poison]:
        e, bad = self.event, self.bad
        big_meta = e("session.created", f"{self.run_id}-poison-mb", provider_id="openai", model="gpt-4o",
                     ttl_secs=60, metadata={"blob": "x" * ONE_MB})
        padded = self.round(2, 20)
        padded["padding"] = "p" * ONE_MB  # unknown fields are ignored: a valid 1 MB event
        return [
            bad("1 MB of metadata", big_meta, Reason.INVALID_EVENT, "'metadata'", key=big_meta["session_id"].encode()),
            bad("1 MB of garbage", b"\x00garbage" * (ONE_MB // 8), Reason.INVALID_EVENT, "JSON"),
            bad("1 MB model name", {**big_meta, "metadata": {}, "model": "m" * ONE_MB}, Reason.INVALID_EVENT, "'model'",
                key=big_meta["session_id"].encode()),
            bad("1 MB, not UTF-8", b"\xff" * ONE_MB, Reason.INVALID_EVENT, "UTF-8"),
            self.applied("round 2, 1 MB with padding", padded),
            self.applied("closed", e("session.closed", reason="done")),
        ]

    def closing(self) -> list[Poison]:
        return [
            self.bad("round after the close", self.round(3, 5), Reason.SESSION_CLOSED, "'session_id'"),
            self.bad("a creation after the close", self.event("session.created", provider_id="openai",
                                                               model="claude-sonnet-4", ttl_secs=60, metadata={}),
                     Reason.SESSION_EXISTS, "session_id"),
        ]

    def closure(self) -> ExpectedClosure:
        return ExpectedClosure(
            session_id=self.target, tenant_id="acme", provider_id="openai", model="gpt-4o", ttl_secs=3600,
            reason=CloseReason.CLOSED, initial_token_count=1000, delta_token_count=30, round_count=2,
            missing_rounds=0)


def _without(body: dict, name: str) -> dict:
    return {key: value for key, value in body.items() if key != name}


def _nested(depth: int) -> bytes:
    """JSON objects `depth` deep (deeper than orjson will encode)."""
    return b'{"n":' * depth + b"0" + b"}" * depth


async def _create_topics(deployment: Deployment) -> None:
    """The events and rejections topics, allowing 2 MiB records; the rest as
    the worker creates them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        big = {"max.message.bytes": str(2 * MIB)}
        await admin.create_topics([NewTopic(deployment.events_topic, PARTITIONS, 1, topic_configs=big),
                                   NewTopic(deployment.rejected_topic, PARTITIONS, 1, topic_configs=big)])
    finally:
        await admin.close()


async def _send(deployment: Deployment, records: list[Poison]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=2 * MIB)
    await producer.start()
    try:
        for n, poison in enumerate(records):
            partition = n % PARTITIONS if poison.key is None else partition_for(poison.key, PARTITIONS, "murmur2")
            await (await producer.send(deployment.events_topic, poison.value, key=poison.key, partition=partition))
    finally:
        await producer.stop()


def test_poison_is_rejected_and_good_events_around_it_are_exact(deployment: Deployment,
                                                                fault_figures: Callable[[dict], None],
                                                                guarantee: str) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=800, rounds=6, bad=0.03, seed=4004, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    corpus = Corpus(simulation.config.run_id)
    ledger.closures[corpus.target] = corpus.closure()
    events = list(simulation.events())
    parts = pieces(events, split_points(events, simulation, (0.33, 0.66)))
    asyncio.run(_create_topics(deployment))
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()  # the others, as the worker would

    worker = deployment.worker("worker").start().wait_ready()
    pid = worker.process.pid
    timeline("ready")
    poison: list[Poison] = []
    for piece, batch in zip(parts, (corpus.opening, corpus.middle, corpus.closing), strict=True):
        publish_piece(deployment, piece, stamper)
        records = batch()  # stamped now, between the pieces
        asyncio.run(_send(deployment, records))
        for record in records:
            ledger.expect(record.key, record.value, record.result, record.reason, record.body, record.occurred_at)
        poison.extend(records)
    timeline("published")
    verdict = finish(deployment, ledger, simulation, faults=sum(p.result is Result.REJECTED for p in poison),
                     report=fault_figures, stats_from=worker, exact_stats=True, timeline=timeline,
                     extra={"poison_records": len(poison), "largest_record": max(len(p.value or b"") for p in poison)})

    # The worker never went down.
    assert worker.process.poll() is None and worker.process.pid == pid
    assert worker.get("/healthz")[0] == 200
    assert worker.stats(local=True)["rejected"].get("internal_error", 0) == 0
    assert verdict.figures["closures_repeated"] == 0, "no fault restarted the worker: no closure may repeat"

    # Each poison record's rejection: its reason, a detail naming the field, the raw bytes of what did not parse.
    outputs = verdict.outputs
    where = {(record.key, record.value): (record.partition, record.offset) for record in outputs.input}
    problems: list[str] = []
    truncated: list[str] = []
    for record in poison:
        if record.result is not Result.REJECTED:
            continue
        rejections = outputs.rejections.get(where[(record.key, record.value)], [])
        if not rejections:
            problems.append(f"{record.name}: no rejection")
            continue
        rejection = rejections[0]
        if rejection["reason"] != record.reason or record.detail not in rejection["detail"]:
            problems.append(f"{record.name}: {rejection['reason']} ({rejection['detail']}), expected "
                            f"{record.reason} naming {record.detail}")
        raw = raw_of(rejection)
        if rejection.get("raw_truncated"):
            # Too big to publish whole: the first bytes, and the size.
            if not (raw and (record.value or b"").startswith(raw) and rejection.get("raw_size") == len(record.value)):
                problems.append(f"{record.name}: truncated raw bytes are not a prefix of the record")
            truncated.append(record.name)
        elif rejection.get("event") is None and raw != (record.value or b""):
            problems.append(f"{record.name}: the rejection has neither the event nor the raw bytes")
        keys = outputs.rejection_keys[where[(record.key, record.value)]]
        if keys != {record.rejection_key}:
            problems.append(f"{record.name}: rejection keyed {keys}, expected {record.rejection_key!r}")
    assert not problems, "\n".join(problems)
    assert sorted(truncated) == ["1 MB model name", "1 MB of garbage", "1 MB of metadata", "1 MB, not UTF-8"]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


