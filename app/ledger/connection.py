"""How every client of the ledger's database connects: bounded waits
(connect, statement, lock, idle in transaction) and TCP keepalives, so that a
lock held elsewhere or a half-dead connection turns into an error the caller
retries or reports, never into a silent wait. And how a DSN is shown: without
its secrets.

The commands billing runs (`accountant usage`, `adjust`, `period`, `export`,
`migrate`) connect through `command_connection`: any database problem is one
line (`LedgerUnavailable`), never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.ledger.database_errors import describe_database_error
from app.settings import Settings

#: libpq parameters that hold a secret (password: the login's; sslpassword: the client key's).
SECRET_PARAMETERS = ("password", "sslpassword")
#: Keepalive probes sent, ``keepalive_secs / 3`` apart, before the connection counts as dead.
KEEPALIVE_PROBES = 3


_SETTINGS = ("ledger_connect_timeout_secs", "ledger_statement_timeout_secs", "ledger_lock_timeout_secs",
             "ledger_idle_in_transaction_timeout_secs", "ledger_tcp_keepalive_secs")


@dataclass(frozen=True, slots=True)
class DatabaseTimeouts:
    """The settings of the same names (app/settings.py), in seconds."""

    connect_secs: int
    statement_secs: float
    lock_secs: float
    idle_in_transaction_secs: float
    keepalive_secs: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseTimeouts:
        return cls(*(getattr(settings, name) for name in _SETTINGS))

    @classmethod
    def defaults(cls) -> DatabaseTimeouts:
        return cls(*(Settings.model_fields[name].default for name in _SETTINGS))


def ledger_conninfo(dsn: str, timeouts: DatabaseTimeouts, application_name: str) -> str:
    """``dsn`` with the timeouts and keepalives added; what the DSN itself says wins."""
    given = conninfo_to_dict(dsn)
    defaults: dict[str, str | int] = {
        "application_name": application_name,
        "connect_timeout": timeouts.connect_secs,
        "keepalives": 1,
        "keepalives_idle": timeouts.keepalive_secs,
        "keepalives_interval": max(1, timeouts.keepalive_secs // KEEPALIVE_PROBES),
        "keepalives_count": KEEPALIVE_PROBES,
    }
    server_settings = (f"-c statement_timeout={_millis(timeouts.statement_secs)} "
                       f"-c lock_timeout={_millis(timeouts.lock_secs)} "
                       f"-c idle_in_transaction_session_timeout={_millis(timeouts.idle_in_transaction_secs)}")
    # The DSN's own options after ours: of two -c of one name, the server applies the last.
    options = " ".join(filter(None, [server_settings, str(given.get("options") or "")]))
    return make_conninfo("", **{**defaults, **given, "options": options})


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def describe_dsn(dsn: str) -> str:
    """The DSN without its secrets, for logs and messages."""
    params = conninfo_to_dict(dsn)
    for name in SECRET_PARAMETERS:
        if name in params:
            params[name] = "***"
    return make_conninfo("", **params)


def dsn_has_secret(dsn: str) -> bool:
    return any(conninfo_to_dict(dsn).get(name) for name in SECRET_PARAMETERS)


class LedgerUnavailable(Exception):
    """The ledger's database cannot answer a command; the message is one line saying why and what to do."""


@contextlib.contextmanager
def command_connection(dsn: str, timeouts: DatabaseTimeouts,
                       application_name: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one command; database problems raised as `LedgerUnavailable`."""
    where = describe_dsn(dsn)
    try:
        connection = psycopg.connect(ledger_conninfo(dsn, timeouts, application_name))
    except psycopg.OperationalError as error:
        raise LedgerUnavailable(f"cannot reach the ledger's database ({where}): "
                                f"{describe_database_error(error)}") from None
    with connection:
        try:
            yield connection
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction,
                psycopg.errors.UndefinedColumn) as error:
            raise LedgerUnavailable(f"the ledger's database ({where}) is not migrated to this version "
                                    f"({describe_database_error(error)}): run `accountant migrate`") from None
        except psycopg.OperationalError as error:
            raise LedgerUnavailable(f"the ledger's database ({where}) failed: "
                                    f"{describe_database_error(error)}") from None
