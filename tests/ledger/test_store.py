"""The PostgreSQL store (app/ledger/postgres_store.py) and its migrations, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from app.ledger.batch import LedgerBatch, OffsetAdvance
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.migrations import Migration, MigrationError, load_migrations, migrate
from app.ledger.postgres_store import PostgresLedgerStore
from tests.support.closures import BASE_TIME, closure, encode

pytestmark = pytest.mark.postgres

TOPIC = "session-closures"
GROUP = "ledger-test"


def rows(items: Iterable[dict], partition: int = 0, first_offset: int = 0) -> list[ClosureRow | LedgerReject]:
    return [decode_closure(SourceOffset(TOPIC, partition, first_offset + index), None, encode(item))
            for index, item in enumerate(items)]


def batch(decoded: list[ClosureRow | LedgerReject], expected: int | None, partition: int = 0,
          next_offset: int | None = None) -> LedgerBatch:
    last = max((item.source.offset for item in decoded), default=(expected or 0) - 1)
    return LedgerBatch(
        group=GROUP,
        rows=tuple(item for item in decoded if isinstance(item, ClosureRow)),
        rejects=tuple(item for item in decoded if isinstance(item, LedgerReject)),
        advances=(OffsetAdvance(TOPIC, partition, expected, last + 1 if next_offset is None else next_offset),),
    )


async def store_for(dsn: str) -> PostgresLedgerStore:
    store = PostgresLedgerStore(dsn)
    await store.migrate()
    return store


def query(dsn: str, text: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as connection:
        return connection.execute(text, params).fetchall()


async def test_a_batch_writes_closures_rejects_and_offsets_together(ledger_dsn: str) -> None:
    store = await store_for(ledger_dsn)
    assert await store.claim(GROUP, [(TOPIC, 0)]) == {(TOPIC, 0): None}
    decoded = [*rows([closure("s-1", initial=2**63 - 1, delta=2**63 - 1), closure("s-2")]),
               decode_closure(SourceOffset(TOPIC, 0, 2), b"k", b"not json")]
    outcome = await store.write(batch(decoded, expected=None))
    await store.close()

    assert (outcome.written, outcome.duplicates, len(outcome.rejects), outcome.fenced) == (2, 0, 1, {})
    assert query(ledger_dsn, "SELECT closure_id, total_token_count, source_offset, duplicates FROM closures "
                             "ORDER BY closure_id") == [("s-1", 2**64 - 2, 0, 0), ("s-2", 150, 1, 0)]
    [(offset, error, key, value)] = query(ledger_dsn, "SELECT source_offset, error, key, value FROM ledger_rejects")
    assert (offset, key, value) == (2, b"k", b"not json") and error.startswith("not JSON")
    assert query(ledger_dsn, "SELECT consumer_group, topic, partition, next_offset FROM ledger_offsets") == [
        (GROUP, TOPIC, 0, 3)]
    [(record,)] = query(ledger_dsn, "SELECT record FROM closures WHERE closure_id = 's-2'")
    assert record == closure("s-2")["record"]
    assert await PostgresLedgerStore(ledger_dsn).claim(GROUP, [(TOPIC, 0), (TOPIC, 1)]) == {
        (TOPIC, 0): 3, (TOPIC, 1): None}


async def test_repeats_are_counted_and_a_changed_closure_is_a_conflict(ledger_dsn: str) -> None:
    store = await store_for(ledger_dsn)
    await store.write(batch(rows([closure("s-1")]), expected=None))
    later = BASE_TIME + timedelta(hours=1)
    outcome = await store.write(batch(rows([
        closure("s-1", emitted_at=later), closure("s-1", delta=999), closure("s-1", emitted_at=later),
    ], first_offset=1), expected=1))
    await store.close()

    assert (outcome.written, outcome.duplicates, len(outcome.conflicts)) == (0, 2, 1)
    assert query(ledger_dsn, "SELECT total_token_count, duplicates, source_offset FROM closures") == [(150, 2, 0)]
    assert query(ledger_dsn, "SELECT closure_id, total_token_count, source_offset FROM closure_conflicts") == [
        ("s-1", 1099, 2)]


async def test_a_batch_is_fenced_when_another_consumer_wrote_the_partition_first(ledger_dsn: str) -> None:
    """Two consumers read partition 0 from offset 0 (a rebalance moved it while
    the first was writing): only one of them writes offsets 0..1."""
    first, second = await store_for(ledger_dsn), await store_for(ledger_dsn)
    decoded = rows([closure("s-1"), closure("s-2")])
    outcome_1 = await first.write(batch(decoded, expected=None))
    outcome_2 = await second.write(batch(decoded, expected=None))
    # The second consumer resumes from what the database holds and goes on.
    outcome_3 = await second.write(batch(rows([closure("s-3")], first_offset=2), expected=outcome_2.fenced[(TOPIC, 0)]))
    await first.close()
    await second.close()

    assert outcome_1.fenced == {} and outcome_1.written == 2
    assert outcome_2.fenced == {(TOPIC, 0): 2} and outcome_2.written == 0 and outcome_2.committed == {}
    assert outcome_3.written == 1
    assert query(ledger_dsn, "SELECT count(*), sum(duplicates) FROM closures") == [(3, 0)]
    assert query(ledger_dsn, "SELECT next_offset FROM ledger_offsets") == [(3,)]


async def test_fencing_is_per_partition(ledger_dsn: str) -> None:
    store = await store_for(ledger_dsn)
    await store.write(batch(rows([closure("s-1")], partition=1), expected=None, partition=1))
    both = LedgerBatch(GROUP, rows=tuple(rows([closure("s-0")], partition=0) + rows([closure("s-1")], partition=1)),
                       rejects=(), advances=(OffsetAdvance(TOPIC, 0, None, 1), OffsetAdvance(TOPIC, 1, None, 1)))
    outcome = await store.write(both)
    await store.close()
    assert outcome.fenced == {(TOPIC, 1): 1} and outcome.written == 1 and outcome.duplicates == 0
    assert query(ledger_dsn, "SELECT closure_id, duplicates FROM closures ORDER BY 1") == [("s-0", 0), ("s-1", 0)]


async def test_concurrent_writers_of_one_partition_never_double_anything(ledger_dsn: str) -> None:
    """Many writers race to write the same records with the same expected offset."""
    stores = [await store_for(ledger_dsn) for _ in range(6)]
    decoded = rows([closure(f"s-{index}") for index in range(200)])
    outcomes = await asyncio.gather(*(store.write(batch(decoded, expected=None)) for store in stores))
    for store in stores:
        await store.close()
    assert sorted(outcome.written for outcome in outcomes) == [0, 0, 0, 0, 0, 200]
    assert query(ledger_dsn, "SELECT count(*), sum(duplicates) FROM closures") == [(200, 0)]


async def test_isolating_a_batch_turns_rows_the_database_refuses_into_rejects(ledger_dsn: str) -> None:
    store = await store_for(ledger_dsn)
    decoded = rows([closure("s-1"), closure("s-2"), closure("s-3")])
    # A row the mapping let through but the database refuses (here: a CHECK the mapping does not know).
    with psycopg.connect(ledger_dsn, autocommit=True) as connection:
        connection.execute("ALTER TABLE closures ADD CONSTRAINT no_s2 CHECK (closure_id <> 's-2')")
    with pytest.raises(psycopg.IntegrityError):
        await store.write(batch(decoded, expected=None))
    outcome = await store.write(batch(decoded, expected=None), isolate=True)
    await store.close()
    assert outcome.written == 2 and [reject.source.offset for reject in outcome.rejects] == [1]
    assert query(ledger_dsn, "SELECT closure_id FROM closures ORDER BY 1") == [("s-1",), ("s-3",)]
    [(offset, error, value)] = query(ledger_dsn, "SELECT source_offset, error, value FROM ledger_rejects")
    assert offset == 1 and "no_s2" in error and value == encode(closure("s-2"))
    assert query(ledger_dsn, "SELECT next_offset FROM ledger_offsets") == [(3,)]


# --------------------------------------------------------------------------
# Migrations


def test_the_migration_files_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [migration.version for migration in migrations] == list(range(1, len(migrations) + 1))


def test_a_gap_in_the_numbering_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"0003_c\.sql: expected version 0002"):
        load_migrations(tmp_path)


async def test_processes_migrating_together_apply_each_migration_once(ledger_dsn: str) -> None:
    async def one() -> list[str]:
        async with await psycopg.AsyncConnection.connect(ledger_dsn) as connection:
            return await migrate(connection)

    results = await asyncio.gather(*(one() for _ in range(8)))
    files = [migration.file_name for migration in load_migrations()]
    assert sorted(results, key=len) == [[]] * 7 + [files]
    assert query(ledger_dsn, "SELECT version FROM schema_migrations ORDER BY 1") == [
        (migration.version,) for migration in load_migrations()]


async def test_an_edited_applied_migration_stops_start_up(ledger_dsn: str) -> None:
    await (await store_for(ledger_dsn)).close()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
    async with await psycopg.AsyncConnection.connect(ledger_dsn) as connection:
        with pytest.raises(MigrationError, match=r"0001_init\.sql was changed after it was applied"):
            await migrate(connection, edited)


async def test_a_database_newer_than_the_code_stops_start_up(ledger_dsn: str) -> None:
    future = [*load_migrations(), Migration(len(load_migrations()) + 1, "future", "SELECT 1")]
    async with await psycopg.AsyncConnection.connect(ledger_dsn) as connection:
        await migrate(connection, future)
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(connection)


@pytest.mark.parametrize("closed_at", [
    "2026-01-30T22:00:00Z", "2026-01-30T22:00:00.5Z", "2026-01-30T23:00:00.123456+01:00",
    "2026-01-30T17:00:00.1234567-05:00", "2026-01-30t22:00:00z", "2026-01-30 22:00:00.000001Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
])
async def test_postgresql_stores_the_instant_the_rules_read(ledger_dsn: str, closed_at: str) -> None:
    from datetime import datetime

    from app.ledger.closure_row import datetime_to_micros
    from app.rules import parse_timestamp

    item = closure("s-1")
    item["record"]["closed_at"] = closed_at
    item["record"]["created_at"] = "0001-01-01T00:00:00Z"
    item["record"]["activated_at"] = None
    store = await store_for(ledger_dsn)
    await store.write(batch(rows([item]), expected=None))
    await store.close()
    [(stored,)] = query(ledger_dsn, "SELECT closed_at FROM closures")
    assert isinstance(stored, datetime)
    assert datetime_to_micros(stored) == parse_timestamp(closed_at)


async def test_closures_written_before_partitioning_move_into_their_months(ledger_dsn: str) -> None:
    """A ledger of schema 0003 (one closures table) migrated to 0004: each
    closure lands in its month's partition, keeps its figures, and stays
    known by its closure_id (a repeat of it is no new row)."""
    before = [migration for migration in load_migrations() if migration.version <= 3]
    async with await psycopg.AsyncConnection.connect(ledger_dsn) as connection:
        await migrate(connection, before)
    items = [closure("jan", tenant_id="a", initial=10, delta=1),
             closure("feb", tenant_id="a", initial=20, delta=2, closed_at=BASE_TIME + timedelta(days=3)),
             closure("feb-b", tenant_id="b", initial=30, delta=3, closed_at=BASE_TIME + timedelta(days=4))]
    with psycopg.connect(ledger_dsn) as connection:
        for offset, row in enumerate(rows(items)):
            assert isinstance(row, ClosureRow)
            connection.execute(
                "INSERT INTO closures (closure_id, session_id, tenant_id, provider_id, model, reason, created_at, "
                "activated_at, closed_at, ttl_secs, round_count, missing_rounds, initial_token_count, "
                "delta_token_count, total_token_count, record, content_sha256, emitted_at, source_topic, "
                "source_partition, source_offset) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, 0, %s)",
                (row.closure_id, row.session_id, row.tenant_id, row.provider_id, row.model, row.reason,
                 row.created_at, row.activated_at, row.closed_at, row.ttl_secs, row.round_count, row.missing_rounds,
                 row.initial_token_count, row.delta_token_count, row.total_token_count, row.record_text,
                 row.content_sha256, row.emitted_at, TOPIC, offset))
    store = await store_for(ledger_dsn)
    outcome = await store.write(batch(rows([items[1]], first_offset=3), expected=None))
    await store.close()

    assert (outcome.written, outcome.duplicates) == (0, 1)
    assert query(ledger_dsn, "SELECT tableoid::regclass::text, closure_id, tenant_id, total_token_count, period, "
                             "late, duplicates FROM closures ORDER BY closure_id") == [
        ("closures_y2026m02", "feb", "a", 22, BASE_TIME.date().replace(month=2, day=1), False, 1),
        ("closures_y2026m02", "feb-b", "b", 33, BASE_TIME.date().replace(month=2, day=1), False, 0),
        ("closures_y2026m01", "jan", "a", 11, BASE_TIME.date().replace(day=1), False, 0)]
    assert query(ledger_dsn, "SELECT count(*) FROM closure_ids") == [(3,)]
