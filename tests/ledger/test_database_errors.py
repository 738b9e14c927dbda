"""Permanent vs transient database errors, and error text without row
contents (app/ledger/database_errors.py), against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.ledger.connection import DatabaseTimeouts, ledger_conninfo
from app.ledger.database_errors import describe_database_error, permanent_problem

pytestmark = pytest.mark.postgres


def test_a_refused_row_is_told_without_its_contents(ledger_dsn: str) -> None:
    with psycopg.connect(ledger_dsn) as connection:
        connection.execute("CREATE TABLE t (secret text CHECK (secret <> 'card-4111111111111111'))")
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            connection.execute("INSERT INTO t VALUES ('card-4111111111111111')")
    assert "4111111111111111" in str(raised.value)  # PostgreSQL's DETAIL has the row
    told = describe_database_error(raised.value)
    assert "4111111111111111" not in told and "t_secret_check" in told and "\n" not in told
    assert permanent_problem(raised.value) is None  # about the data: isolated into rejects, not a stop


@pytest.mark.parametrize("change", [{"dbname": "no_such_database"}, {"user": "no_such_role"}])
def test_a_wrong_database_or_role_is_permanent_and_names_the_setting(ledger_dsn: str, change: dict) -> None:
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(make_conninfo("", **{**conninfo_to_dict(ledger_dsn), **change}))
    problem = permanent_problem(raised.value)
    assert problem is not None and problem.startswith("ACCOUNTANT_LEDGER_DSN") and "\n" not in problem


def test_a_missing_table_is_permanent(ledger_dsn: str) -> None:
    with psycopg.connect(ledger_dsn) as connection, pytest.raises(psycopg.errors.UndefinedTable) as raised:
        connection.execute("SELECT * FROM closures")
    assert "a table of the ledger is missing" in (permanent_problem(raised.value) or "")


def test_an_unreachable_server_and_a_lock_timeout_are_transient(ledger_dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=2)
    assert permanent_problem(refused.value) is None
    short = DatabaseTimeouts(connect_secs=5, statement_secs=60, lock_secs=0.2, idle_in_transaction_secs=60,
                             keepalive_secs=30)
    with psycopg.connect(ledger_dsn) as holder, psycopg.connect(ledger_conninfo(ledger_dsn, short, "test")) as waiter:
        holder.execute("CREATE TABLE t (a int)")
        holder.commit()
        holder.execute("LOCK TABLE t")
        with pytest.raises(psycopg.errors.LockNotAvailable) as timed_out:
            waiter.execute("SELECT * FROM t")
    assert isinstance(timed_out.value, psycopg.OperationalError) and permanent_problem(timed_out.value) is None


def test_the_timeouts_reach_the_session_and_the_dsn_wins(ledger_dsn: str) -> None:
    timeouts = DatabaseTimeouts(connect_secs=7, statement_secs=12.5, lock_secs=3, idle_in_transaction_secs=40,
                                keepalive_secs=30)
    with psycopg.connect(ledger_conninfo(ledger_dsn, timeouts, "test")) as connection:
        shown = [connection.execute(f"SHOW {name}").fetchone()[0] for name in (  # type: ignore[index]
            "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "application_name")]
    assert shown == ["12500ms", "3s", "40s", "test"]
    mine = make_conninfo(ledger_dsn, options="-c lock_timeout=9s", connect_timeout=3)
    params = conninfo_to_dict(ledger_conninfo(mine, timeouts, "test"))
    assert params["connect_timeout"] == "3" and params["keepalives_idle"] == "30"
    with psycopg.connect(ledger_conninfo(mine, timeouts, "test")) as connection:
        assert connection.execute("SHOW lock_timeout").fetchone() == ("9s",)
