"""The API token: every path but the probes needs it, and the dashboard's sign-in.

A browser signs in by POSTing the login form to `/login`: the token travels in
the body, never in a URL (which proxies and the browser's history keep), and
comes back as an HttpOnly, SameSite=Strict cookie, `Secure` when the request
came over TLS (directly, or through a proxy that says
`X-Forwarded-Proto: https`).

Workers forward requests to each other (`app.web.fanout`) with the peer token
(ACCOUNTANT_PEER_TOKEN, else the API token); it is accepted on forwarded
requests only, so a peer token seen on the network opens no more than what
workers ask each other.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.web.assets import static_file
from app.web.errors import ApiError, Handler
from app.web.fanout import FANOUT_HEADER

__all__ = ["LOGIN_PATH", "OPEN_PATHS", "TOKEN_COOKIE", "token_middleware"]

#: Set by the dashboard's sign-in, so the page's own requests carry the token.
TOKEN_COOKIE = "accountant_token"
LOGIN_PATH = "/login"
#: Probes answer without the token: they must not need a secret.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def token_middleware(token: str, peer_token: str = "") -> Middleware:
    """Every path but the probes needs `Authorization: Bearer <token>` (or the
    dashboard's cookie); a forwarded request may carry the peer token instead."""
    expected = token.encode("utf-8")
    expected_peer = (peer_token or token).encode("utf-8")
    login_page = static_file("login.html")

    def matches(offered: str | None, secret: bytes = expected) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode("utf-8"), secret)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if request.path == LOGIN_PATH and request.method == "POST":
            offered = (await request.post()).get("token")
            if isinstance(offered, str) and matches(offered):
                signed_in = web.HTTPSeeOther("/")
                signed_in.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/",
                                     secure=_over_tls(request))
                raise signed_in
            return web.Response(body=login_page, status=401, content_type="text/html", charset="utf-8")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        if matches(bearer) or matches(request.cookies.get(TOKEN_COOKIE)):
            return await handler(request)
        if FANOUT_HEADER in request.headers and request.method == "GET" and matches(bearer, expected_peer):
            return await handler(request)
        if request.path == "/" and request.method == "GET":
            return web.Response(body=login_page, status=401, content_type="text/html", charset="utf-8")
        raise ApiError(401, "unauthorized", "this API needs the token: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})

    return require_token


def _over_tls(request: web.Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a TLS-terminating proxy."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
