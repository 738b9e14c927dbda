"""`SessionPublisher`: the async Python library gateways publish session events with.

It does what SPEC §2-§3 ask of a gateway, so a gateway team need not read them:
every event is keyed by its `session_id`, produced idempotently with
`acks="all"` and awaited until the broker has it; rounds are numbered by the
library (1, 2, ...); every event is checked against the JSON Schemas
(`app.schemas.validate_event`) before anything is sent, and a bad call raises
`InvalidEventError` (a `ValueError`) naming the field.

Layers: `build_event` makes one checked event (pure: no I/O, usable to
prepare events ahead of sending); `SessionPublisher` owns the producer and
sends records (`send_record`, not awaited, for callers that pipeline);
`PublishedSession` numbers a session's steps and sends them in order,
awaiting each acknowledgement. The simulator (`app.dev.simulator`) builds its
gateway events with `build_event` and sends everything through
`SessionPublisher.send_record`.

Retries. Each event's `event_id` is derived from the session id and the
step (`created`, `activated`, `round 3`, `extension 2`, `closed`), so it is the
same however often the step is sent. When a send fails (`PublishError`: broker
down, timeout), the broker may or may not have the event; the session keeps it
and sends it again, same bytes, before its next event (or on `resend()`).
The topic may then hold it twice; the accountant counts it once (SPEC §5). A
gateway that restarts and repeats the steps of a session with the same
arguments (including `occurred_at`) produces the same events again.

    async with SessionPublisher("kafka-1:9092") as publisher:
        session = await publisher.open_session("s-1", tenant_id="acme", provider_id="openai",
                                               model="gpt-4o", ttl_secs=600)
        await session.activate(initial_token_count=1200)
        await session.record_round(delta_token_count=350)   # round 1
        await session.close()

Admission. Given the URL of any worker (`usage_url`, and `api_token` when the
workers require one), `await publisher.tenant_usage("acme")` answers the
tenant's `GET /tenants/{id}/usage` (SPEC §9): this month's `usage_tokens`, its
budget, `remaining_tokens` and `state` (`ok`, `warning`, `exceeded`, `none`),
so a gateway can refuse a request once its tenant is `exceeded`
(docs/budgets.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app import json_bytes
from app.rules import DEFAULT_POLICY, Policy
from app.schemas import FieldError, validate_event

__all__ = [
    "DEFAULT_TOPIC",
    "RELIABILITY_OPTIONS",
    "InvalidEventError",
    "PublishError",
    "PublishedSession",
    "SessionPublisher",
    "UsageUnavailable",
    "build_event",
    "event_id_for",
    "reliable_producer",
]

DEFAULT_TOPIC = "session-events"
#: What makes the publisher safe to retry; client options may not change them.
RELIABILITY_OPTIONS = {"acks": "all", "enable_idempotence": True}
#: The namespace of event ids (uuid5): fixed, so ids are the same in every process.
_EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "usage-accountant:event-id")


class InvalidEventError(ValueError):
    """The call would make an event the accountant rejects `invalid_event`;
    nothing was sent. `errors` names each field at fault."""

    def __init__(self, event_type: str, errors: list[FieldError]) -> None:
        super().__init__(f"{event_type}: " + "; ".join(error.detail for error in errors))
        self.errors = errors


class PublishError(Exception):
    """The broker did not acknowledge an event. It may or may not have it:
    the session sends it again (same event_id and bytes) before its next
    event, or on `resend()`."""


def reliable_producer(bootstrap_servers: str | list[str],
                      client_options: Mapping[str, Any] | None = None) -> AIOKafkaProducer:
    """An aiokafka producer (not started) with `acks="all"` and idempotence,
    and `client_options` (TLS, SASL, timeouts, ...) that may not change those two."""
    options = dict(client_options or {})
    for name, required in RELIABILITY_OPTIONS.items():
        if name in options and options[name] != required:
            raise ValueError(f"client option {name!r} must be {required!r}: retries rely on it")
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **(options | RELIABILITY_OPTIONS))


def event_id_for(session_id: str, step: str) -> str:
    """The event id of one step of a session: a UUID (v5) of the two, 36
    characters whatever the session id's length, the same on every retry."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{session_id}\n{step}"))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime | str, event_type: str) -> str:
    if isinstance(moment, str):
        return moment  # validated with the event
    if moment.utcoffset() is None:
        raise InvalidEventError(event_type, [FieldError(
            "occurred_at", "field 'occurred_at' must be timezone-aware (a naive datetime has no offset)")])
    return moment.isoformat()


def build_event(event_type: str, *, session_id: str, tenant_id: str, occurred_at: datetime | str, event_id: str,
                policy: Policy = DEFAULT_POLICY, **fields: Any) -> dict[str, Any]:
    """One event of `event_type` with its type's `fields`, checked as the
    worker would: raises `InvalidEventError` naming each field at fault.
    A `datetime` must be timezone-aware; a string is taken as written."""
    event = {
        "event_id": event_id,
        "type": event_type,
        "session_id": session_id,
        "tenant_id": tenant_id,
        "occurred_at": _rfc3339(occurred_at, event_type),
        **fields,
    }
    errors = validate_event(event, policy)
    if errors:
        raise InvalidEventError(event_type, errors)
    return event


class UsageUnavailable(Exception):
    """`tenant_usage` got no answer: no worker reached, or an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


#: How long `tenant_usage` waits for a worker: admission must not hang a request.
USAGE_TIMEOUT_SECS = 2.0


class SessionPublisher:
    """Publishes the events of many sessions through one idempotent producer.

    `client_options` go to `aiokafka.AIOKafkaProducer` as they are (TLS, SASL,
    timeouts, ...), except `acks` and `enable_idempotence`, which are fixed.
    `delivery_timeout_secs` bounds the wait for the broker's acknowledgement:
    aiokafka retries a partition whose leader is known but unreachable for
    as long as it runs. `clock` gives `occurred_at` when a call does not;
    `policy` carries the worker's metadata bound (`ACCOUNTANT_METADATA_MAX_BYTES`).
    """

    def __init__(self, bootstrap_servers: str | list[str], *, topic: str = DEFAULT_TOPIC,
                 client_options: Mapping[str, Any] | None = None, delivery_timeout_secs: float = 30.0,
                 policy: Policy = DEFAULT_POLICY, clock: Callable[[], datetime] = _utc_now,
                 usage_url: str | None = None, api_token: str | None = None) -> None:
        self.topic = topic
        self.delivery_timeout_secs = delivery_timeout_secs
        self.policy = policy
        self.clock = clock
        self._producer = reliable_producer(bootstrap_servers, client_options)
        self.usage_url = usage_url
        self._api_token = api_token
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def tenant_usage(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's usage as `GET /tenants/{tenant_id}/usage` answers it
        (any worker forwards to the owner); raises `UsageUnavailable`."""
        if self.usage_url is None:
            raise ValueError("tenant_usage needs usage_url: the address of a worker")
        if self._http is None:
            headers = {"Authorization": f"Bearer {self._api_token}"} if self._api_token else {}
            self._http = aiohttp.ClientSession(headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=USAGE_TIMEOUT_SECS))
        url = f"{self.usage_url.rstrip('/')}/tenants/{quote(tenant_id, safe='')}/usage"
        try:
            async with self._http.get(url) as response:
                body = await response.read()
                if response.status != 200:
                    raise UsageUnavailable(f"{url} answered {response.status}: {body[:200]!r}", response.status)
                answer: dict[str, Any] = json_bytes.loads(body)
                return answer
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UsageUnavailable(f"{url}: {error!r}") from error

    async def __aenter__(self) -> SessionPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def session(self, session_id: str, tenant_id: str, *, rounds_sent: int = 0,
                extensions_sent: int = 0) -> PublishedSession:
        """A handle on a session without sending anything: for one opened
        earlier (e.g. before a restart), continuing after `rounds_sent` rounds
        and `extensions_sent` extensions."""
        return PublishedSession(self, session_id, tenant_id, rounds_sent, extensions_sent)

    async def open_session(self, session_id: str, *, tenant_id: str, provider_id: str, model: str, ttl_secs: int,
                           metadata: Any = None, occurred_at: datetime | str | None = None,
                           event_id: str | None = None) -> PublishedSession:
        """Publish `session.created` and return the session's handle."""
        session = self.session(session_id, tenant_id)
        await session.open(provider_id=provider_id, model=model, ttl_secs=ttl_secs, metadata=metadata,
                           occurred_at=occurred_at, event_id=event_id)
        return session

    async def send_record(self, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Hand one record, as given, to the producer, and return its delivery
        (a future of the broker's acknowledgement) without waiting for it.

        Nothing is checked: this is for tools that send bytes prepared
        elsewhere (`build_event`), or must send what a broken gateway would
        (the simulator). Records given in order to one partition land in that
        order (idempotence keeps it across retries)."""
        delivery: asyncio.Future[Any] = await self._producer.send(self.topic, value, key=key)
        return delivery

    async def send_and_wait(self, key: bytes, value: bytes) -> None:
        """Send one record as given and wait for the broker's acknowledgement
        (at most `delivery_timeout_secs`); `PublishError` when it does not come."""
        try:
            delivery = await self.send_record(key, value)
            # Shielded: on timeout aiokafka keeps the record and may still deliver it.
            await asyncio.wait_for(asyncio.shield(delivery), self.delivery_timeout_secs)
        except (KafkaError, TimeoutError) as error:
            raise PublishError(f"the broker did not acknowledge the event: {error!r}") from error


class PublishedSession:
    """One session's events, sent in order (calls on one session wait for
    each other). Made by `SessionPublisher.open_session` or `.session`.

    Every step takes an optional `event_id` for a gateway with ids of its own
    (a request id, say); it must then be the same on every retry of the step.
    By default it is `event_id_for(session_id, step)`."""

    def __init__(self, publisher: SessionPublisher, session_id: str, tenant_id: str, rounds_sent: int,
                 extensions_sent: int) -> None:
        self.publisher = publisher
        self.session_id = session_id
        self.tenant_id = tenant_id
        #: Rounds numbered so far: the next `record_round` is number rounds_sent + 1.
        self.rounds_sent = rounds_sent
        self.extensions_sent = extensions_sent
        #: Events not acknowledged yet (a send failed), in order: sent again first.
        self.unacknowledged: list[bytes] = []
        self._in_order = asyncio.Lock()

    async def open(self, *, provider_id: str, model: str, ttl_secs: int, metadata: Any = None,
                   occurred_at: datetime | str | None = None, event_id: str | None = None) -> None:
        """Publish `session.created` (`SessionPublisher.open_session` does, for a new session)."""
        fields: dict[str, Any] = {"provider_id": provider_id, "model": model, "ttl_secs": ttl_secs}
        if metadata is not None:
            fields["metadata"] = metadata
        await self._publish("session.created", "created", fields, occurred_at, event_id)

    async def activate(self, *, initial_token_count: int, occurred_at: datetime | str | None = None,
                       event_id: str | None = None) -> None:
        await self._publish("session.activated", "activated", {"initial_token_count": initial_token_count},
                            occurred_at, event_id)

    async def record_round(self, *, delta_token_count: int, model: str | None = None,
                           occurred_at: datetime | str | None = None, event_id: str | None = None) -> int:
        """Publish the next round (numbered by the library); returns its number."""
        number = self.rounds_sent + 1
        fields: dict[str, Any] = {"round": number, "delta_token_count": delta_token_count}
        if model is not None:
            fields["model"] = model
        await self._publish("round.completed", f"round {number}", fields, occurred_at, event_id,
                            on_accepted=lambda: setattr(self, "rounds_sent", number))
        return number

    async def extend(self, *, ttl_secs: int, occurred_at: datetime | str | None = None,
                     event_id: str | None = None) -> None:
        """Replace the session's TTL (counted from its creation)."""
        number = self.extensions_sent + 1
        await self._publish("session.extended", f"extension {number}", {"ttl_secs": ttl_secs}, occurred_at,
                            event_id, on_accepted=lambda: setattr(self, "extensions_sent", number))

    async def close(self, *, reason: str | None = None, occurred_at: datetime | str | None = None,
                    event_id: str | None = None) -> None:
        await self._publish("session.closed", "closed", {} if reason is None else {"reason": reason}, occurred_at,
                            event_id)

    async def resend(self) -> None:
        """Send the unacknowledged events again; raises PublishError if the broker still does not take them."""
        async with self._in_order:
            await self._drain()

    async def _publish(self, event_type: str, step: str, fields: dict[str, Any], occurred_at: datetime | str | None,
                       event_id: str | None, on_accepted: Callable[[], None] | None = None) -> None:
        event = build_event(
            event_type, session_id=self.session_id, tenant_id=self.tenant_id,
            occurred_at=self.publisher.clock() if occurred_at is None else occurred_at,
            event_id=event_id_for(self.session_id, step) if event_id is None else event_id,
            policy=self.publisher.policy, **fields,
        )
        async with self._in_order:
            # Numbered once valid: a failed send keeps the event, so its number stays taken.
            self.unacknowledged.append(orjson.dumps(event))
            if on_accepted is not None:
                on_accepted()
            await self._drain()

    async def _drain(self) -> None:
        key = self.session_id.encode("utf-8")
        while self.unacknowledged:
            await self.publisher.send_and_wait(key, self.unacknowledged[0])
            self.unacknowledged.pop(0)
