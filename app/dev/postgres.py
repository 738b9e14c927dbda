"""A throw-away PostgreSQL server for tests, benchmarks and `accountant dev`.

No Docker needed: Debian's ``postgresql`` package provides ``initdb`` and
``postgres``; the server runs as a plain child process, listening on
127.0.0.1 only, its unix socket inside the data directory.

    with LocalPostgres() as postgres:
        print(postgres.dsn)        # "postgresql://postgres@127.0.0.1:PORT/postgres"

``stop()`` then ``start()`` restarts it on the same port with the same data.
The server is killed if the Python process (thread) that started it dies.

PostgreSQL refuses to run as root; under root the launcher runs ``initdb``
and the server as the ``postgres`` system user (created if missing) and hands
it the data directory, which must then be reachable by that user (a fresh
temporary directory is; pytest's ``/tmp/pytest-of-root`` is not).

``python -m app.dev.postgres`` starts one and runs until Ctrl-C.

Environment:
  ACCOUNTANT_POSTGRES_BIN  directory holding initdb and postgres (default: the
                           one on PATH, else the newest /usr/lib/postgresql/*/bin)
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.dev.processes import (
    LOOPBACK,
    ServerProcess,
    die_with_parent_preexec,
    pick_free_loopback_port,
    serve_until_signalled,
)

ENV_POSTGRES_BIN = "ACCOUNTANT_POSTGRES_BIN"
#: The superuser initdb creates; trusted on loopback only.
SUPERUSER = "postgres"
#: Who runs the server when we are root (PostgreSQL refuses root).
SYSTEM_USER = "postgres"
#: Unix socket paths are limited to 107 bytes; the socket is `<dir>/.s.PGSQL.<port>`.
_MAX_SOCKET_DIR = 90

#: Server settings for a throw-away instance on a small machine. ``fsync=off``
#: still survives a crash of the server process (writes reach the OS before a
#: commit returns); only a crash of the machine could lose data.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
}


class PostgresError(RuntimeError):
    """The local PostgreSQL could not be found, initialised, started or reached."""


def postgres_bin_dir() -> Path:
    """Where initdb and postgres are: $ACCOUNTANT_POSTGRES_BIN, PATH, or Debian's layout."""
    override = os.environ.get(ENV_POSTGRES_BIN)
    if override:
        return Path(override).expanduser()
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    raise PostgresError(
        "no PostgreSQL server binaries (initdb) found: install Debian's postgresql package "
        f"(apt-get install postgresql, or run scripts/setup) or set {ENV_POSTGRES_BIN}"
    )


class LocalPostgres(ServerProcess):
    """One PostgreSQL server on 127.0.0.1 with trust authentication.

    ``datadir`` is kept when given, else a temporary directory is made (and
    removed by ``close()``). ``fast=True`` applies ``FAST_SETTINGS``.
    ``kill()`` is a crash of the postmaster: the next start runs crash recovery.
    """

    #: Fast shutdown: sessions are ended, data is consistent.
    stop_signal = signal.SIGINT

    def __init__(self, datadir: Path | None = None, port: int | None = None, log_path: Path | None = None,
                 *, fast: bool = False) -> None:
        super().__init__()
        self._owns_datadir = datadir is None
        self._datadir = (Path(tempfile.mkdtemp(prefix="local-postgres-")) if datadir is None
                         else Path(datadir).resolve())
        self._port = port
        self._log_path = Path(log_path).resolve() if log_path is not None else self._datadir.parent / (
            self._datadir.name + ".log")
        self._settings = dict(FAST_SETTINGS) if fast else {}

    # -- public properties

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def dsn(self) -> str:
        """libpq URI of the maintenance database ``postgres``."""
        if self._port is None:
            raise PostgresError("server not started yet: no port chosen")
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self._port}/postgres"

    @property
    def datadir(self) -> Path:
        return self._datadir

    @property
    def log_path(self) -> Path:
        return self._log_path

    # -- lifecycle

    def start(self, timeout: float = 60) -> LocalPostgres:
        """Initialise the data directory if new, start the server and return
        once it accepts a connection. Raises PostgresError naming the log."""
        if self.is_running():
            raise PostgresError(f"server already running at {self.dsn}")
        deadline = time.monotonic() + timeout
        bin_dir = postgres_bin_dir()
        run_as = _server_user()
        self._prepare_datadir(run_as)
        if self._port is None:
            self._port = pick_free_loopback_port()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log_file:
            log_file.write(f"\n=== LocalPostgres: starting on {LOOPBACK}:{self._port} "
                           f"at {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
            log_file.flush()
            if not (self._datadir / "PG_VERSION").is_file():
                self._initdb(bin_dir, run_as, log_file, deadline)
            options = {
                "listen_addresses": LOOPBACK,
                "port": str(self._port),
                "unix_socket_directories": str(self._socket_dir(run_as)),
                "logging_collector": "off",
                **self._settings,
            }
            command = [str(bin_dir / "postgres"), "-D", str(self._datadir)]
            for name, value in options.items():
                command += ["-c", f"{name}={value}"]
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._datadir,
                # Own session: Ctrl-C reaches Python, which then stops the server in order.
                start_new_session=True,
                preexec_fn=_child_preexec(run_as),
            )
        self._until_ready(lambda: self._wait_ready(deadline))
        return self

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LocalPostgres {self._port and self.dsn} {state} datadir={self._datadir}>"

    # -- internals

    def _remove_own_files(self) -> None:
        if self._owns_datadir:
            shutil.rmtree(self._datadir, ignore_errors=True)
            self._log_path.unlink(missing_ok=True)

    def _prepare_datadir(self, run_as: pwd.struct_passwd | None) -> None:
        self._datadir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._datadir, 0o700)  # the server refuses a group- or world-readable data directory
        if run_as is not None:
            os.chown(self._datadir, run_as.pw_uid, run_as.pw_gid)
            blocked = _unreachable_ancestor(self._datadir, run_as)
            if blocked is not None:
                raise PostgresError(
                    f"the server runs as user {run_as.pw_name!r} (PostgreSQL refuses root), which cannot "
                    f"reach {self._datadir}: {blocked} has mode {stat.filemode(blocked.stat().st_mode)}. "
                    "Use a data directory under /tmp, /var/tmp or one that user may enter."
                )

    def _socket_dir(self, run_as: pwd.struct_passwd | None) -> Path:
        """Inside the data directory unless that path is too long for a unix socket."""
        socket_dir = self._datadir / "socket"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = Path(tempfile.mkdtemp(prefix="pg-sock-"))
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        if run_as is not None:
            os.chown(socket_dir, run_as.pw_uid, run_as.pw_gid)
        return socket_dir

    def _initdb(self, bin_dir: Path, run_as: pwd.struct_passwd | None, log_file, deadline: float) -> None:
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self._datadir), f"--username={SUPERUSER}", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self._datadir,
            preexec_fn=_child_preexec(run_as),
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb into {self._datadir} failed (exit {result.returncode}); "
                                f"log: {self._log_path}{_log_tail(self._log_path)}")

    def _wait_ready(self, deadline: float) -> None:
        try:
            wait_for_postgres(self.dsn, max(0.0, deadline - time.monotonic()), is_alive=self.is_running)
        except PostgresError as error:
            raise PostgresError(f"{error}; log: {self._log_path}{_log_tail(self._log_path)}") from None


def wait_for_postgres(dsn: str, timeout: float, *, is_alive: Callable[[], bool] = lambda: True) -> None:
    """Block until a connection to ``dsn`` runs a query; PostgresError if
    ``is_alive()`` turns false or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if not is_alive():
            raise PostgresError("PostgreSQL exited during start-up")
        try:
            with psycopg.connect(dsn, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return
        except psycopg.OperationalError as error:
            last_error = error
        if time.monotonic() > deadline:
            raise PostgresError(f"PostgreSQL not ready in {timeout:.0f} s (last error: {last_error})")
        time.sleep(0.1)


@contextmanager
def scratch_database(server_dsn: str, prefix: str = "scratch") -> Iterator[str]:
    """A new empty database on the server of ``server_dsn`` (whose role may
    create databases) for the ``with`` block; its DSN. Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_can_reach(datadir: Path) -> bool:
    """Whether the user the server runs as may enter every directory above ``datadir``."""
    run_as = _server_user()
    return run_as is None or _unreachable_ancestor(Path(datadir).resolve(), run_as) is None


def _server_user() -> pwd.struct_passwd | None:
    """None when we may run the server ourselves; else the system user to run it as."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--home-dir", "/nonexistent", "--no-create-home",
         "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise PostgresError(f"PostgreSQL refuses to run as root and creating the {SYSTEM_USER!r} user "
                            f"failed: {result.stderr.strip()}")
    return pwd.getpwnam(SYSTEM_USER)


def _child_preexec(run_as: pwd.struct_passwd | None) -> Callable[[], None] | None:
    """Drop to ``run_as`` (if any), then ask for SIGKILL when the parent dies.

    The order matters: the kernel clears the parent-death signal when the
    process's credentials change.
    """
    die_with_parent = die_with_parent_preexec()
    if run_as is None:
        return die_with_parent
    uid, gid = run_as.pw_uid, run_as.pw_gid

    def preexec() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if die_with_parent is not None:
            die_with_parent()

    return preexec


def _unreachable_ancestor(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory above ``path`` that ``user`` may not enter, if any."""
    for ancestor in reversed(path.parents):
        if not ancestor.exists():
            break  # made by us with the default mode, which lets others enter
        info = ancestor.stat()
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return ancestor
    return None


def _log_tail(log_path: Path, lines: int = 20) -> str:
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n--- postgres log ---\n" + "\n".join(tail)


# --------------------------------------------------------------------------
# python -m app.dev.postgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.dev.postgres",
        description="Run a local PostgreSQL on 127.0.0.1 until SIGINT/SIGTERM; prints its DSN.",
    )
    parser.add_argument("--datadir", type=Path, help="keep data here (default: a temporary directory)")
    parser.add_argument("--port", type=int, help="port (default: a free one)")
    args = parser.parse_args(argv)

    postgres = LocalPostgres(datadir=args.datadir, port=args.port)

    def announce() -> None:
        print(postgres.dsn, flush=True)
        print(f"log: {postgres.log_path}", file=sys.stderr, flush=True)

    return serve_until_signalled(postgres, announce, lambda: f"PostgreSQL exited; see {postgres.log_path}")


if __name__ == "__main__":
    sys.exit(main())
