"""`POST /events`: gateways without a Kafka client send their session events over HTTP.

Each event is checked with `app.schemas.validate_event` (the schemas, then
what the worker would refuse `invalid_event`); refused events are listed in
the answer by index, each with the fields at fault, and are not produced.
The valid ones are produced to `session-events`, keyed by `session_id`, with
the idempotent `acks="all"` producer of `app.web.ingest_producer`. The answer
is 202 only once the broker has acknowledged every one of them. Every failure
is classified: permanent ones (a record larger than the topic takes: 413 with
its limit; the broker refusing for good: 500) carry no Retry-After, since
sending again cannot succeed; retriable ones (no acknowledgement within
`delivery_timeout_secs`, too many events waiting, the producer not started,
a broker error Kafka calls retriable) answer 503 with Retry-After, and
nothing of the request is accepted: some of its events may still reach the
topic (they were on their way), so the gateway sends the request again and
the accountant counts each event once (SPEC §5). Bodies, the CloudEvents
modes and every answer are in docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    UnknownProducerId,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from app.metrics import IngestMetrics
from app.rules import DEFAULT_POLICY, Policy
from app.schemas import EVENT_TYPES, FieldError, resolved_schema, validate_event
from app.web.errors import ApiError, Handler, json_response
from app.web.ingest_producer import IngestProducer

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "CLOUDEVENT",
    "CLOUDEVENT_BATCH",
    "CLOUDEVENT_FIELDS",
    "INGEST_PATH",
    "MEDIA_TYPES",
    "NDJSON",
    "IngestSettings",
    "count_ingest_answers",
    "ingest_handler",
    "ingest_openapi",
    "screen",
]

INGEST_PATH = "/events"

JSON = "application/json"
NDJSON = "application/x-ndjson"
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"
MEDIA_TYPES = (JSON, NDJSON, CLOUDEVENT, CLOUDEVENT_BATCH)
#: The idempotent producer's own state out of step with the broker's: not
#: retriable for Kafka, but a new producer cures it (`IngestProducer.discard`).
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, InvalidProducerEpoch, UnknownProducerId)
#: A binary-mode CloudEvent's attributes are HTTP headers with this prefix.
CE_PREFIX = "ce-"
CE_SPECVERSION_HEADER = "ce-specversion"
#: CloudEvents 1.0's required attributes (subject and time may come from data).
REQUIRED_CLOUDEVENT_ATTRIBUTES = ("id", "source", "specversion", "type")
#: CloudEvents attribute -> the event field it carries; every other event field comes from `data`.
CLOUDEVENT_FIELDS = {"id": "event_id", "type": "type", "subject": "session_id", "time": "occurred_at"}
_EVENT_TO_CLOUDEVENT = {event_field: attribute for attribute, event_field in CLOUDEVENT_FIELDS.items()}


@dataclass(frozen=True, slots=True)
class IngestSettings:
    topic: str = "session-events"
    #: More events or bytes in one request: 413.
    max_events: int = 1000
    max_bytes: int = 1024 * 1024
    #: How long a request waits for the broker's acknowledgements before 503.
    delivery_timeout_secs: float = 10.0
    #: Produced but unacknowledged events across all requests; beyond: 503 at once.
    max_pending_events: int = 100_000
    #: What a 503 tells the gateway to wait before sending again.
    retry_after_secs: int = 5
    policy: Policy = field(default=DEFAULT_POLICY)

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestSettings:
        return cls(
            topic=settings.events_topic,
            max_events=settings.ingest_max_events,
            max_bytes=settings.ingest_max_bytes,
            delivery_timeout_secs=settings.ingest_delivery_timeout_secs,
            max_pending_events=settings.ingest_max_pending_events,
            policy=Policy(metadata_max_bytes=settings.metadata_max_bytes),
        )


def ingest_handler(producer: IngestProducer, settings: IngestSettings,
                   metrics: IngestMetrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The `POST /events` handler. Its answers other than 202 and 422 are
    `ApiError`s, for the `app.web.errors.json_errors` middleware; the API
    token is the token middleware's business, as for every other path, and
    the status of every answer is counted by `count_ingest_answers`."""
    pending = _Pending(settings.max_pending_events)

    async def post_events(request: web.Request) -> web.Response:
        accepted, refused = screen(request.content_type, await _read_body(request, settings.max_bytes), settings,
                                   request.headers)
        records = [(event["session_id"].encode("utf-8"), orjson.dumps(event)) for event in accepted]
        try:
            _check_record_sizes(records, producer.record_limit)
            await _produce(producer, settings, pending, records)
        except ApiError:
            metrics.count_events(refused=len(refused), unaccepted=len(records))
            raise
        metrics.count_events(accepted=len(records), refused=len(refused))
        body = {"accepted": len(accepted), "refused": refused}
        return json_response(body, 202 if accepted or not refused else 422)

    return post_events


def count_ingest_answers(metrics: IngestMetrics) -> Middleware:
    """Counts and times every answer to `POST /events`, whichever layer gave
    it (the token's 401 and the concurrency cap's 503 included): outermost."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != INGEST_PATH:
            return await handler(request)
        started = time.perf_counter()
        status = 500  # an exception no inner layer turned into an answer
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            metrics.answered(status, time.perf_counter() - started)

    return count


def screen(content_type: str, body: bytes, settings: IngestSettings,
           headers: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What `POST /events` makes of a body, before producing: the events to
    produce, and the refused ones (`{"index", "errors"}`). `headers` carry a
    binary-mode CloudEvent's attributes (`ce-*`). Raises `ApiError` for the
    body as a whole (400, 413, 415). Pure: the simulator's tests judge events
    with it as the API would."""
    headers = headers or {}
    binary = CE_SPECVERSION_HEADER in headers and content_type not in (CLOUDEVENT, CLOUDEVENT_BATCH)
    items = [_binary_cloudevent(headers, body)] if binary else _parse(content_type, body)
    # The CloudEvents JSON batch format allows an empty batch: nothing to do, not an error.
    if not items and content_type != CLOUDEVENT_BATCH:
        raise ApiError(400, "bad_request", "the body holds no events")
    if len(items) > settings.max_events:
        raise ApiError(413, "too_many_events", f"{len(items)} events in one request; at most "
                                               f"{settings.max_events} (ACCOUNTANT_INGEST_MAX_EVENTS)")
    accepted: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        event, errors = _event_of(binary or content_type in (CLOUDEVENT, CLOUDEVENT_BATCH), item, settings.policy)
        if errors:
            refused.append({"index": index, "errors": [error.to_json() for error in errors]})
        else:
            accepted.append(event)
    return accepted, refused


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    too_large = ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes "
                                                "(ACCOUNTANT_INGEST_MAX_BYTES)")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _parse(content_type: str, body: bytes) -> list[Any]:
    """The body's items (events or CloudEvents), each decoded JSON, or `_Unparsed` for a bad NDJSON line."""
    if content_type not in MEDIA_TYPES:
        raise ApiError(415, "unsupported_media_type", f"Content-Type {content_type!r}: send one of "
                                                      + ", ".join(MEDIA_TYPES))
    if content_type == NDJSON:
        return [_ndjson_line(line) for line in body.splitlines() if line.strip()]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "bad_request", f"the body is not UTF-8 JSON: {error}") from None
    if content_type == CLOUDEVENT:
        return [document]
    if content_type == CLOUDEVENT_BATCH and not isinstance(document, list):
        raise ApiError(400, "bad_request", f"a {CLOUDEVENT_BATCH} body must be a JSON array")
    return document if isinstance(document, list) else [document]


@dataclass(frozen=True, slots=True)
class _Unparsed:
    problem: str


def _ndjson_line(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return _Unparsed(f"this line is not UTF-8 JSON: {error}")


def _binary_cloudevent(headers: Mapping[str, str], body: bytes) -> Any:
    """A binary-mode CloudEvent as the structured one it stands for: the
    attributes from `ce-*` headers (percent-decoded, as the HTTP binding
    encodes them), `datacontenttype` from Content-Type, `data` the body."""
    attributes: dict[str, Any] = {name[len(CE_PREFIX):].lower(): urllib.parse.unquote(value)
                                  for name, value in headers.items() if name.lower().startswith(CE_PREFIX)}
    if "Content-Type" in headers:
        attributes["datacontenttype"] = headers["Content-Type"]
    if not _is_json_media_type(attributes.get("datacontenttype", JSON)):
        return attributes  # _from_cloudevent names the datacontenttype; the body is not read
    try:
        return attributes | {"data": orjson.loads(body)}
    except orjson.JSONDecodeError as error:
        return _Unparsed(f"the body of a binary-mode CloudEvent is its data, and it is not UTF-8 JSON: {error}")


def _is_json_media_type(value: str) -> bool:
    """Whether a media type (parameters and all) is JSON in UTF-8: application/json,
    any */json or */*+json, with no charset or charset=utf-8 (RFC 8259 JSON is UTF-8)."""
    media_type, *parameters = (part.strip().lower() for part in value.split(";"))
    kind, _, subtype = media_type.partition("/")
    charsets = [parameter.partition("=")[2].strip('"') for parameter in parameters
                if parameter.partition("=")[0].strip() == "charset"]
    return bool(kind) and (subtype == "json" or subtype.endswith("+json")) and charsets in ([], ["utf-8"])


def _event_of(cloudevent: bool, item: Any, policy: Policy) -> tuple[dict[str, Any], list[FieldError]]:
    if isinstance(item, _Unparsed):
        return {}, [FieldError("", item.problem)]
    if cloudevent:
        event, errors = _from_cloudevent(item)
        if errors:
            return event, errors
        return event, [_as_cloudevent_error(error) for error in validate_event(event, policy)]
    return item, validate_event(item, policy)


def _from_cloudevent(item: Any) -> tuple[dict[str, Any], list[FieldError]]:
    """The event a structured-mode CloudEvent carries (docs/ingest.md)."""
    if not isinstance(item, dict):
        return {}, [FieldError("", "a CloudEvent must be a JSON object")]
    errors = [FieldError(attribute, f"field '{attribute}' is required (CloudEvents 1.0)")
              for attribute in REQUIRED_CLOUDEVENT_ATTRIBUTES if attribute not in item]
    if "specversion" in item and item["specversion"] != "1.0":
        errors.append(FieldError("specversion", "field 'specversion' must be \"1.0\""))
    if "source" in item and (not isinstance(item["source"], str) or not item["source"]):
        errors.append(FieldError("source", "field 'source' must be a non-empty string (a URI-reference)"))
    if "data_base64" in item:
        errors.append(FieldError("data_base64", "field 'data_base64' is not accepted: send the event's fields "
                                                "as a JSON object in 'data'"))
    datacontenttype = item.get("datacontenttype", JSON)
    if not isinstance(datacontenttype, str) or not _is_json_media_type(datacontenttype):
        errors.append(FieldError("datacontenttype", "field 'datacontenttype' must be a JSON media type in UTF-8 "
                                                    f"(e.g. {JSON!r}, 'application/json; charset=utf-8') when given"))
    data = item.get("data", {})
    if not isinstance(data, dict):
        errors.append(FieldError("data", "field 'data' must be a JSON object: the event's other fields"))
        data = {}
    event = dict(data)
    for attribute, event_field in CLOUDEVENT_FIELDS.items():
        if attribute not in item:
            continue  # then data's own field, if any, is the event's
        if event_field in data and data[event_field] != item[attribute]:
            errors.append(FieldError(f"data.{event_field}", f"field 'data.{event_field}' differs from the "
                                                            f"CloudEvent's '{attribute}'; give it once"))
        event[event_field] = item[attribute]
    return event, errors


def _as_cloudevent_error(error: FieldError) -> FieldError:
    """An event field's error, named as the CloudEvent spells the field."""
    if not error.field:
        return error
    name = _EVENT_TO_CLOUDEVENT.get(error.field, f"data.{error.field}")
    return FieldError(name, error.detail.replace(f"field '{error.field}'", f"field '{name}'", 1))


class _Pending:
    """Events handed to the producer but not yet acknowledged, across requests.

    `stalled` is set when a request timed out waiting for acknowledgements and
    cleared once every outstanding event is settled (acknowledged or failed):
    meanwhile requests are answered 503 without producing anything, so that
    during an outage only the requests already on their way can reach the
    topic after their 503, not every request that comes in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.stalled = False

    def reserve(self, events: int) -> bool:
        if self.stalled or self.count + events > self.limit:
            return False
        self.count += events
        return True

    def release(self, events: int = 1) -> None:
        self.count -= events
        if self.count == 0:
            self.stalled = False


def _check_record_sizes(records: list[tuple[bytes, bytes]], limit: int | None) -> None:
    """413 when a record is larger than the topic takes: the broker would
    refuse it, and with it the records batched beside it, of other requests too."""
    if limit is None:
        return  # not read yet: the broker's own answer is classified instead (`_produce`)
    for index, (key, value) in enumerate(records):
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        if size > limit:
            raise _record_too_large(f"valid event {index} is {size} bytes as a Kafka record", limit)


def _record_too_large(problem: str, limit: int | None) -> ApiError:
    """413 for a record too large; `limit`: the topic's max.message.bytes, when it is what was passed."""
    limit_text = f"; the topic takes at most {limit} bytes (max.message.bytes)" if limit is not None else ""
    return ApiError(413, "record_too_large", f"{problem}{limit_text}: none of this request's events is accepted, and "
                                             "sending it again cannot succeed", facts={"limit_bytes": limit})


async def _produce(producer: IngestProducer, settings: IngestSettings, pending: _Pending,
                   records: list[tuple[bytes, bytes]]) -> None:
    """Produce `records` and return once the broker acknowledged them all;
    else an `ApiError`: 503 (with Retry-After) when sending again can
    succeed, 413 for a record too large, 500 when the broker refuses for good."""
    if not records:
        return
    unavailable = {"Retry-After": str(settings.retry_after_secs)}
    kafka = producer.producer
    if kafka is None:
        raise ApiError(503, "unavailable", "the ingest producer has not reached the broker yet; none of this "
                                           "request's events is accepted: send it again later", headers=unavailable)
    if not pending.reserve(len(records)):
        waiting = ("the broker has not acknowledged earlier events yet" if pending.stalled
                   else f"{pending.count} events already wait for the broker")
        raise ApiError(503, "unavailable", f"{waiting}; none of this request's events is accepted: send it "
                                           "again later", headers=unavailable)
    unclaimed = len(records)
    deliveries: list[asyncio.Future] = []
    try:
        async with asyncio.timeout(settings.delivery_timeout_secs):
            for key, value in records:
                delivery = await kafka.send(settings.topic, value, key=key)
                delivery.add_done_callback(lambda _: pending.release())
                unclaimed -= 1
                deliveries.append(delivery)
            # asyncio.wait, unlike gather, never cancels the futures it waits
            # for: a timeout must not cancel aiokafka's own.
            await asyncio.wait(deliveries)
            failed = next((delivery.exception() for delivery in deliveries if delivery.exception()), None)
            if failed is not None:
                raise failed
        producer.reached()
    except (MessageSizeTooLargeError, RecordListTooLargeError) as error:
        if unclaimed:  # from send() itself: larger than the producer's own max_request_size
            raise _record_too_large(str(error), None) from None
        # The broker's: the topic's limit was lowered since it was read. Read
        # it again, and tell this request's fault from a neighbour's (records
        # of several requests share a batch).
        producer.discard(kafka)
        _check_record_sizes(records, await producer.read_record_limit())
        raise _retriable(f"the broker refused a batch this request's events were in ({type(error).__name__})",
                         unavailable) from None
    except TimeoutError:
        pending.stalled = pending.stalled or pending.count > unclaimed
        raise _retriable(f"the broker did not acknowledge every event within {settings.delivery_timeout_secs:g} s",
                         unavailable) from None
    except KafkaError as error:
        if error.retriable or isinstance(error, (KafkaTimeoutError, KafkaConnectionError)):
            raise _retriable(repr(error), unavailable) from None
        if isinstance(error, PRODUCER_STATE_ERRORS):
            producer.discard(kafka)  # a new producer id starts its sequence numbers afresh
            raise _retriable(repr(error), unavailable) from None
        log.error("POST /events: the broker refused to take events for good: %r", error)
        producer.discard(kafka)
        raise ApiError(500, "broker_refused", f"the broker refused the events ({type(error).__name__}): the "
                                              "accountant's configuration or permissions need an operator; none of "
                                              "this request's events is accepted") from None
    finally:
        if unclaimed:
            pending.release(unclaimed)  # never handed to aiokafka, so no callback releases them


def _retriable(problem: str, headers: dict[str, str]) -> ApiError:
    return ApiError(503, "unavailable", f"{problem}; none of this request's events is accepted: send it again "
                                        "(each event is counted once)", headers=headers)


# --------------------------------------------------------------------------
# OpenAPI


def _cloudevent_of(kind: str) -> dict[str, Any]:
    """The CloudEvent carrying an event of type `kind`, written from its
    JSON Schema: the mapped fields' rules on the attributes, the others in `data`."""
    common, specific = resolved_schema(kind)["allOf"]
    fields = common["properties"] | specific["properties"]
    required = [*common["required"], *specific.get("required", ())]
    attributes = {attribute: fields[field] for attribute, field in CLOUDEVENT_FIELDS.items()}
    data_fields = {name: rule for name, rule in fields.items() if name not in _EVENT_TO_CLOUDEVENT}
    return {
        "title": f"CloudEvent carrying {kind}",
        "type": "object",
        "required": ["specversion", "source", "data", *attributes],
        "properties": {
            "specversion": {"const": "1.0"},
            "source": {"type": "string", "minLength": 1},
            # The usual two; any */json or */*+json in UTF-8 is accepted (docs/ingest.md).
            "datacontenttype": {"enum": [JSON, f"{JSON}; charset=utf-8"]},
            **attributes,
            "data": {"type": "object", "properties": data_fields,
                     "required": [name for name in required if name in data_fields]},
        },
    }


def ingest_openapi(ref: Callable[[str], dict[str, str]], error: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                      dict[str, Any]]:
    """The `POST /events` operation and the component schemas it names, for
    `app.web.openapi.build_openapi`, which adds the token's 401. `ref(name)`
    points at a component; `error` is the response of an `ApiError`."""
    event = resolved_schema("event")
    # OpenAPI 3.1 components are 2020-12 by default (jsonSchemaDialect).
    del event["$schema"]
    event["description"] += " Inlined from the JSON Schema served at /schemas/event.json."
    cloudevent = {
        "title": "CloudEvent",
        "description": "A CloudEvents 1.0 structured-mode event carrying one session event: id -> event_id, "
                       "type -> type, subject -> session_id, time -> occurred_at, data -> the other fields "
                       "(docs/ingest.md). subject and time may come from data instead. Binary mode (ce-* "
                       "headers, the data as the body) carries the same event.",
        "oneOf": [_cloudevent_of(kind) for kind in EVENT_TYPES],
    }
    answer = {
        "title": "IngestAnswer",
        "type": "object",
        "required": ["accepted", "refused"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0, "description": "Events acknowledged by the broker."},
            "refused": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "errors"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0, "description": "Position in the request."},
                        "errors": {"type": "array", "minItems": 1, "items": {
                            "type": "object", "required": ["field", "detail"],
                            "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
                        }},
                    },
                },
            },
        },
    }
    answered = {"content": {JSON: {"schema": ref("IngestAnswer")}}}
    # An empty array holds no events: 400. An empty CloudEvents batch is allowed by its format: 202.
    several_events = {"type": "array", "minItems": 1, "items": ref("SessionEvent")}
    operation: dict[str, Any] = {
        "operationId": "postEvents",
        "summary": "Publish session events (one, an array, NDJSON, or CloudEvents).",
        "description": "Each event is checked against its JSON Schema (/schemas/{type}.json); the valid ones are "
                       "produced to the events topic and the answer is 202 once the broker acknowledged them "
                       "(docs/ingest.md).",
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"oneOf": [ref("SessionEvent"), several_events]}},
            NDJSON: {"schema": {"type": "string", "description": "One SessionEvent per line."}},
            CLOUDEVENT: {"schema": ref("CloudEvent")},
            CLOUDEVENT_BATCH: {"schema": {"type": "array", "items": ref("CloudEvent")}},
        }},
        "responses": {
            "202": {"description": "Every listed event not refused was acknowledged by the broker.", **answered},
            "400": {**error, "description": "The body is not JSON, or holds no events."},
            "413": {**error, "description": "More events or bytes than the limits, or an event larger as a "
                                            "Kafka record than the topic takes (error record_too_large, with "
                                            "limit_bytes): never send it again as it is."},
            "415": {**error, "description": "An unsupported Content-Type."},
            "422": {"description": "Every event was refused; nothing was produced.", **answered},
            "500": {**error, "description": "The broker refused the events for good (error broker_refused: "
                                            "permissions or a topic setting) or a bug: nothing of the request is "
                                            "accepted; keep the events, an operator must act."},
            "503": {**error, "description": "The ingest producer has not reached the broker, the broker did not "
                                            "acknowledge in time, too many events wait for it, or the worker is at "
                                            "ACCOUNTANT_WEB_MAX_CONCURRENT_REQUESTS: nothing of the request is "
                                            "accepted; send it again after Retry-After.",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
        },
    }
    return operation, {"SessionEvent": event, "CloudEvent": cloudevent, "IngestAnswer": answer}
