"""Large poison at the edge of SPEC §3, and what the service does with it.

* A `session.created` with a 1 MB `model`: SPEC §3 bounds ids (128 chars)
  and metadata (16 KiB) but not `provider_id`, `model` or a close `reason`.
  The record, the changelog write and the closure exceeded Faust's
  1,000,000 byte `producer_max_request_size` and crashed the worker, again
  after every restart. Fixed: those fields are bounded at
  `rules.MAX_NAME_CHARS` (1024) and longer ones are `invalid_event`.
* A flood of 200 creations clashing with one open session, each with 15 KiB
  of metadata (legal): each rejection is kept in the session's outbox until
  the broker confirms it, so the table value passed 1 MB before
  confirmations caught up, and the changelog write crashed the worker the
  same way. Fixed: the outbox keeps event bodies only up to
  `rules.OUTBOX_EVENT_BYTES`; the rejections published carry them all.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.dev.partitioners import partition_for
from tests.faults.harness import PARTITIONS
from tests.support.deployment import Deployment
from tests.support.events import event
from tests.support.kafka import consume_json
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, accounted

pytestmark = [pytest.mark.faults, pytest.mark.integration]


async def _send(deployment: Deployment, session_id: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        key = session_id.encode()
        for body in events:
            await producer.send_and_wait(deployment.events_topic, orjson.dumps(body), key=key,
                                         partition=partition_for(key, PARTITIONS, "murmur2"))
    finally:
        await producer.stop()


def _survives(deployment: Deployment, worker: WorkerProcess, events: int, timeout: float = 20) -> None:
    """The worker counts every event, commits them (so the writes that follow,
    to the outputs and the changelog, are done), and is still the same running
    process."""
    try:
        _check_survives(deployment, worker, events, timeout)
    except AssertionError:
        worker.kill()  # a crashed worker may hang on its way out; do not wait for it
        raise


def _check_survives(deployment: Deployment, worker: WorkerProcess, events: int, timeout: float) -> None:
    def counted() -> bool:
        worker.check_alive()
        try:
            status, stats = worker.get("/stats")
        except OSError:
            return False
        return status == 200 and accounted(stats) >= events

    wait_for(f"the worker to count {events} events", counted, timeout, interval=0.3)

    def committed() -> bool:
        worker.check_alive()
        return deployment.committed_to_end()

    wait_for("the worker to commit every event", committed, timeout, interval=0.3)
    worker.check_alive()
    assert worker.get("/healthz")[0] == 200


def test_a_creation_with_a_1_mb_model_name(deployment: Deployment) -> None:
    deployment.create_topics()
    worker = deployment.worker("worker").start().wait_ready()
    sid = "huge-model"
    asyncio.run(_send(deployment, sid, [
        event("session.created", sid, 0, provider_id="p", model="m" * 1_000_000, ttl_secs=60),
        event("session.activated", sid, 1, initial_token_count=5),
        event("session.closed", sid, 2),
    ]))
    _survives(deployment, worker, 3)


def test_a_flood_of_clashing_creations_with_large_metadata(deployment: Deployment) -> None:
    deployment.create_topics()
    worker = deployment.worker("worker").start().wait_ready()
    sid = "flood"
    events = [event("session.created", sid, 0, provider_id="p", model="m", ttl_secs=600),
              event("session.activated", sid, 1, initial_token_count=5)]
    events += [event("session.created", sid, 2 + n, provider_id="p", model="other", ttl_secs=600,
                     metadata={"blob": "x" * 15_000}) for n in range(200)]
    asyncio.run(_send(deployment, sid, events))
    _survives(deployment, worker, len(events))
    rejections = consume_json(deployment.bootstrap, deployment.rejected_topic, lambda got: len(got) >= 200, 30)
    assert sorted(r["source"]["offset"] for r in rejections) == list(range(2, 202))
    assert {r["reason"] for r in rejections} == {"session_exists"}
    # Published whole: only a re-publication after a crash may leave the body out.
    assert all(r["event"]["metadata"] == {"blob": "x" * 15_000} and "event_omitted" not in r for r in rejections)
