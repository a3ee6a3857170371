"""Who may see the dashboard and what a page may send back: the token, CSRF, headers.

Why a token off loopback: the dashboard retries and cancels jobs and shows their arguments
and results; bound to 127.0.0.1 only this machine's users reach it, anywhere else it must
not answer a stranger. The token is given once (``?token=…`` or ``Authorization: Bearer``)
and kept in an HttpOnly, SameSite=Strict cookie, so later links carry no secret.

Why CSRF on top: another site open in the same browser could post a form to
``127.0.0.1:8181``. Every POST must carry the value of this browser's ``nuvom_csrf`` cookie
in its form (a double-submit token another origin can neither read nor set), and an
``Origin`` header, when sent, must be this dashboard's.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "TOKEN_COOKIE", "Guard", "is_loopback"]

TOKEN_COOKIE = "nuvom_dashboard_token"
CSRF_COOKIE = "nuvom_csrf"
CSRF_FIELD = "csrf"

#: Every page: scripts and styles from this origin only (htmx is vendored), never framed,
#: never cached (job arguments may be private), no referrer leaking URLs elsewhere.
HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, 127.0.0.0/8,
    ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


class Guard(BaseHTTPMiddleware):
    """Token check, CSRF check and security headers for every request."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await self._checked(request, call_next)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _checked(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None:
                return self._token_link(request, given)
            auth = request.headers.get("authorization", "")
            bearer = auth[7:] if auth.lower().startswith("bearer ") else None
            if not (_same(bearer, self.token)
                    or _same(request.cookies.get(TOKEN_COOKIE), self.token)):
                return PlainTextResponse(
                    "401: this dashboard needs its token. Open it once as "
                    f"{request.url.path}?token=<token> (the value of --token or "
                    "NUVOM_PLUGINS__DASHBOARD__TOKEN), or send 'Authorization: Bearer "
                    "<token>'.", status_code=401)
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = csrf is None
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refused = await self._csrf_refusal(request, csrf)
            if refused is not None:
                return PlainTextResponse(f"403: {refused}", status_code=403)
        request.state.csrf = csrf = csrf or secrets.token_urlsafe(32)
        response = await call_next(request)
        if fresh:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    def _token_link(self, request: Request, given: str) -> Response:
        """``?token=…``: remember a right token in a cookie and drop it from the URL (so it
        stays out of history and logs); refuse a wrong one."""
        if not _same(given, self.token):
            return PlainTextResponse("401: wrong dashboard token.", status_code=401)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def _csrf_refusal(self, request: Request, cookie: str | None) -> str | None:
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = urlsplit(origin).netloc
            if host != request.headers.get("host"):
                return (f"cross-origin request refused (Origin {origin!r} is not this "
                        "dashboard)")
        await request.body()  # cached, so the endpoint reads the same form after us
        form = await request.form()
        if not _same(str(form.get(CSRF_FIELD) or ""), cookie):
            return ("missing or stale CSRF token: reload the page and submit the form again "
                    "(every action must come from a form this dashboard rendered)")
        return None
