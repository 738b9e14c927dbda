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


def define_sessions_table(app: faust.App, settings: Settings) -> faust.Table:
    """The table; its partitions follow the input topic's (one changelog per source partition)."""
    options = {"driver": "rocksdict"} if settings.store == "rocksdb" else None
    table = app.Table(
        settings.table_name,
        default=None,
        partitions=settings.partitions,
        store=store_url(settings),
        options=options,
        help="Live sessions and closed ones within retention, by session_id.",
    )
    # Faust derives serializers only from model types; the store and the
    # changelog topic are created lazily from these attributes.
    table.key_serializer = KEY_CODEC
    table.value_serializer = VALUE_CODEC
    return table
