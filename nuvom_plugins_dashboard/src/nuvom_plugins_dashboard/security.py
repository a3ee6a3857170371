"""Who may see the dashboard and what a page may send back: the token, CSRF, headers.

Why a token off loopback: the dashboard retries and cancels jobs and shows their arguments
and results; bound to 127.0.0.1 only this machine's users reach it, anywhere else it must
not answer a stranger. The token is given once (``?token=…`` or ``Authorization: Bearer``)
and a value derived from it is kept in an HttpOnly, SameSite=Lax cookie, so later links
carry no secret.

Why derived, not the token: the token is also what scripts send as ``Authorization:
Bearer`` and what the configuration holds, and a browser's cookie store is read by more than
the dashboard (profiles synced, exported, inspected). The cookie holds an HMAC of a fixed
label under the token: it signs this browser in, but neither reveals the token nor works as
one, and it stops working once the token is changed.

Why Lax, not Strict: the dashboard's URLs are meant to be linked from alerts, chat and
mail, and a Strict cookie is not sent on a navigation that starts on another site, so such
a link answered 401 to a browser that had signed in. Lax sends it on those top-level GETs
only; a POST from another site still carries neither cookie, and every POST must also pass
the CSRF and ``Origin`` checks below, so Lax opens no action to another site.

Why a ``Host`` check without a token: a page on ``attacker.example`` whose name the
attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with whatever answers there:
it could read every page, get a CSRF form and cookie, and post it with a matching
``Origin``. A browser always names the site it thinks it talks to in ``Host``, so a
token-less dashboard answers only to ``127.0.0.1``, ``localhost``, ``[::1]`` (any loopback
address) and the names listed in ``[plugins.dashboard] allowed_hosts`` (a reverse proxy's);
any other ``Host`` gets a 421. With a token, the token decides: the rebinding page's
origin never holds its cookie.

Why CSRF on top: another site open in the same browser could post a form to
``127.0.0.1:8181``. Every POST must carry the value of this browser's ``nuvom_csrf`` cookie
in its form (a double-submit token another origin can not read), and an ``Origin`` header,
when sent, must be this dashboard's.

Why ``Sec-Fetch-Site`` too: cookies are not kept apart by port, so a page served by any
other program on the dashboard's host (``127.0.0.1:3000``: the same *site*) can set the
``nuvom_csrf`` cookie to a value of its own (a ``Set-Cookie`` replaces even an HttpOnly
cookie) and post a form repeating it; with ``Referrer-Policy: no-referrer`` its browser
sends ``Origin: null``, which must pass, since the dashboard's own pages send no-referrer
too and their forms post ``Origin: null`` as well. A browser says where a request comes
from in ``Sec-Fetch-Site``: a POST that names anything but ``same-origin`` is refused (a
client that sends no such header, such as curl, meets the two checks above only).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from urllib.parse import quote, quote_from_bytes, urlencode, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nuvom_kernel.plugin_settings import plugin_env_var
from nuvom_plugins_dashboard.settings import LOOPBACK_NAMES, host_name

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "TOKEN_COOKIE", "Guard", "raw_path"]

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


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def _is_loopback(name: str) -> bool:
    """``localhost`` or a loopback IP literal: names no DNS answer can re-point."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def raw_path(request: Request) -> str:
    """The request's path as the client sent it, percent-escapes kept (``%2F`` stays
    ``%2F``), with any mount or proxy prefix: ASGI's ``path`` is decoded, so a URL built
    from it names another resource when a segment held an escaped slash."""
    raw = request.scope.get("raw_path")
    if raw:  # escape what a lax client sent unescaped (non-ASCII bytes, spaces); keep %XX
        return quote_from_bytes(bytes(raw), safe="/%!$&'()*+,;=:@~")
    return quote(request.scope.get("path", "/"))


class Guard:
    """Host check, token check, CSRF check and security headers for every request: a plain
    ASGI middleware, so a refused request never reaches a route, and the body read for the
    CSRF check is handed on to the endpoint unchanged.

    :param allowed_hosts: without a token, the ``Host`` names answered besides loopback
        (``*``: any, for an app mounted behind authentication of its own).
    """

    def __init__(self, app: ASGIApp, *, token: str | None,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = frozenset(allowed_hosts)
        #: The token cookie's value (see the module's docstring).
        self._session = "" if token is None else hmac.new(
            token.encode(), b"nuvom-dashboard-session", "sha256").hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        refusal = self._host_refusal(request) or self._token_refusal(request)
        csrf = request.cookies.get(CSRF_COOKIE)
        if refusal is None and request.method not in ("GET", "HEAD", "OPTIONS"):
            body = await request.body()
            receive = _replay(body, receive)  # the endpoint reads the same form after us
            refusal = await self._csrf_refusal(request, csrf)
        if refusal is not None:
            await _with_headers(refusal)(scope, receive, send)
            return
        scope.setdefault("state", {})["csrf"] = token = csrf or secrets.token_urlsafe(32)
        cookie = None
        if csrf is None:
            cookie = Response()
            # Lax like the token's: a link followed from another site keeps this browser's
            # token (Strict would withhold it there and mint a new one, staling other tabs'
            # forms); it guards POSTs as the value a form must repeat, never by being sent
            cookie.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="lax",
                              secure=request.url.scheme == "https")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if cookie is not None:
                    headers.append("set-cookie", cookie.headers["set-cookie"])
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _host_refusal(self, request: Request) -> Response | None:
        """Without a token, a 421 for a ``Host`` that is not loopback or listed (see the
        module's docstring: DNS rebinding)."""
        if self.token is not None or "*" in self.allowed_hosts:
            return None
        header = request.headers.get("host")
        name = host_name(header) if header is not None else None
        if name is not None and (_is_loopback(name) or name in self.allowed_hosts):
            return None
        shown = "no Host header" if header is None else f"Host {header!r}"
        return PlainTextResponse(
            f"421: this dashboard runs without a token, so it answers only to 127.0.0.1, "
            f"localhost and [::1], not to {shown}: a web page whose name points at this "
            "machine (DNS rebinding) must not read jobs or act on them. Behind a reverse "
            "proxy, list the name it forwards in [plugins.dashboard] allowed_hosts "
            f"({plugin_env_var('dashboard', 'allowed_hosts')}), or require a token "
            "(--token).", status_code=421)

    def _token_refusal(self, request: Request) -> Response | None:
        if self.token is None:
            return None
        given = request.query_params.get("token")
        if given is not None:
            return self._token_link(request, given)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        if _same(bearer, self.token) or _same(request.cookies.get(TOKEN_COOKIE),
                                              self._session):
            return None
        query = request.url.query  # kept: the hint is the link that was followed, signed in
        return PlainTextResponse(
            "401: this dashboard needs its token. Open it once as "
            f"{raw_path(request)}?{query + '&' if query else ''}token=<token> (the value of "
            "--token or NUVOM_PLUGINS__DASHBOARD__TOKEN), or send 'Authorization: Bearer "
            "<token>'.", status_code=401)

    def _token_link(self, request: Request, given: str) -> Response:
        """``?token=…``: remember a right token in a cookie and drop it from the URL (so it
        stays out of history and logs); refuse a wrong one."""
        if not _same(given, self.token):
            return PlainTextResponse("401: wrong dashboard token.", status_code=401)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = raw_path(request) + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, self._session, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        return response

    async def _csrf_refusal(self, request: Request, cookie: str | None) -> Response | None:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site != "same-origin":
            return PlainTextResponse(
                f"403: cross-site request refused (Sec-Fetch-Site: {fetch_site!r}): an "
                "action must be posted from a page of this dashboard", status_code=403)
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get(
                "host"):
            return PlainTextResponse(f"403: cross-origin request refused (Origin {origin!r} "
                                     "is not this dashboard)", status_code=403)
        try:
            form = await request.form()
        except HTTPException as exc:  # a malformed body (a multipart without a boundary…)
            return PlainTextResponse(f"{exc.status_code}: {exc.detail}",
                                     status_code=exc.status_code)
        if not _same(str(form.get(CSRF_FIELD) or ""), cookie):
            return PlainTextResponse(
                "403: missing or stale CSRF token: reload the page and submit the form again "
                "(every action must come from a form this dashboard rendered)",
                status_code=403)
        return None


def _with_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _replay(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that hands the already-read request body on once, then waits on the
    connection as before (for its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
