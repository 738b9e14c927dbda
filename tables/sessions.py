"""The `sessions` table: session_id -> `rules.Session`, backed by a changelog.

Keys are UTF-8 session ids and values are the orjson form of `Session`, so the
changelog is readable with any Kafka tool and recovery rebuilds exactly the
objects the agent wrote.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.serializers import codecs

from app.rules import Session, decode_session, encode_session
from app.settings import Settings

KEY_CODEC = "session_id"
VALUE_CODEC = "session"


class SessionIdCodec(codecs.Codec):
    """session_id <-> UTF-8 bytes (Faust's raw codec would give bytes back)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)

    def _loads(self, data: bytes) -> str:
        return data.decode("utf-8")


class SessionCodec(codecs.Codec):
    """`Session` <-> orjson bytes."""

    def _dumps(self, obj: Session) -> bytes:
        return encode_session(obj)

    def _loads(self, data: bytes) -> Session:
        return decode_session(data)


codecs.register(KEY_CODEC, SessionIdCodec())
codecs.register(VALUE_CODEC, SessionCodec())


def store_url(settings: Settings) -> str:
    return "rocksdb://" if settings.store == "rocksdb" else "memory://"


class SessionTable(faust.Table):
    """A Table whose keys and values use the codecs above.

    Faust derives a table's serializers from its key and value *model* types
    in `__init__`, and creates the changelog topic (which recovery decodes
    with) right then; so the codecs must be chosen here, not set afterwards.
    """

    def _serializer_from_type(self, typ: Any) -> str:
        return KEY_CODEC if typ is str else VALUE_CODEC


def define_sessions_table(app: faust.App, settings: Settings) -> faust.Table:
    """The table; its partitions follow the input topic's (one changelog per source partition)."""
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
        help="Live sessions and closed ones within retention, by session_id.",
    )
    return app.tables.add(table)
