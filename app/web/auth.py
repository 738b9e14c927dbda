"""The API token: every path but the probes needs it, and the dashboard's sign-in."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.web.assets import static_file
from app.web.errors import ApiError, Handler

__all__ = ["OPEN_PATHS", "TOKEN_COOKIE", "token_middleware"]

#: Set by the dashboard's `/?token=` sign-in, so the page's own requests carry the token.
TOKEN_COOKIE = "accountant_token"
#: Probes answer without the token: they must not need a secret.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def token_middleware(token: str) -> Middleware:
    """Every path but the probes needs `Authorization: Bearer <token>` (or the
    dashboard's cookie). `/?token=` signs a browser in: the token moves into
    an HttpOnly cookie and the address bar loses it."""
    expected = token.encode("utf-8")
    login_page = static_file("login.html")

    def matches(offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode("utf-8"), expected)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and matches(credentials.strip())) or matches(request.cookies.get(TOKEN_COOKIE)):
            return await handler(request)
        if request.path == "/":
            if matches(request.query.get("token")):
                signed_in = web.HTTPSeeOther("/")
                signed_in.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
                raise signed_in
            return web.Response(body=login_page, status=401, content_type="text/html", charset="utf-8")
        raise ApiError(401, "unauthorized", "this API needs the token: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})

    return require_token
