"""Bytes of the changelog (a `Session`) and of the internal commands, with orjson."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from app.rules.events import Command, Confirm, Expire, Purge
from app.rules.model import CloseReason, Session, SessionRecord
from app.rules.outputs import Closure, Output, Reason, Rejection, Source


def encode_session(session: Session) -> bytes:
    return orjson.dumps(_session_to_json(session))


def decode_session(data: bytes) -> Session:
    return _session_from_json(orjson.loads(data))


def _session_to_json(session: Session) -> dict[str, Any]:
    return {
        "record": session.record.to_json(),
        "created_ttl_secs": session.created_ttl_secs,
        "missing_rounds": session.missing_rounds,
        "close_reason": None if session.close_reason is None else session.close_reason.value,
        "closed_seen_at": session.closed_seen_at,
        "partition": session.partition,
        "created_offset": session.created_offset,
        "last_offset": session.last_offset,
        "outbox": [_output_to_json(output) for output in session.outbox],
        "extended_at": session.extended_at,
    }


def _session_from_json(data: dict[str, Any]) -> Session:
    record = SessionRecord.from_json(data["record"])
    close_reason = None if data["close_reason"] is None else CloseReason(data["close_reason"])
    session = Session(
        record=record,
        created_ttl_secs=data["created_ttl_secs"],
        missing_rounds=data["missing_rounds"],
        close_reason=close_reason,
        closed_seen_at=data["closed_seen_at"],
        partition=data["partition"],
        created_offset=data["created_offset"],
        last_offset=data["last_offset"],
        extended_at=data.get("extended_at"),
    )
    outbox = tuple(_output_from_json(item, session) for item in data["outbox"])
    return replace(session, outbox=outbox)


def _output_to_json(output: Output) -> dict[str, Any]:
    if isinstance(output, Closure):
        return {"kind": "closure"}  # rebuilt from the closed record itself
    item: dict[str, Any] = {
        "kind": "rejection",
        "reason": output.reason.value,
        "detail": output.detail,
        "event": output.event,
        "source": [output.source.topic, output.source.partition, output.source.offset],
    }
    if output.event_omitted:
        item["event_omitted"] = True
    return item


def _output_from_json(item: dict[str, Any], session: Session) -> Output:
    if item["kind"] == "closure":
        return session.closure()
    topic, partition, offset = item["source"]
    return Rejection(
        session.record.session_id, Reason(item["reason"]), item["detail"], item["event"], None,
        Source(topic, partition, offset), item.get("event_omitted", False),
    )


def encode_command(command: Command) -> bytes:
    body: dict[str, Any] = {"command": type(command).__name__.lower(), "session_id": command.session_id}
    if isinstance(command, Confirm):
        body["output_ids"] = list(command.output_ids)
    return orjson.dumps(body)


def decode_command(value: bytes) -> Command:
    body = orjson.loads(value)
    kind = body["command"]
    if kind == "expire":
        return Expire(body["session_id"])
    if kind == "purge":
        return Purge(body["session_id"])
    if kind == "confirm":
        return Confirm(body["session_id"], tuple(body["output_ids"]))
    raise ValueError(f"unknown command {kind!r}")
