"""The `sessions` table: session_id -> state (app/rules), backed by a changelog
with one partition per input partition."""

from __future__ import annotations

import faust
from faust.stores import STORES
from faust.types import CollectionT

from app.faust_compat import CodecTable
from app.settings import Settings
from tables.codecs import KEY_CODEC, VALUE_CODEC

#: The stores, by the URL schemes Faust looks stores up with.
STORE_SCHEMES = {"memory": "sessions-memory", "rocksdb": "sessions-rocksdb"}
STORES.aliases[STORE_SCHEMES["memory"]] = "tables.memory:SessionMemoryStore"
STORES.aliases[STORE_SCHEMES["rocksdb"]] = "tables.rocksdb:SessionRocksDBStore"


class SessionTable(CodecTable):
    key_codec = KEY_CODEC
    value_codec = VALUE_CODEC
    #: The service's settings: the stores' own Kafka clients (bulk loads,
    #: tables/changelog.py) connect and log in with them.
    settings: Settings


def table_settings(table: CollectionT) -> Settings:
    """The settings a sessions table was defined with (a store sees its
    table only as Faust's CollectionT)."""
    if not isinstance(table, SessionTable):
        raise TypeError(f"not the sessions table: {table!r}")
    return table.settings


def store_url(settings: Settings) -> str:
    return f"{STORE_SCHEMES[settings.store]}://"


def define_sessions_table(app: faust.App, settings: Settings) -> faust.Table:
    options = {"driver": "rocksdict"} if settings.store == "rocksdb" else None
    table = SessionTable(
        app,
        name=settings.table_name,
        default=None,
        key_type=str,
        value_type=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        store=store_url(settings),
        options=options,
        help="Live sessions, closed ones within retention, and tombstones, by session_id.",
    )
    table.settings = settings
    app.tables.add(table)
    return table
