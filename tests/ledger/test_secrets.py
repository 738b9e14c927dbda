"""The ledger's password never shows: not in its log, its HTTP answers, the
`ps` listing, ledger_rejects, nor the errors of the billing commands; and a
row the database refuses is not copied into logs or ledger_rejects."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.ledger.connection import describe_dsn
from tests.support import REPO
from tests.support.closures import ClosureSet, closure
from tests.support.ledger_processes import LedgerDeployment
from tests.support.waiting import wait_for


def test_describe_dsn_hides_both_passwords() -> None:
    shown = describe_dsn("postgresql://u:login-secret@db:5432/ledger?sslpassword=key-secret&sslmode=verify-full")
    assert "login-secret" not in shown and "key-secret" not in shown
    assert "user=u" in shown and "sslmode=verify-full" in shown


def test_the_password_is_nowhere_and_a_refused_row_is_not_copied(ledger_deployment: LedgerDeployment,
                                                                 tmp_path: Path) -> None:
    password = f"pw-canary-{uuid.uuid4().hex[:10]}"
    dsn = make_conninfo("", **{**conninfo_to_dict(ledger_deployment.dsn), "password": password})
    dsn_file = tmp_path / "ledger-dsn"
    dsn_file.write_text(dsn + "\n")
    population = ClosureSet(100, seed=51)
    ledger_deployment.publish_closures(population.closures)
    ledger = ledger_deployment.ledger(ACCOUNTANT_LEDGER_DSN="", ACCOUNTANT_LEDGER_DSN_FILE=str(dsn_file))
    ledger.start().wait_ready()
    ledger_deployment.wait_caught_up(alive=[ledger])

    # A row the database refuses: its DETAIL ("Failing row contains (...)") would quote the row.
    with psycopg.connect(ledger_deployment.dsn, autocommit=True) as connection:
        connection.execute("ALTER TABLE closures ADD CONSTRAINT no_vip CHECK (tenant_id <> 'tenant-vip')")
    refused = closure("vip", tenant_id="tenant-vip", metadata={"card": "row-canary-4111"})
    ledger_deployment.publish([("vip", orjson.dumps(refused)), ("junk", b"not json")])
    ledger_deployment.wait_caught_up(alive=[ledger])
    [(key, error)] = ledger_deployment.query("SELECT key, error FROM ledger_rejects WHERE error LIKE %s",
                                             ("%no_vip%",))
    assert key == b"vip" and "row-canary" not in error

    wait_for("the log to tell of the refused row", lambda: "no_vip" in ledger.log_tail(400), 10)
    seen = {
        "log": ledger.log_path.read_text(errors="replace"),
        "ps": subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout,
        "rejects": "\n".join(str(row) for row in ledger_deployment.query("SELECT * FROM ledger_rejects")),
        **{path: str(ledger.get(path)[1]) for path in ("/metrics", "/healthz", "/readyz")},
    }
    assert [where for where, text in seen.items() if password in text] == []
    assert [where for where, text in seen.items() if "row-canary" in text and where != "rejects"] == []

    # The billing commands, against the same database and against one that is down.
    clean = {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}
    down = tmp_path / "down-dsn"
    down.write_text(make_conninfo(dsn, port="1"))
    for dsn_path, args in [(dsn_file, ["usage", "--tenant", "tenant-1", "--period", "2026-01"]),
                           (down, ["usage", "--tenant", "tenant-1", "--period", "2026-01"]),
                           (dsn_file, ["adjust", "--tenant", "t", "--closure-id", "none", "--tokens", "1",
                                       "--reason", "r"]),
                           (down, ["export", "--period", "2026-01"])]:
        result = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                                timeout=60, env={**clean, "ACCOUNTANT_LEDGER_DSN_FILE": str(dsn_path)})
        assert password not in result.stdout + result.stderr, args
        if dsn_path == down:
            assert result.returncode == 1 and "cannot reach the ledger's database" in result.stderr
