"""The ledger in PostgreSQL (psycopg 3): `LedgerStore` implemented.

One transaction per batch: lock the batch's rows of ``ledger_offsets``, leave
out the partitions another consumer wrote since we read them (fencing), read
the digests of the closure_ids already held, apply the conflict rule, then
insert the new closures, count the duplicates, keep conflicts and rejects, and
move the offsets; commit. Either all of it is in the database or none of it,
and the stored offsets say exactly which records it holds.

New closures are booked into a billing period (app/rules/periods.py) under a
SHARE lock on ``ledger_periods``, so no month closes during the batch; the
month's partition of ``closures`` is made first, in a transaction of its own
(making one locks the whole table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import date
from typing import Any

import orjson
import psycopg

from app.ledger.batch import BatchOutcome, LedgerBatch, Partition
from app.ledger.closure_row import ClosureRow, LedgerReject
from app.ledger.conflicts import Conflict, Verdict, judge, plan_batch
from app.ledger.connection import DatabaseTimeouts, ledger_conninfo
from app.ledger.database_errors import describe_database_error
from app.ledger.gaps import Gap
from app.ledger.migrations import migrate
from app.rules.periods import booking_period

log = logging.getLogger(__name__)

#: What the ledger calls itself in pg_stat_activity.
APPLICATION_NAME = "accountant-ledger"

# New closures go in by COPY, each value already text: psycopg's C code then
# only escapes, and the server parses one chunk while we format the next.
_COPY_CLOSURES = """
COPY closures (closure_id, session_id, tenant_id, provider_id, model, reason, created_at, activated_at, closed_at,
               ttl_secs, round_count, missing_rounds, initial_token_count, delta_token_count, total_token_count,
               record, record_json, content_sha256, emitted_at, source_topic, source_partition, source_offset,
               period, late)
FROM STDIN
"""
_INSERT_IDS = """
INSERT INTO closure_ids (closure_id, period, content_sha256)
SELECT * FROM unnest(%s::text[], %s::date[], %s::bytea[])
"""
_CLOSED_PERIODS = "SELECT month FROM ledger_periods"
_PARTITIONS = r"""
SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([0-9-]+)''\)'))[1]::date
FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'closures'::regclass
"""

_ENSURE_OFFSET_ROWS = """
INSERT INTO ledger_offsets (consumer_group, topic, partition)
SELECT %s, u.topic, u.partition FROM unnest(%s::text[], %s::int[]) AS u(topic, partition)
ORDER BY u.topic, u.partition
ON CONFLICT DO NOTHING
"""
_LOCK_OFFSETS = """
SELECT topic, partition, next_offset FROM ledger_offsets
WHERE consumer_group = %s
  AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
ORDER BY topic, partition
FOR UPDATE
"""
# The ids as one JSON array: orjson and the server's JSON parser beat adapting a Python list.
_STORED_DIGESTS = """
SELECT closure_id, content_sha256 FROM closure_ids
WHERE closure_id IN (SELECT jsonb_array_elements_text(%s::jsonb))
"""
_COUNT_DUPLICATES = """
UPDATE closures AS c SET duplicates = c.duplicates + u.n, last_duplicate_at = now()
FROM unnest(%s::text[], %s::bigint[]) AS u(closure_id, n), closure_ids AS i
WHERE i.closure_id = u.closure_id AND c.closure_id = u.closure_id AND c.period = i.period
"""
_INSERT_CONFLICT = """
INSERT INTO closure_conflicts (closure_id, content_sha256, stored_content_sha256, total_token_count, record,
                               record_json, reason, missing_rounds, emitted_at, source_topic, source_partition,
                               source_offset)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
"""
_INSERT_REJECT = """
INSERT INTO ledger_rejects (source_topic, source_partition, source_offset, error, key, value)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
"""
_MOVE_OFFSET_ACROSS_GAP = """
UPDATE ledger_offsets SET next_offset = %s, updated_at = now()
WHERE consumer_group = %s AND topic = %s AND partition = %s AND coalesce(next_offset, 0) = %s
"""
_RECORD_GAP = """
INSERT INTO ledger_gaps (consumer_group, topic, partition, from_offset, to_offset, kind, accepted_by)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
_MOVE_OFFSETS = """
UPDATE ledger_offsets AS o SET next_offset = u.next_offset, updated_at = now()
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS u(topic, partition, next_offset)
WHERE o.consumer_group = %s AND o.topic = u.topic AND o.partition = u.partition
"""


class _Link:
    """One connection, opened on first use and again after it breaks, used by
    one task at a time (a psycopg connection holds one transaction)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._lock:
            connection = self._connection
            if connection is None or connection.closed or connection.broken:
                await self.close()
                connection = self._connection = await psycopg.AsyncConnection.connect(self._dsn)
            yield connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            with contextlib.suppress(psycopg.Error):  # a broken connection is closed all the same
                await connection.close()


class PostgresLedgerStore:
    """A `LedgerStore` on two PostgreSQL connections: one for writes and one
    for claims, so that a rebalance reads the stored offsets at once even while
    a write waits (for locks, or for a database that is down). Errors are the
    caller's to retry (app/ledger/retry.py)."""

    def __init__(self, dsn: str, timeouts: DatabaseTimeouts | None = None) -> None:
        dsn = ledger_conninfo(dsn, timeouts or DatabaseTimeouts.defaults(), APPLICATION_NAME)
        self._writes = _Link(dsn)
        self._claims = _Link(dsn)
        #: Months that have a partition of closures, as last read (None: not read yet).
        self._partitions: set[date] | None = None

    async def close(self) -> None:
        await self._writes.close()
        await self._claims.close()

    async def migrate(self) -> list[str]:
        async with self._writes.use() as connection:
            return await migrate(connection)

    async def claim(self, group: str, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        keys = sorted(set(partitions))
        if not keys:
            return {}
        async with self._claims.use() as connection, connection.transaction():
            topics, numbers = [topic for topic, _ in keys], [number for _, number in keys]
            await connection.execute(_ENSURE_OFFSET_ROWS, (group, topics, numbers))
            cursor = await connection.execute(
                "SELECT topic, partition, next_offset FROM ledger_offsets WHERE consumer_group = %s "
                "AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
                (group, topics, numbers))
            return {(topic, number): offset for topic, number, offset in await cursor.fetchall()}

    async def accept_gap(self, group: str, gap: Gap, accepted_by: str) -> bool:
        async with self._claims.use() as connection, connection.transaction():
            cursor = await connection.execute(_MOVE_OFFSET_ACROSS_GAP, (
                gap.to_offset, group, gap.topic, gap.partition, gap.from_offset))
            if cursor.rowcount != 1:
                return False
            await connection.execute(_RECORD_GAP, (group, gap.topic, gap.partition, gap.from_offset, gap.to_offset,
                                                   gap.kind.value, accepted_by))
            return True

    async def write(self, batch: LedgerBatch, *, isolate: bool = False) -> BatchOutcome:
        looked_again = False
        while True:
            try:
                return await self._write(batch, isolate)
            except _MissingPartitions as missing:
                await self._make_partitions(missing.months)
            except psycopg.errors.CheckViolation as error:
                if looked_again or not (error.diag.message_primary or "").startswith("no partition of relation"):
                    raise
                self._partitions = None  # one was detached since we looked: look again, once
                looked_again = True

    async def _make_partitions(self, months: Iterable[date]) -> None:
        async with self._writes.use() as connection:
            for month in sorted(months):
                async with connection.transaction():
                    await connection.execute("SELECT ledger_ensure_partition(%s)", (month,))
                log.info("made the partition of closures for %s", month.strftime("%Y-%m"))
        self._partitions = None

    async def _write(self, batch: LedgerBatch, isolate: bool) -> BatchOutcome:
        async with self._writes.use() as connection, connection.transaction():
            if self._partitions is None:
                cursor = await connection.execute(_PARTITIONS)
                self._partitions = {month for (month,) in await cursor.fetchall()}
            fenced = await self._lock_offsets(connection, batch)
            if fenced:
                batch = batch.without(fenced)
            closed = await self._closed_periods(connection) if batch.rows else frozenset()
            if isolate:
                written, duplicates, conflicts, refused = await self._write_one_by_one(connection, batch.rows,
                                                                                        closed)
            else:
                written, duplicates, conflicts = await self._write_rows(connection, batch.rows, closed)
                refused = []
            rejects = (*batch.rejects, *refused)
            if rejects:
                async with connection.cursor() as cursor:
                    await cursor.executemany(_INSERT_REJECT, [_reject_params(reject) for reject in rejects])
            if batch.advances:
                await connection.execute(_MOVE_OFFSETS, (
                    [advance.topic for advance in batch.advances],
                    [advance.partition for advance in batch.advances],
                    [advance.next_offset for advance in batch.advances],
                    batch.group))
        return BatchOutcome(
            written=written, duplicates=duplicates, conflicts=tuple(conflicts), rejects=tuple(rejects),
            fenced=fenced, committed={advance.key: advance.next_offset for advance in batch.advances})

    async def _lock_offsets(self, connection: psycopg.AsyncConnection,
                            batch: LedgerBatch) -> dict[Partition, int | None]:
        """Lock the batch's offset rows; the partitions whose stored offset is not the expected one."""
        if not batch.advances:
            return {}
        advances = sorted(batch.advances, key=lambda advance: advance.key)
        topics = [advance.topic for advance in advances]
        numbers = [advance.partition for advance in advances]
        await connection.execute(_ENSURE_OFFSET_ROWS, (batch.group, topics, numbers))
        cursor = await connection.execute(_LOCK_OFFSETS, (batch.group, topics, numbers))
        stored = {(topic, number): offset for topic, number, offset in await cursor.fetchall()}
        return {advance.key: stored.get(advance.key) for advance in advances
                if stored.get(advance.key) != advance.expected}

    @staticmethod
    async def _closed_periods(connection: psycopg.AsyncConnection) -> frozenset[date]:
        """The closed months, locked against closing another until this transaction ends."""
        await connection.execute("LOCK TABLE ledger_periods IN SHARE MODE")
        cursor = await connection.execute(_CLOSED_PERIODS)
        return frozenset(month for (month,) in await cursor.fetchall())

    async def _stored_digests(self, connection: psycopg.AsyncConnection, ids: list[str]) -> dict[str, bytes]:
        if not ids:
            return {}
        cursor = await connection.execute(_STORED_DIGESTS, (orjson.dumps(ids).decode(),))
        return {closure_id: bytes(digest) for closure_id, digest in await cursor.fetchall()}

    async def _write_rows(self, connection: psycopg.AsyncConnection, rows: tuple[ClosureRow, ...],
                          closed: frozenset[date]) -> tuple[int, int, list[Conflict]]:
        stored = await self._stored_digests(connection, list({row.closure_id for row in rows}))
        plan = plan_batch(stored, rows)
        if plan.new_rows:
            await self._copy_closures(connection, plan.new_rows, closed)
        if plan.duplicates:
            ids = list(plan.duplicates)
            await connection.execute(_COUNT_DUPLICATES, (ids, [plan.duplicates[closure_id] for closure_id in ids]))
        if plan.conflicts:
            async with connection.cursor() as cursor:
                await cursor.executemany(_INSERT_CONFLICT, [_conflict_params(conflict) for conflict in plan.conflicts])
        return len(plan.new_rows), sum(plan.duplicates.values()), plan.conflicts

    async def _copy_closures(self, connection: psycopg.AsyncConnection, rows: list[ClosureRow],
                             closed: frozenset[date]) -> None:
        booked = [booking_period(row.closed_month, closed) for row in rows]
        missing = {period for period, _ in booked} - (self._partitions or set())
        if missing:
            raise _MissingPartitions(missing)
        async with connection.cursor() as cursor, cursor.copy(_COPY_CLOSURES) as copy:
            for row, (period, late) in zip(rows, booked, strict=True):
                await copy.write_row((*_copy_row(row), period.isoformat(), "t" if late else "f"))
        await connection.execute(_INSERT_IDS, ([row.closure_id for row in rows], [period for period, _ in booked],
                                               [row.content_sha256 for row in rows]))

    async def _write_one_by_one(
        self, connection: psycopg.AsyncConnection, rows: tuple[ClosureRow, ...], closed: frozenset[date]
    ) -> tuple[int, int, list[Conflict], list[LedgerReject]]:
        """The rule applied row by row, each in a savepoint: a row the database refuses becomes a reject."""
        written = duplicates = 0
        conflicts: list[Conflict] = []
        refused: list[LedgerReject] = []
        for row in rows:
            try:
                async with connection.transaction():
                    stored = (await self._stored_digests(connection, [row.closure_id])).get(row.closure_id)
                    verdict = judge(stored, row.content_sha256)
                    if verdict is Verdict.NEW:
                        await self._copy_closures(connection, [row], closed)
                        written += 1
                    elif verdict is Verdict.DUPLICATE:
                        await connection.execute(_COUNT_DUPLICATES, ([row.closure_id], [1]))
                        duplicates += 1
                    else:
                        assert stored is not None
                        conflict = Conflict(row, stored)
                        await connection.execute(_INSERT_CONFLICT, _conflict_params(conflict))
                        conflicts.append(conflict)
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                if isinstance(error, psycopg.errors.UniqueViolation):
                    raise  # another writer inserted this closure_id meanwhile: retry the batch
                if (error.diag.message_primary or "").startswith("no partition of relation"):
                    raise  # a partition detached meanwhile: not the row's fault
                reason = f"the database refused the row: {describe_database_error(error)}"
                log.warning("the database refused closure %r at %s/%d@%d: %s", row.closure_id,
                            row.source.topic, row.source.partition, row.source.offset, reason)
                refused.append(LedgerReject(row.source, reason, row.key, row.raw))
        return written, duplicates, conflicts, refused


class _MissingPartitions(Exception):
    """The batch books closures into months that have no partition yet."""

    def __init__(self, months: set[date]) -> None:
        super().__init__(sorted(months))
        self.months = months


def _copy_row(row: ClosureRow) -> tuple[str | None, ...]:
    """A closure's columns as COPY text (psycopg escapes them)."""
    return (row.closure_id, row.session_id, row.tenant_id, row.provider_id, row.model, row.reason,
            row.created_at, row.activated_at, row.closed_at, str(row.ttl_secs), str(row.round_count),
            str(row.missing_rounds), str(row.initial_token_count), str(row.delta_token_count),
            str(row.total_token_count), row.record_text, row.record_json, "\\x" + row.content_sha256.hex(),
            row.emitted_at, row.source.topic, str(row.source.partition), str(row.source.offset))


def _conflict_params(conflict: Conflict) -> tuple[Any, ...]:
    row = conflict.row
    return (row.closure_id, row.content_sha256, conflict.stored_sha256, row.total_token_count, row.record_text,
            row.record_json, row.reason, row.missing_rounds, row.emitted_at, row.source.topic, row.source.partition,
            row.source.offset)


def _reject_params(reject: LedgerReject) -> tuple[Any, ...]:
    return (reject.source.topic, reject.source.partition, reject.source.offset, reject.error, reject.key,
            reject.value)
