"""app/dev/postgres.py: the local PostgreSQL the tests, the benchmarks and `accountant dev` use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from app.dev.postgres import LocalPostgres, PostgresError

pytestmark = pytest.mark.postgres



def test_restart_keeps_the_port_and_the_data(tmp_path: Path) -> None:
    with LocalPostgres(log_path=tmp_path / "pg.log", fast=True) as postgres:
        port = postgres.port
        with psycopg.connect(postgres.dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (n int)")
            connection.execute("INSERT INTO kept VALUES (42)")
        postgres.stop()
        assert not postgres.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres.dsn, connect_timeout=2)
        postgres.start()
        assert postgres.port == port
        with psycopg.connect(postgres.dsn) as connection:
            assert connection.execute("SELECT n FROM kept").fetchone() == (42,)
            assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            socket_dirs = connection.execute("SHOW unix_socket_directories").fetchone()[0]
        assert Path(socket_dirs).is_relative_to(postgres.datadir)


def test_the_server_never_runs_as_root(tmp_path: Path) -> None:
    with LocalPostgres(log_path=tmp_path / "pg.log", fast=True) as postgres:
        server = psutil.Process(postgres.process.pid)
        assert server.uids().effective != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the data directory check applies when the server runs as postgres")
def test_a_data_directory_the_server_user_cannot_reach_is_named(tmp_path: Path) -> None:
    # pytest's basetemp (/tmp/pytest-of-root) is root-only.
    postgres = LocalPostgres(datadir=tmp_path / "data", log_path=tmp_path / "pg.log")
    with pytest.raises(PostgresError, match=r"cannot reach .* has mode drwx------"):
        postgres.start()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    datadir = Path(tempfile.mkdtemp(prefix="local-postgres-test-"))
    script = (
        "import sys, time\n"
        "from app.dev.postgres import LocalPostgres\n"
        f"postgres = LocalPostgres({str(datadir)!r}, log_path={str(tmp_path / 'pg.log')!r}, fast=True).start()\n"
        "print(postgres.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        server_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(server_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the server outlived the process that started it"
            time.sleep(0.1)
    finally:
        parent.kill()
        shutil.rmtree(datadir, ignore_errors=True)
