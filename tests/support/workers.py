"""Real workers as subprocesses, watched over their HTTP API.

Workers run as `python -m app.cli worker` so a test can SIGKILL one: an
in-process Faust app cannot be crashed, and it runs at-least-once only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from app.dev.processes import pick_free_loopback_port, stop_process
from app.web.fanout import FANOUT_HEADER, PARTITIONS_HEADER, parse_partitions
from tests.support import REPO
from tests.support.waiting import wait_for

__all__ = ["WORKER_COMMAND", "WorkerProcess", "accounted"]

WORKER_COMMAND = ["-m", "app.cli", "worker"]


class WorkerProcess:
    """One worker: its own web port, data directory and log file under `workdir`."""

    def __init__(self, name: str, env: Mapping[str, str], workdir: Path, *, command: list[str] | None = None) -> None:
        self.name = name
        self.env = dict(env)
        self.port = pick_free_loopback_port()
        self.data_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        #: The arguments to the Python interpreter (a benchmark may instrument the worker).
        self.command = command or WORKER_COMMAND
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        #: Seconds from start to the first ready answer, once `wait_ready` saw it.
        self.ready_secs: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "ACCOUNTANT_WEB_PORT": str(self.port),
               "ACCOUNTANT_DATA_DIR": str(self.data_dir)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.ready_secs = None
            self.process = subprocess.Popen([sys.executable, *self.command], cwd=REPO, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def check_alive(self) -> None:
        assert self.process is not None, f"{self.name} was not started"
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 90, interval: float = 0.3) -> WorkerProcess:
        """Wait for /readyz to answer 200 and ready: a worker's "ready", not
        "rebalancing" (its table recovered), a ledger's `"ready": true`
        (failing at once if the process exits)."""

        def ready() -> bool:
            self.check_alive()
            try:
                status, body = self.get("/readyz")
                return status == 200 and isinstance(body, dict) and (body.get("status") == "ready"
                                                                     or body.get("ready") is True)
            except OSError:
                return False

        wait_for(f"{self.name} to be ready", ready, timeout, interval, observed=lambda: self.log_tail())
        self.ready_secs = time.monotonic() - self.started_at
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Status and body (parsed when JSON) of GET `path`."""
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, _maybe_json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _maybe_json(error.read())

    def stats(self, *, local: bool = False, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """/stats over the group, or this process's own counters (`local`: the
        fan-out header stops it asking its peers)."""
        status, body = self.get("/stats", {**(headers or {}), **({FANOUT_HEADER: "1"} if local else {})})
        assert status == 200, f"{self.name} /stats answered {status}: {body}"
        return body

    def owned_partitions(self, headers: dict[str, str] | None = None) -> frozenset[int]:
        """The input partitions this worker is active for now (empty while rebalancing)."""
        request = urllib.request.Request(self.url + "/sessions?limit=1",
                                         headers={**(headers or {}), FANOUT_HEADER: "1"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return parse_partitions(response.headers.get(PARTITIONS_HEADER))

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (all labels); 0 when it has none."""
        return self.exported_metric(name) or 0.0

    def exported_metric(self, name: str) -> float | None:
        """The sum of a metric's samples (all labels), or None when the process
        does not export the metric at all (a labelled counter that has no
        sample yet is exported: its `# TYPE` line is there)."""
        status, text = self.get("/metrics")
        assert status == 200 and isinstance(text, str), (status, text)
        family = name.removesuffix("_total")
        exported = False
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                exported = True
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith(f"# TYPE {family} "):
                exported = True
        return total if exported else None

    def terminate(self) -> None:
        """SIGTERM without waiting: the process leaves while the caller goes on
        (`stop` later waits for it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 60) -> None:
        """Graceful stop, as on a deploy: SIGTERM, then wait (SIGKILL after `timeout`)."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to flush or commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def accounted(stats: Mapping[str, Any]) -> int:
    """Events of a /stats answer that ended applied, duplicate or rejected (SPEC §5)."""
    return stats["applied"] + stats["duplicate"] + stats["rejected_total"]


def _maybe_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
