"""`GET /schemas/{name}.json`: the JSON Schemas of app/schemas, as stored.

Served side by side under one path, their relative `$ref`s
(`definitions.json#/$defs/count`) resolve against this URL with any tool.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from app.schemas import SCHEMA_NAMES, schema_bytes

__all__ = ["SCHEMA_MEDIA_TYPE", "SCHEMAS_PATH", "get_schema"]

SCHEMAS_PATH = "/schemas/{name}"
SCHEMA_MEDIA_TYPE = "application/schema+json"


async def get_schema(request: web.Request) -> web.Response:
    file_name = request.match_info["name"]
    name = file_name.removesuffix(".json")
    if not file_name.endswith(".json") or name not in SCHEMA_NAMES:
        known = ", ".join(f"{known}.json" for known in SCHEMA_NAMES)
        return web.Response(status=404, content_type="application/json", body=orjson.dumps(
            {"error": "not_found", "detail": f"no schema {file_name!r}; there are {known}"}))
    return web.Response(body=schema_bytes(name), content_type=SCHEMA_MEDIA_TYPE)
