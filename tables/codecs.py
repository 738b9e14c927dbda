"""The table's key and value codecs, registered with Faust by name.

Keys are UTF-8 session ids and values the changelog bytes of app/rules
(`encode_state`), so the changelog is readable with any Kafka tool and
recovery rebuilds exactly the states the agent wrote.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from app.rules import decode_state, encode_state

KEY_CODEC = "session_id"
VALUE_CODEC = "session"


class SessionIdCodec(codecs.Codec):
    """session_id <-> UTF-8 bytes (Faust's raw codec would give bytes back)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)

    def _loads(self, data: bytes) -> str:
        return data.decode("utf-8")


class SessionCodec(codecs.Codec):
    """A table value <-> its changelog bytes."""

    def _dumps(self, obj: Any) -> bytes:
        return encode_state(obj)

    def _loads(self, data: bytes) -> Any:
        return decode_state(data)


codecs.register(KEY_CODEC, SessionIdCodec())
codecs.register(VALUE_CODEC, SessionCodec())
