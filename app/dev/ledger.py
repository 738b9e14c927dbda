"""The ledger part of `accountant dev`: a local PostgreSQL (unless
ACCOUNTANT_LEDGER_DSN is given) and one `accountant ledger` process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from pydantic import SecretStr

from app.dev.postgres import LocalPostgres, server_can_reach
from app.dev.processes import die_with_parent_preexec, stop_process
from app.ledger.connection import describe_dsn
from app.settings import Settings

#: In the data directory: the ledger's DSN, for `accountant usage` and `accountant simulate` in another shell.
DSN_FILE = "ledger-dsn.txt"


@dataclass
class DevLedger:
    dsn: str
    process: subprocess.Popen[bytes]
    postgres: LocalPostgres | None
    dsn_file: Path

    def stop(self, timeout: float = 15) -> None:
        # Gone with the ledger: `accountant simulate` then checks no ledger rather than a stopped one.
        self.dsn_file.unlink(missing_ok=True)
        stop_process(self.process, timeout)
        if self.postgres is not None:
            self.postgres.stop()


def start_dev_ledger(settings: Settings, data_dir: Path) -> DevLedger:
    """Start what the ledger needs and the ledger itself; print where they are.

    Under root the server runs as the postgres user, which must be able to
    enter ``data_dir``; the data then goes to a temporary directory instead.
    """
    postgres = None
    dsn = settings.ledger_dsn
    if not dsn:
        postgres = LocalPostgres(datadir=_postgres_datadir(data_dir), log_path=data_dir / "postgres.log")
        click.echo("starting a local PostgreSQL ...", err=True)
        postgres.start()
        dsn = postgres.dsn
    log_path = data_dir / "ledger.log"
    env = {**os.environ, **_kafka_env(settings), "ACCOUNTANT_BROKER": settings.broker}
    if not env.get("ACCOUNTANT_LEDGER_DSN_FILE"):  # else the ledger reads the same file
        env["ACCOUNTANT_LEDGER_DSN"] = dsn
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "ledger"], env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent_preexec())
    click.echo(f"ledger: database {describe_dsn(dsn)}  metrics http://{settings.ledger_web_host}:"
               f"{settings.ledger_web_port}"
               f"/metrics  log {log_path}", err=True)
    dsn_file = data_dir / DSN_FILE
    dsn_file.write_text(dsn + "\n")
    return DevLedger(dsn, process, postgres, dsn_file)


def _kafka_env(settings: Settings) -> dict[str, str]:
    """The Kafka settings the worker runs with (`accountant dev --secure` makes
    its own), as the ledger process's environment, so it logs in the same way."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name.startswith("kafka_") and value:
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"ACCOUNTANT_{name.upper()}"] = text
    return env


def _postgres_datadir(data_dir: Path) -> Path:
    datadir = (data_dir / "postgres").resolve()
    if server_can_reach(datadir):
        return datadir
    digest = hashlib.sha256(str(datadir).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"usage-accountant-postgres-{digest}"
