"""Records no one meant to write, each between two good closures, written by
the PostgreSQL store (real PostgreSQL): each either lands in ledger_rejects
with its source and a reason, or, when it is a billable closure, is stored and
billed. Either way the ledger moves past it, and the per-tenant totals equal
the closures' own (the oracle: the closures sent, summed in Python)."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from app.ledger.batch import LedgerBatch, OffsetAdvance
from app.ledger.closure_row import ClosureRow, LedgerReject, SourceOffset, decode_closure
from app.ledger.postgres_store import PostgresLedgerStore
from tests.support.closures import closure, encode

pytestmark = pytest.mark.postgres

TOPIC = "session-closures"
GROUP = "ledger-test"
#: Kafka's default max.message.bytes (the closures topic is created without another).
TOPIC_MAX_MESSAGE_BYTES = 1_048_588
GOOD = [closure("good-1", tenant_id="acme", initial=1000, delta=1),
        closure("good-2", tenant_id="globex", initial=20, delta=2)]


def _nested_unknown_field(depth: int) -> bytes:
    return encode(closure("deep", tenant_id="acme", initial=7, delta=0)).replace(
        b'"metadata":{}', b'"metadata":{},"extra":' + b"[" * depth + b"]" * depth)


def _at_size_limit() -> bytes:
    """A valid closure whose value is as large as the topic takes (its record overhead aside)."""
    shell = encode(closure("big", tenant_id="acme", initial=5, delta=5, metadata={"pad": ""}))
    return shell.replace(b'"pad":""', b'"pad":"' + b"x" * (TOPIC_MAX_MESSAGE_BYTES - 100 - len(shell)) + b'"')


def _huge_numbers() -> bytes:
    big = str(2**64 + 12345).encode()
    return encode(closure("huge", tenant_id="globex", initial=3, delta=4)).replace(
        b'"metadata":{}', b'"metadata":{"n":' + big + b'},"unknown":-' + big + b"0" * 30)


def _negative() -> bytes:
    item = closure("negative", tenant_id="acme", initial=100, delta=0)
    item["record"]["delta_token_count"] = -50
    item["total_token_count"] = 50
    return encode(item)


def _deep_metadata() -> bytes:
    return encode(closure("deep-metadata", tenant_id="acme")).replace(
        b'"metadata":{}', b'"metadata":' + b"[" * 300 + b"]" * 300)


async def write_between_good_ones(dsn: str, key: bytes | None, value: bytes | None) -> ClosureRow | LedgerReject:
    """GOOD[0], the record, GOOD[1] at offsets 0, 1, 2 of partition 0, in one batch."""
    decoded = [decode_closure(SourceOffset(TOPIC, 0, offset), key, raw)
               for offset, raw in enumerate([encode(GOOD[0]), value, encode(GOOD[1])])]
    store = PostgresLedgerStore(dsn)
    try:
        await store.migrate()
        await store.write(LedgerBatch(GROUP, tuple(item for item in decoded if isinstance(item, ClosureRow)),
                                      tuple(item for item in decoded if isinstance(item, LedgerReject)),
                                      (OffsetAdvance(TOPIC, 0, None, 3),)))
    finally:
        await store.close()
    return decoded[1]


def billed(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as connection:
        return {tenant: int(total) for tenant, total in connection.execute(
            "SELECT tenant_id, sum(total_token_count) FROM closures GROUP BY tenant_id")}


def rejects(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as connection:
        return connection.execute("SELECT source_topic, source_partition, source_offset, error, value "
                                  "FROM ledger_rejects").fetchall()


def next_offset(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        [(offset,)] = connection.execute("SELECT next_offset FROM ledger_offsets").fetchall()
    return int(offset)


def oracle(*closures: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in closures:
        tenant = item["record"]["tenant_id"]
        totals[tenant] = totals.get(tenant, 0) + item["record"]["initial_token_count"] + \
            item["record"]["delta_token_count"]
    return totals


def assert_stored_and_billed(dsn: str, billed_as: dict) -> None:
    """No reject; the totals are the good closures' and ``billed_as``'s (the record's figures)."""
    assert rejects(dsn) == []
    assert billed(dsn) == oracle(*GOOD, billed_as) and next_offset(dsn) == 3


def assert_rejected_at_offset_1(dsn: str, value: bytes | None, reason: str) -> None:
    [(topic, partition, offset, error, stored)] = rejects(dsn)
    assert (topic, partition, offset, stored) == (TOPIC, 0, 1, value)
    assert error.startswith(reason), error
    assert billed(dsn) == oracle(*GOOD) and next_offset(dsn) == 3


async def test_a_nul_in_metadata_is_stored_and_billed(ledger_dsn: str) -> None:
    item = closure("nul", tenant_id="acme", initial=1200, delta=34, metadata={"note": "a\x00b", "k\x00": 1})
    await write_between_good_ones(ledger_dsn, b"nul", encode(item))
    assert_stored_and_billed(ledger_dsn, item)
    with psycopg.connect(ledger_dsn) as connection:
        [(record, record_json)] = connection.execute(
            "SELECT record, record_json FROM closures WHERE closure_id = 'nul'").fetchall()
    assert record["metadata"] == {"note": "a\ufffdb", "k\ufffd": 1}
    assert orjson.loads(record_json) == item["record"]


async def test_a_nul_in_the_tenant_id_is_rejected(ledger_dsn: str) -> None:
    value = encode(closure("nul-tenant", tenant_id="acme\x00"))
    await write_between_good_ones(ledger_dsn, b"nul-tenant", value)
    assert_rejected_at_offset_1(ledger_dsn, value, "record.tenant_id: contains U+0000")


async def test_an_unknown_field_nested_300_deep_is_stored_and_billed(ledger_dsn: str) -> None:
    await write_between_good_ones(ledger_dsn, b"deep", _nested_unknown_field(300))
    assert_stored_and_billed(ledger_dsn, closure("deep", tenant_id="acme", initial=7, delta=0))


async def test_metadata_nested_300_deep_is_rejected(ledger_dsn: str) -> None:
    # The worker refuses metadata nested past 128 levels: no worker wrote this closure.
    value = _deep_metadata()
    await write_between_good_ones(ledger_dsn, b"deep-metadata", value)
    assert_rejected_at_offset_1(ledger_dsn, value, "record: nested too deeply to store")


async def test_numbers_past_2_to_the_64_in_unknown_fields_are_stored_and_billed(ledger_dsn: str) -> None:
    await write_between_good_ones(ledger_dsn, b"huge", _huge_numbers())
    assert_stored_and_billed(ledger_dsn, closure("huge", tenant_id="globex", initial=3, delta=4))


async def test_a_value_at_the_topic_size_limit_is_stored_and_billed(ledger_dsn: str) -> None:
    value = _at_size_limit()
    assert TOPIC_MAX_MESSAGE_BYTES - 200 < len(value) < TOPIC_MAX_MESSAGE_BYTES
    await write_between_good_ones(ledger_dsn, b"big", value)
    assert_stored_and_billed(ledger_dsn, closure("big", tenant_id="acme", initial=5, delta=5))


async def test_a_negative_token_count_is_rejected(ledger_dsn: str) -> None:
    value = _negative()
    await write_between_good_ones(ledger_dsn, b"negative", value)
    assert_rejected_at_offset_1(ledger_dsn, value, "record.delta_token_count: must be an integer in 0..")


async def test_a_tombstone_is_rejected(ledger_dsn: str) -> None:
    await write_between_good_ones(ledger_dsn, b"gone", None)
    assert_rejected_at_offset_1(ledger_dsn, None, "no value (a tombstone")


async def test_junk_bytes_are_rejected(ledger_dsn: str) -> None:
    await write_between_good_ones(ledger_dsn, b"junk", b"\xff\x00 not json")
    assert_rejected_at_offset_1(ledger_dsn, b"\xff\x00 not json", "not JSON")
