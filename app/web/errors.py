"""JSON answers, and JSON for every error: `{"error", "detail"[, "parameter"]}`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from app.json_bytes import dumps

__all__ = ["ApiError", "Handler", "bad_parameter", "dumps", "json_errors", "json_response"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json", headers=headers)


class ApiError(Exception):
    """An answer other than 200, as JSON `{"error", "detail"[, "parameter"]}`, plus
    `facts` a client acts on (e.g. the broker's record size limit)."""

    def __init__(self, status: int, error: str, detail: str, *, parameter: str | None = None,
                 headers: Mapping[str, str] | None = None, facts: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body = ({"error": error, "detail": detail} | ({"parameter": parameter} if parameter is not None else {})
                     | dict(facts or {}))
        self.headers = headers

    def response(self) -> web.Response:
        return json_response(self.body, self.status, self.headers)


def bad_parameter(name: str, problem: str) -> ApiError:
    return ApiError(400, "bad_request", f"parameter '{name}' {problem}", parameter=name)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON `{"error", "detail"}`; an unexpected one is logged and answers 500."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise  # redirects
        name = (error.reason or "error").lower().replace(" ", "_")
        headers = {key: value for key, value in error.headers.items() if key.lower() == "allow"}
        return json_response({"error": name, "detail": f"{request.method} {request.path}: {error.reason}"},
                             error.status, headers)
    except Exception:
        log.exception("failed to answer %s %s", request.method, request.path_qs)
        return json_response({"error": "internal_error", "detail": "the worker failed on this request; see its log"},
                             500)
