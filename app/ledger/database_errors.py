"""Which database errors retrying can fix, and how to tell of one in one line.

Transient: the database is down, restarting, busy or out of reach; a lock or
statement timed out; a concurrent writer won a race. The same operation may
succeed later, so it is retried (app/ledger/retry.py). Permanent: the DSN
names a role or database that does not exist, the login is refused, or the
ledger's tables are gone. Retrying cannot fix those: the process stops with
one line that names the setting to fix.

No error text here carries a DETAIL: PostgreSQL puts row contents there
("Failing row contains (...)"), which must not reach logs or ledger_rejects.
"""

from __future__ import annotations

import re

import psycopg

#: Errors that say nothing about the data: the same operation later may succeed.
#: A unique violation on closures means another ledger process inserted the same
#: closure_id meanwhile; on retry the row is read back and judged.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # cannot connect, connection lost, timeouts, server shutting down or starting
    psycopg.InterfaceError,  # the connection was closed under us
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.UniqueViolation,
)

DSN_SETTING = "ACCOUNTANT_LEDGER_DSN"
# libpq reports a refused login before any SQLSTATE exists: only its (English) text tells.
_REFUSED_LOGIN = re.compile(r"password authentication failed|role \"[^\"]*\" does not exist|no pg_hba\.conf entry|"
                            r"database \"[^\"]*\" does not exist|permission denied for database|"
                            r"password is required|SSL is required|certificate", re.IGNORECASE)
_PERMANENT_SQLSTATES = {
    "28000": "the login is refused",  # invalid_authorization_specification
    "28P01": "the password is wrong",  # invalid_password
    "3D000": "the database does not exist",  # invalid_catalog_name
    "42P01": "a table of the ledger is missing (dropped after migrating?)",  # undefined_table
    "42501": "the role lacks a privilege the ledger needs",  # insufficient_privilege
}


class PermanentDatabaseError(Exception):
    """A database error retrying cannot fix; the message names the setting to fix."""


def describe_database_error(error: BaseException) -> str:
    """One line: the error's class and primary message, never its DETAIL."""
    if isinstance(error, psycopg.Error) and error.diag.message_primary:
        text = error.diag.message_primary
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def permanent_problem(error: BaseException) -> str | None:
    """The one-line reason to stop when ``error`` cannot pass by retrying, else None."""
    if not isinstance(error, psycopg.Error):
        return None
    known = _PERMANENT_SQLSTATES.get(error.sqlstate or "")
    if known is None and isinstance(error, psycopg.OperationalError) and error.sqlstate is None:
        match = _REFUSED_LOGIN.search(str(error))
        known = "the server refuses this login or database" if match else None
    if known is None:
        return None
    return f"{DSN_SETTING} (or {DSN_SETTING}_FILE): {known}: {describe_database_error(error)}"
