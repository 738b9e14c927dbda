"""Versioned SQL migrations (app/ledger/migrations/NNNN_name.sql), applied at start-up.

All pending migrations run in one transaction that first takes a
transaction-scoped advisory lock: processes starting together queue on the
lock, and each sees what the one before it applied. An applied migration is
never edited: a file whose digest differs from the recorded one stops
start-up, as does a database that holds a migration this code does not know.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Key of the advisory lock (any bigint; derived from a name so it is stable).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"usage-accountant ledger migrations").digest()[:8], "big",
                          signed=True)
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date safely; the message says why."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; versions must run 1, 2, 3, ..."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {migration.file_name}: expected version {expected:04d} "
                                 "(versions run 1, 2, 3, ... without gaps)")
    return migrations


async def migrate(connection: psycopg.AsyncConnection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the pending migrations; return the file names applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await connection.execute(_CREATE_SCHEMA_MIGRATIONS)
        cursor = await connection.execute("SELECT version, name, sha256 FROM schema_migrations ORDER BY version")
        applied = {version: (name, digest) for version, name, digest in await cursor.fetchall()}
        known = {migration.version for migration in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            names = ", ".join(f"{version:04d}_{applied[version][0]}" for version in unknown)
            raise MigrationError(f"the database holds migrations this version does not know ({names}): "
                                 "run a ledger at least as new as the one that applied them")
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version][1] != migration.sha256:
                    raise MigrationError(f"migration {migration.file_name} was changed after it was applied "
                                         "(its digest differs); add a new migration instead")
                continue
            # No parameters: psycopg sends the file as one simple query, several statements allowed.
            await connection.execute(migration.sql.encode())
            await connection.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                                     (migration.version, migration.name, migration.sha256))
            applied_now.append(migration.file_name)
    return applied_now
