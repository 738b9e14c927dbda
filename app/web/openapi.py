"""The HTTP API's shapes and its OpenAPI 3.1 document (SPEC §8).

`SessionRecord` and `SessionView` are generated from the dataclass
`app.rules.SessionRecord`, so the record is described once: its fields give
the record, its properties the derived fields the API adds (`to_view`). The
dataclass keeps times as integer microseconds; every field declared `Micros`
is an RFC 3339 string on the wire, so the generator reads the declarations
with `Micros` standing for `datetime`.

The other response bodies are TypedDicts below: the views build plain dicts
of these shapes, and the document takes their schemas from the same classes.
Each operation's parameters come from its model in `app.web.params`, the
one the view validates requests with.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, with_config
from pydantic.json_schema import models_json_schema
from typing_extensions import TypedDict

from app.rules import MAX_COUNT, CloseReason, Reason, SessionRecord
from app.rules.usage import MAX_THRESHOLD, MAX_THRESHOLDS
from app.schemas import SCHEMA_NAMES
from app.web.ingest import INGEST_PATH, ingest_openapi
from app.web.params import (
    BUDGET_PATH,
    DashboardParams,
    NoParams,
    Params,
    SessionListParams,
    SessionParams,
    TenantListParams,
    TenantParams,
    path_fields,
)
from app.web.schemas import SCHEMA_MEDIA_TYPE, SCHEMAS_PATH

__all__ = ["ErrorBody", "LedgerStatus", "SessionPage", "Stats", "TenantPage", "TenantUsage", "build_openapi",
           "component_schemas", "parameters"]

_COMPONENTS = "#/components/schemas/{model}"
# Attribute docstrings become the fields' descriptions.
_FORBID_EXTRA = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _COMPONENTS.format(model=name)}


# --------------------------------------------------------------------------
# The record, generated from the dataclass


def _wire_hints(target: Any) -> dict[str, Any]:
    """Type hints of `target` with `Micros` read as `datetime` (an RFC 3339 string in JSON).

    Works because rules.py postpones annotations: they are evaluated here, and
    the local namespace wins over the module's `Micros = int`.
    """
    return typing.get_type_hints(target, localns={"Micros": datetime})


def _record_models() -> tuple[type[BaseModel], type[BaseModel]]:
    record_hints = _wire_hints(SessionRecord)
    fields: dict[str, Any] = {field.name: (record_hints[field.name], ...)
                              for field in dataclasses.fields(SessionRecord)}
    record = create_model("SessionRecord", __config__=_FORBID_EXTRA, __doc__=SessionRecord.__doc__, **fields)
    derived: dict[str, Any] = {
        name: (_wire_hints(attribute.fget)["return"], ...)
        for name, attribute in vars(SessionRecord).items()
        if isinstance(attribute, property)
    }
    view = create_model(
        "SessionView",
        __base__=record,
        __doc__="The record plus the fields the API derives from it: " + ", ".join(derived) + ".",
        **derived,
    )
    return record, view


SessionRecordModel, SessionViewModel = _record_models()


# --------------------------------------------------------------------------
# The other bodies


@with_config(_FORBID_EXTRA)
class SessionPage(TypedDict):
    """One page of sessions in `session_id` order."""

    sessions: list[SessionViewModel]  # type: ignore[valid-type]  # generated above
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last page."""


@with_config(_FORBID_EXTRA)
class Budget(TypedDict):
    """A tenant's budget (SPEC §9), as stored in the budgets topic."""

    limit_tokens: int
    thresholds: list[float]
    """Fractions of `limit_tokens`, ascending; each alerts once a month when reached."""
    from_period: str
    """The first month (YYYY-MM) it applies to: the month it was set in."""
    set_at: datetime


@with_config(_FORBID_EXTRA)
class BudgetRequest(TypedDict, total=False):
    """`PUT /tenants/{tenant_id}/budget`."""

    limit_tokens: typing.Required[Annotated[int, Field(ge=1, le=MAX_COUNT)]]
    thresholds: Annotated[list[Annotated[float, Field(gt=0, le=MAX_THRESHOLD)]],
                          Field(min_length=1, max_length=MAX_THRESHOLDS, json_schema_extra={"uniqueItems": True})]
    """1 to 10 distinct numbers in (0, 10]; default [0.8, 1.0]."""


@with_config(_FORBID_EXTRA)
class TenantUsage(TypedDict):
    """A tenant's usage from its state in the tenant table (SPEC §9): its
    open sessions, and the current UTC month's closures and usage."""

    tenant_id: str
    live_sessions: int
    live_token_count: int
    """Tokens so far of the tenant's open sessions."""
    closures: dict[CloseReason, int]
    """This month's closures by reason."""
    period: str
    """The current UTC month, YYYY-MM."""
    usage_tokens: int
    """This month's closures' tokens plus the open sessions' tokens so far."""
    budget: Budget | None
    remaining_tokens: int | None
    state: typing.Literal["ok", "warning", "exceeded", "none"]


@with_config(_FORBID_EXTRA)
class TenantPage(TypedDict):
    """One page of tenants in `tenant_id` order, each with its usage."""

    tenants: list[TenantUsage]
    next_cursor: str | None


@with_config(_FORBID_EXTRA)
class Stats(TypedDict):
    """Counters since each worker started, added up over the workers that answered."""

    applied: int
    duplicate: int
    rejected: dict[Reason, int]
    rejected_total: int
    redelivered: int
    closures: dict[CloseReason, int]
    live_sessions: int
    workers: list[str]
    """Web addresses of the workers whose counters are included."""
    unreachable: list[str]
    """Workers of the group that did not answer in time."""


@with_config(_FORBID_EXTRA)
class LedgerStatus(TypedDict):
    """Whether the ledger (`accountant ledger`) has written every closure on the topic into its database."""

    configured: bool
    """Whether this worker knows the ledger's database (ACCOUNTANT_LEDGER_DSN)."""
    lag_records: int | None
    """Closures on the topic not yet in the ledger, over all partitions; null when unknown."""
    caught_up: bool | None
    """lag_records is 0; null when unknown."""
    error: str | None
    """Why the lag could not be read, if it could not."""


@with_config(_FORBID_EXTRA)
class ErrorBody(TypedDict, total=False):
    error: typing.Required[str]
    detail: typing.Required[str]
    parameter: str
    """The offending request parameter, on 400 answers."""


@with_config(_FORBID_EXTRA)
class Health(TypedDict, total=False):
    status: typing.Required[typing.Literal["ok", "stalled"]]
    stalled_seconds: float
    """When stalled: seconds since the agent last made progress while input waits for it."""
    stall_timeout_secs: float
    """When stalled: ACCOUNTANT_STALL_TIMEOUT_SECS."""


@with_config(_FORBID_EXTRA)
class Readiness(TypedDict, total=False):
    status: typing.Required[typing.Literal["ready", "rebalancing", "starting", "broker_unreachable"]]
    """ready and rebalancing answer 200 (POST /events works); starting and broker_unreachable 503."""
    detail: str


_BODIES: dict[str, Any] = {
    "SessionPage": SessionPage,
    "TenantUsage": TenantUsage,
    "TenantPage": TenantPage,
    "Budget": Budget,
    "BudgetRequest": BudgetRequest,
    "Stats": Stats,
    "LedgerStatus": LedgerStatus,
    "Error": ErrorBody,
    "Health": Health,
    "Readiness": Readiness,
}


def component_schemas() -> dict[str, Any]:
    """Every named schema of the document, enums included."""
    _, record_schemas = models_json_schema(
        [(SessionRecordModel, "serialization"), (SessionViewModel, "serialization")],
        ref_template=_COMPONENTS,
    )
    schemas: dict[str, Any] = dict(record_schemas["$defs"])
    for name, body in _BODIES.items():
        schema = TypeAdapter(body).json_schema(ref_template=_COMPONENTS, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = {**schema, "title": name}
    return schemas


# --------------------------------------------------------------------------
# The document


def parameters(model: type[Params], *, token_required: bool) -> list[dict[str, Any]]:
    """The OpenAPI `parameters` of an operation, from the model its view validates with."""
    schema = model.model_json_schema(ref_template=_COMPONENTS, mode="validation")
    required = set(schema.get("required", ()))
    in_path = path_fields(model)
    documented = []
    for name, field_schema in schema["properties"].items():
        if name in model.token_only and not token_required:
            continue
        parameter_schema = _not_null(field_schema)
        parameter: dict[str, Any] = {"name": name, "in": "path" if name in in_path else "query",
                                     "required": name in required}
        if parameter_schema.get("type") == "array":
            parameter |= {"style": "form", "explode": False}  # comma-separated, as `parse` reads it
        parameter["schema"] = parameter_schema
        description = parameter_schema.pop("description", None)
        if description:
            parameter["description"] = description
        documented.append(parameter)
    return documented


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's title, and without the `null` of
    an optional one (an absent parameter is not a null one)."""
    schema = {key: value for key, value in schema.items() if key != "title"}
    branches = schema.pop("anyOf", None)
    if branches is not None:
        (value,) = [branch for branch in branches if branch != {"type": "null"}]
        schema = {**value, **schema}
    if schema.get("default", "absent") is None:
        del schema["default"]
    return schema


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_BAD_REQUEST = _json("Error", "A parameter is invalid; `parameter` names it.")
_UNAVAILABLE = _json("Error", "Some partitions are not served right now (a rebalance, or a worker is down); "
                              "retry shortly.")


#: `GET /schemas/{name}.json` (app.web.schemas): its one parameter is a name of SCHEMA_NAMES, which the view checks.
_SCHEMA_FILE: dict[str, Any] = {
    "operationId": "getSchema",
    "summary": "A JSON Schema (2020-12) of the wire format, as stored: an event type, `event` (any of them), "
               "`closure`, `rejection`, `session-record`, or `definitions` (their shared parts).",
    "description": "The files refer to each other by relative name (`definitions.json#/$defs/count`), so they "
                   "resolve against this URL.",
    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"enum": list(SCHEMA_NAMES)}}],
    "responses": {
        "200": {"description": "The schema file.",
                "content": {SCHEMA_MEDIA_TYPE: {"schema": {"type": "object"}}}},
        "404": _json("Error", "No such schema; the detail lists the names."),
    },
}

#: The parameters of each path's operation (the others take none): the models the views validate with.
_PARAMS: dict[str, type[Params]] = {
    "/sessions/{session_id}": SessionParams,
    "/sessions": SessionListParams,
    "/tenants": TenantListParams,
    "/tenants/{tenant_id}/usage": TenantParams,
    "/": DashboardParams,
}


def _budget_operations(path_parameters: list[Any]) -> dict[str, Any]:
    common = {"parameters": path_parameters}
    return {
        "get": {**common, "operationId": "getTenantBudget", "summary": "A tenant's budget.",
                "responses": {"200": _json("Budget", "The budget."), "400": _BAD_REQUEST,
                              "404": _json("Error", "The tenant has no budget.")}},
        "put": {**common, "operationId": "putTenantBudget",
                "summary": "Set a tenant's budget; it applies from this month on (SPEC §9).",
                "description": "Stored in the compacted budgets topic before the answer.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BudgetRequest")}}},
                "responses": {"200": _json("Budget", "The budget as stored."), "400": _BAD_REQUEST,
                              "503": _UNAVAILABLE}},
        "delete": {**common, "operationId": "deleteTenantBudget",
                   "summary": "Delete a tenant's budget (a tombstone in the budgets topic).",
                   "responses": {"204": {"description": "Deleted."}, "400": _BAD_REQUEST, "503": _UNAVAILABLE}},
    }


def build_openapi(*, token_required: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API as this worker serves it."""
    paths: dict[str, Any] = {
        "/sessions/{session_id}": {"get": {
            "operationId": "getSession",
            "summary": "One session: the record plus derived fields, from the worker that owns it.",
            "responses": {
                "200": _json("SessionView", "The session (live, or closed within retention)."),
                "400": _BAD_REQUEST,
                "404": _json("Error", "No such session (never seen, or purged after retention)."),
                "503": _UNAVAILABLE,
            },
        }},
        "/sessions": {"get": {
            "operationId": "listSessions",
            "summary": "Sessions across all partitions and workers, in `session_id` order, paged.",
            "responses": {
                "200": _json("SessionPage", "A page of sessions."),
                "400": _BAD_REQUEST,
                "503": _UNAVAILABLE,
            },
        }},
        "/tenants": {"get": {
            "operationId": "listTenants",
            "summary": "Usage of every tenant in the tenant table, in `tenant_id` order, paged.",
            "responses": {
                "200": _json("TenantPage", "A page of tenants."),
                "400": _BAD_REQUEST,
                "503": _UNAVAILABLE,
            },
        }},
        "/tenants/{tenant_id}/usage": {"get": {
            "operationId": "getTenantUsage",
            "summary": "A tenant's live sessions, this month's usage and closures, and its budget (SPEC §9).",
            "description": "Answered from the tenant's state on the worker that owns its partition of the "
                           "tenant table (any worker forwards): its cost does not depend on the number of live "
                           "sessions. A tenant never seen answers zeros.",
            "responses": {
                "200": _json("TenantUsage", "The tenant's usage."),
                "400": _BAD_REQUEST,
                "503": _UNAVAILABLE,
            },
        }},
        "/stats": {"get": {
            "operationId": "getStats",
            "summary": "Applied, duplicate, rejected (by reason), closures (by reason), live sessions.",
            "responses": {"200": _json("Stats", "Counters of all workers that answered.")},
        }},
        "/ledger": {"get": {
            "operationId": "getLedgerStatus",
            "summary": "Whether the ledger has caught up with the closures topic (its lag).",
            "description": "The same answer from any worker: Kafka's end offsets of the closures topic minus "
                           "the offsets the ledger's database holds.",
            "responses": {"200": _json("LedgerStatus", "The ledger's lag, or why it is unknown.")},
        }},
        "/metrics": {"get": {
            "operationId": "getMetrics",
            "summary": "This worker's metrics in the Prometheus text format.",
            "responses": {"200": {"description": "Prometheus text format, or OpenMetrics when the Accept header "
                                                 "asks for it.",
                                  "content": {"text/plain": {"schema": {"type": "string"}},
                                              "application/openmetrics-text": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "responses": {"200": {"description": "OpenAPI 3.1.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
        "/healthz": {"get": {
            "operationId": "getHealth",
            "summary": "Liveness: the agent makes progress, has nothing waiting for it, or waits for the broker.",
            "security": [],
            "responses": {"200": _json("Health", "Alive."),
                          "503": _json("Health", "The agent has made no progress for longer than "
                                                 "ACCOUNTANT_STALL_TIMEOUT_SECS while input waits: restart it.")},
        }},
        "/readyz": {"get": {
            "operationId": "getReadiness",
            "summary": "Readiness: this worker can take POST /events (a rebalance does not stop it).",
            "security": [],
            "responses": {"200": _json("Readiness", "Ready, or rebalancing (the status says which)."),
                          "503": _json("Readiness", "The ingest producer has not reached the broker yet, or the "
                                                    "broker has not answered for longer than "
                                                    "ACCOUNTANT_INGEST_BROKER_UNREACHABLE_SECS.")},
        }},
        "/": {"get": {
            "operationId": "getDashboard",
            "summary": "The dashboard page for a person.",
            "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
    }
    for path, item in paths.items():
        documented = parameters(_PARAMS.get(path, NoParams), token_required=token_required)
        if documented:
            item["get"]["parameters"] = documented
        # Every operation refuses unknown or repeated query parameters.
        item["get"]["responses"].setdefault("400", _BAD_REQUEST)
    paths[BUDGET_PATH] = _budget_operations(parameters(TenantParams, token_required=token_required))
    schemas = component_schemas()
    ingest, ingest_schemas = ingest_openapi(_ref, {"content": {"application/json": {"schema": _ref("Error")}}})
    paths[INGEST_PATH] = {"post": ingest}
    schemas.update(ingest_schemas)
    paths[SCHEMAS_PATH] = {"get": _SCHEMA_FILE}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "usage-accountant",
            "version": "1",
            "description": "Live inspection of the session table (SPEC §8), and gateways' events over HTTP "
                           "(POST /events). The wire format's JSON Schemas are served at /schemas/{name}.json. "
                           "Any worker answers any request.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if token_required:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "The configured ACCOUNTANT_API_TOKEN."},
        }
        document["security"] = [{"bearer": []}]
        unauthorized = _json("Error", "The API token is missing or wrong.")
        for item in paths.values():
            for operation in item.values():
                if operation.get("security") != []:
                    operation["responses"]["401"] = unauthorized
        dashboard = paths["/"]["get"]
        dashboard["responses"]["303"] = {"description": "Signed in: go to `/`."}
        dashboard["responses"]["401"] = {"description": "Token missing or wrong: a form asks for it.",
                                         "content": {"text/html": {"schema": {"type": "string"}}}}
    return document
