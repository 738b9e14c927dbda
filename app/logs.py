"""Log output: text for people (the default), or one JSON object per line.

ACCOUNTANT_LOG_FORMAT=json makes every record, the service's and those of
Faust, mode and aiokafka alike, one line of JSON on stderr:

    {"time": "2026-11-29T23:10:18.123Z", "level": "info", "logger": "agents.batch",
     "message": "...", "topic": "session-events", "partition": 3, "offset": 1717,
     "session_id": "s-42"}

`topic`, `partition`, `offset` and `session_id` appear where known: passed
with `extra=` on one call, or set for a stretch of code with `log_fields`,
which uses a context variable and so follows the asyncio task:

    with log_fields(topic=record.topic, partition=record.partition, offset=record.offset):
        logger.warning("...")              # carries the three fields

Faust's worker installs logging itself (mode's `setup_logging`, from a
dictConfig), and then sends whatever is printed to stdout into the log as
well. Handing it `logging_config(settings)` as its `logging_config` makes it
install these handlers instead of its coloured ones; `configure` installs the
same for commands that run without a Faust worker and for the start-up steps
before it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.config
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["LOG_FIELDS", "JsonFormatter", "TextFormatter", "configure", "log_fields", "logging_config"]

#: Record attributes that go into the output when set (by extra= or log_fields).
LOG_FIELDS = ("topic", "partition", "offset", "session_id")

_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_fields: ContextVar[Mapping[str, Any]] = ContextVar("accountant_log_fields", default=_NO_FIELDS)


@contextlib.contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Attach `fields` (some of LOG_FIELDS) to every record logged inside the
    block, in this task and the code it awaits; None values are left out."""
    unknown = set(fields) - set(LOG_FIELDS)
    if unknown:
        raise TypeError(f"not log fields: {sorted(unknown)}; use {LOG_FIELDS}")
    token = _fields.set({**_fields.get(), **{name: value for name, value in fields.items() if value is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The LOG_FIELDS a record carries: its own (extra=) over the context's."""
    fields = dict(_fields.get())
    for name in LOG_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return {name: fields[name] for name in LOG_FIELDS if name in fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a caller's arguments that do not fit its format
            message = f"{record.msg!s} {record.args!r}"
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            **record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field holding e.g. a TopicPartition still gives a line, never an error.
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`[time] [pid] [LEVEL] logger: message`, then the known fields."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        return first + " [" + " ".join(f"{name}={value}" for name, value in fields.items()) + "]" + newline + rest


def logging_config(settings: Settings) -> dict[str, Any]:
    """A logging.config.dictConfig dictionary: one stderr handler on the root
    logger, in the format the settings ask for. Also what Faust's Worker
    takes as `logging_config`."""
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    return {
        "version": 1,
        # Loggers that libraries created at import time must keep working.
        "disable_existing_loggers": False,
        "formatters": {"accountant": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                # stderr: stdout stays for what a command prints (`accountant broker` its address).
                "stream": "ext://sys.__stderr__",
                "formatter": "accountant",
            },
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["default"]},
    }


def configure(settings: Settings) -> None:
    """Install the log format for this process (Faust's Worker installs the
    same again when it starts). Python warnings become records too; with
    json, so does an uncaught exception, instead of a bare traceback."""
    logging.config.dictConfig(logging_config(settings))
    logging.captureWarnings(True)
    if settings.log_format == "json":
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("app").critical("uncaught exception", exc_info=(kind, error, traceback))


def _utc_time(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
