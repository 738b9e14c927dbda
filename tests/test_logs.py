"""Log records as JSON lines or text, with partition, offset and session_id where known."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from app.logs import JsonFormatter, TextFormatter, log_fields, logging_config
from app.settings import load_settings


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)
    logger.propagate = True


def json_lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_record_is_one_line_with_time_level_logger_and_message(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.warning("closure %s sent", "c-1")
    [entry] = json_lines(stream)
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "tests.logs", "closure c-1 sent")
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_fields_come_from_extra_and_from_the_context(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.info("outside")
    with log_fields(topic="session-events", partition=3, offset=17):
        logger.info("inside")
        logger.info("one event", extra={"session_id": "s-42", "offset": 18})
    logger.info("after")
    outside, inside, event, after = json_lines(stream)
    assert "partition" not in outside and "partition" not in after
    assert (inside["topic"], inside["partition"], inside["offset"]) == ("session-events", 3, 17)
    assert (event["partition"], event["offset"], event["session_id"]) == (3, 18, "s-42")


async def test_context_fields_follow_each_asyncio_task(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    both_inside = asyncio.Barrier(2)

    async def partition(number: int) -> None:
        with log_fields(partition=number):
            await both_inside.wait()  # the other task has set its own fields by now
            logger.info("batch")

    await asyncio.gather(partition(0), partition(1))
    assert sorted(entry["partition"] for entry in json_lines(stream)) == [0, 1]


def test_an_exception_stays_inside_its_json_line(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("failed")
    [entry] = json_lines(stream)
    assert "ValueError: bad\nvalue" in entry["exception"]


def test_a_value_json_cannot_hold_is_written_as_text(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.info("x", extra={"partition": object()})
    assert json_lines(stream)[0]["partition"].startswith("<object")


def test_only_known_fields_can_be_attached() -> None:
    with pytest.raises(TypeError, match="not log fields"), log_fields(tenant="t"):
        pass


def test_text_puts_the_known_fields_after_the_message(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    with log_fields(partition=2, offset=5):
        logger.error("rejected")
    line = stream.getvalue().strip()
    assert line.endswith("[ERROR] tests.logs: rejected [partition=2 offset=5]")


@pytest.mark.parametrize(("log_format", "formatter"), [("text", TextFormatter), ("json", JsonFormatter)])
def test_the_setting_chooses_the_root_handlers_format(log_format: str, formatter: type) -> None:
    config = logging_config(load_settings(log_format=log_format, log_level="warning"))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        assert root.level == logging.WARNING
        assert [type(handler.formatter) for handler in root.handlers] == [formatter]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_record_whose_arguments_do_not_fit_still_gives_a_json_line() -> None:
    record = logging.LogRecord("tests.logs", logging.INFO, __file__, 1, "%d events", ("many",), None)
    assert orjson.loads(JsonFormatter().format(record))["message"] == "%d events ('many',)"


def test_an_uncaught_exception_of_a_json_process_is_one_json_line(tmp_path: Path) -> None:
    script = "from app.logs import configure\nfrom app.settings import load_settings\n" \
             "configure(load_settings())\nraise RuntimeError('boom')\n"
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")},
           "ACCOUNTANT_LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                            cwd=str(tmp_path), check=False)
    [line] = result.stderr.splitlines()
    entry = orjson.loads(line)
    assert entry["level"] == "critical" and "RuntimeError: boom" in entry["exception"]
