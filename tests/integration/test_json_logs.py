"""A worker started with ACCOUNTANT_LOG_FORMAT=json writes nothing but JSON
lines, its own records and those of Faust, mode and aiokafka alike."""

from __future__ import annotations

import orjson
import pytest

from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def test_a_json_worker_writes_only_json_lines(deployment: Deployment) -> None:
    deployment.settings["ACCOUNTANT_LOG_FORMAT"] = "json"
    worker = deployment.worker().start().wait_ready()
    worker.stop()
    assert worker.process is not None and worker.process.returncode == 0
    lines = worker.log_path.read_text().splitlines()  # stdout and stderr, both
    entries = []
    for line in lines:
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    loggers = {entry["logger"].split(".")[0] for entry in entries}
    assert {"faust", "aiokafka", "app"} <= loggers, loggers
    assert any(entry["message"].startswith("usage-accountant ready: dashboard") for entry in entries)
