"""Child processes of the dev tools: a free loopback port for a server, a
child that dies with its parent, and the start/stop life of a local server
(`ServerProcess`, which `LocalKafka` and `LocalPostgres` are).

This module must not import faust: the test fixtures use it before any app
code is loaded.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = [
    "LOOPBACK",
    "ServerProcess",
    "die_with_parent_preexec",
    "pick_free_loopback_port",
    "serve_until_signalled",
    "stop_process",
]

LOOPBACK = "127.0.0.1"


def pick_free_loopback_port(exclude: tuple[int, ...] = ()) -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range.

    Below that range no outgoing connection is ever given the port, so it
    stays free while the broker is stopped for a restart test.
    """
    ephemeral_low = 32768
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    if ephemeral_low > 10_001:
        for _ in range(200):
            port = rng.randrange(10_000, ephemeral_low)
            if port not in exclude and _port_is_free(port):
                return port
    # Fall back to a port the kernel picks (may be in the ephemeral range).
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def die_with_parent_preexec() -> Callable[[], None] | None:
    """preexec_fn making the child get SIGKILL when its parent dies (Linux).

    Caveat of PR_SET_PDEATHSIG: "parent" is the *thread* that forked the
    child, so start the server from a thread that lives as long as you need
    the server (the main thread, normally).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: loading a library in the forked child is unsafe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took hold
            os._exit(1)

    return preexec


def stop_process(process: subprocess.Popen[Any], timeout: float, stop_signal: int = signal.SIGTERM) -> None:
    """Ask a running child to stop with `stop_signal`, SIGKILL it after
    `timeout` seconds, and wait until it is gone."""
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ServerProcess:
    """A local server run as one child process.

    A subclass's `start` launches the process into `_process`, then hands
    `_until_ready` its readiness check; `stop()` then `start()` restarts it.
    The process is stopped when Python exits, and `close()` also removes
    what the object made for it (`_remove_own_files`).
    """

    #: What asks the server to shut down cleanly.
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Launch the server; return once it serves."""
        raise NotImplementedError

    def stop(self, timeout: float = 30) -> None:
        """`stop_signal`, then SIGKILL after ``timeout``."""
        if self._process is not None:
            stop_process(self._process, timeout, self.stop_signal)

    def kill(self) -> None:
        """SIGKILL: an abrupt crash, data is kept as the disk has it."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop, and remove what this object made for the server."""
        self.stop()
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False
        self._remove_own_files()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _until_ready(self, wait_ready: Callable[[], None]) -> None:
        """Once `_process` is launched: stop it when Python exits, and wait
        until `wait_ready` returns; kill it if that raises."""
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        try:
            wait_ready()
        except BaseException:
            self.kill()
            raise

    def _remove_own_files(self) -> None:
        """What `close()` deletes: nothing unless a subclass made it."""

    def _stop_at_exit(self) -> None:
        self.stop(timeout=10)


def serve_until_signalled(server: ServerProcess, announce: Callable[[], None], exited: Callable[[], str]) -> int:
    """Start `server`, `announce` it, and keep it until SIGINT or SIGTERM
    (0), or until it exits by itself (1, after printing `exited()`); then
    close it. For a launcher's `python -m`."""
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    with server:
        announce()
        while not stop_requested.wait(1.0):
            if not server.is_running():
                print(exited(), file=sys.stderr)
                return 1
    return 0
