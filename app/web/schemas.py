"""`GET /schemas/{name}.json`: the JSON Schemas of app/schemas, as stored.

Served side by side under one path, their relative `$ref`s
(`definitions.json#/$defs/count`) resolve against this URL with any tool.
"""

from __future__ import annotations

from aiohttp import web

from app.schemas import SCHEMA_NAMES, schema_bytes
from app.web.errors import ApiError

__all__ = ["SCHEMAS_PATH", "SCHEMA_MEDIA_TYPE", "get_schema"]

SCHEMAS_PATH = "/schemas/{name}.json"
SCHEMA_MEDIA_TYPE = "application/schema+json"


async def get_schema(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in SCHEMA_NAMES:
        known = ", ".join(f"{known}.json" for known in SCHEMA_NAMES)
        raise ApiError(404, "not_found", f"no schema {name + '.json'!r}; there are {known}")
    return web.Response(body=schema_bytes(name), content_type=SCHEMA_MEDIA_TYPE)
