"""The dashboard's web app (Starlette + Jinja2, htmx served from this package).

Stable URLs, so an alert can link to them: ``/`` overview, ``/jobs`` (query ``status``,
``task``, ``queue``, ``since`` or ``minutes``, and ``after`` for the next page),
``/jobs/<id>``, ``/queued`` (what is in the queues now: query ``queue`` and ``state``,
repeatable, ``limit``, ``after``), ``/workers``. Actions are a confirmation page (GET
``/actions/<action>/<id>``) and a POST there carrying the CSRF token; the POST reports what
it did on the page it redirects to. Templates autoescape everything: arguments, results and
errors are data, never markup.

Why actions have a prefix of their own: the server decodes ``%2F`` before routing, so
``/jobs/<id>/retry`` could not tell job ``invoice-7``'s retry from the page of job
``invoice-7/retry``. ``/actions/<action>/<id>`` reads the action first and the whole rest
as the id, whatever it holds.

Why a store that cannot be read gives a 503 page: a backend's errors are
:class:`~nuvom_kernel.errors.NuvomError` subclasses whose message says what failed and what
to check (with the URL's password masked); a bare "Internal Server Error" said nothing.

Why live sections send a digest: the overview, ``/queued``, ``/workers`` and ``/schedules``
refresh every :data:`REFRESH_SECS` seconds. Swapping a section that did not change dropped
keyboard focus and the text selection inside it, so the page sends the digest of what it
shows (its ``hx-headers``) and an unchanged section is answered with its ticking parts only
(``as of``, ages: ``<span class="tick" id=…>``, swapped out of band) and ``HX-Reswap: none``. When a
refresh fails, ``static/dashboard.js`` marks the section stale, saying why, until one
succeeds.

Why the report of an action (the ``nuvom_flash`` cookie) is signed: cookies are not kept
apart by port, so a page of any other program on the dashboard's host (``127.0.0.1:3000``)
could set ``nuvom_flash`` and have its own sentence shown as the dashboard's status line
(escaped, but a trusted place for a lie: "job store compromised, see …"). The cookie carries
an HMAC of its text under a key drawn when the app is created, and a cookie that does not
verify is dropped unread. The key is this process's only: the report is read once, on the
page the action redirects to a moment later, so a restart in between (or another process of
a multi-process server answering the redirect) loses a sentence the page's own state
repeats, which is not worth keeping a secret on disk for.

Why every URL starts with the mount prefix (``root_path``): mounted in another app
(``Mount("/admin/nuvom", app=create_app(...))``) or behind a proxy's path, root-absolute
links would leave the mount.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nuvom_kernel.errors import NuvomError
from nuvom_kernel.job import workers_of
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins_dashboard import actions, queued, views
from nuvom_plugins_dashboard.security import CSRF_FIELD, Guard
from nuvom_plugins_dashboard.settings import parse_allowed_hosts

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent
FLASH_COOKIE = "nuvom_flash"
#: Seconds between two refreshes of the live parts of a page.
REFRESH_SECS = 5
#: Seconds a full page answered 503 (the store cannot be read) waits before it reloads.
RETRY_SECS = 10
#: The request header a live section sends its digest in (see the module's docstring).
SEEN_HEADER = "X-Nuvom-Seen"
#: What a template writes where a live section's digest goes, replaced once it is known.
_DIGEST_SLOT = "nuvom-digest-slot"
#: The ticking parts of a live section: text only (escaped), so a pattern finds them.
_TICK = re.compile(r'<span class="tick" id="([^"]+)">([^<]*)</span>')

log = logging.getLogger("nuvom.dashboard")


def _age(secs: float | None) -> str:
    if secs is None:
        return "-"
    if secs < 120:
        return f"{secs:.1f} s"
    if secs < 7200:
        return f"{secs / 60:.1f} min"
    return f"{secs / 3600:.1f} h"


def _duration(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{(end - start) * 1000:.1f} ms"


def _ran(record: JobRecord) -> str:
    """How long a job's last attempt ran (``JobRecord.run_secs``: not until its cancel)."""
    secs = record.run_secs
    return "-" if secs is None else f"{secs * 1000:.1f} ms"


def _printable(value: Any) -> Any:
    """Jinja's ``finalize``: every value a template prints goes through
    :func:`views.printable`, so a lone surrogate in an argument, a result or an attempt's
    error cannot make the page unencodable (a 500)."""
    if isinstance(value, Markup):
        return Markup(views.printable(str(value)))
    if isinstance(value, str):
        return views.printable(value)
    return value


def _base(request: Request) -> str:
    """The path the app is mounted at (a host app's ``Mount``, a proxy's ``root_path``),
    escaped for a URL; ``""`` at the root. Every link, asset, form and redirect starts
    with it."""
    return quote(request.scope.get("root_path", ""))


def _route_path(request: Request) -> str:
    """The request's path below the mount (what the routes match), for the navigation."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _quote_id(job_id: str) -> str:
    """A job id as one path segment: its slashes escaped too."""
    return quote(job_id, safe="", errors="backslashreplace")


def job_url(base: str, job_id: str) -> str:
    """The page of one job."""
    return f"{base}/jobs/{_quote_id(job_id)}"


def queued_url(base: str, queue: str, states: Iterable[str]) -> str:
    """The jobs in one queue now, in these states (``queued``, ``retrying``, ``running``)."""
    return f"{base}/queued?" + urlencode([("queue", queue), *(("state", s) for s in states)])


def action_url(base: str, action: str, job_id: str) -> str:
    """The confirmation page (GET) and the form target (POST) of one job's action."""
    return f"{base}/actions/{action}/{_quote_id(job_id)}"


def _legacy_action(request: Request, job_id: str) -> tuple[str, str] | None:
    """``(action, job id)`` of a link from before actions moved to ``/actions/``
    (``/jobs/<id>/retry``), told apart by the raw path: the slash before the action is
    literal there, while a slash of the id itself arrives escaped (``%2F``)."""
    raw = bytes(request.scope.get("raw_path") or b"")
    for action in actions.ACTIONS:
        tail = "/" + action
        if raw.endswith(tail.encode()) and job_id.endswith(tail) and len(job_id) > len(tail):
            return action, job_id[:-len(tail)]
    return None


def sign_flash(key: bytes, sentence: str) -> str:
    """The ``nuvom_flash`` cookie's value for ``sentence``: its MAC, a dot, its text escaped
    for a cookie (see the module's docstring)."""
    text = quote(sentence, errors="backslashreplace")
    return f"{_flash_mac(key, text)}.{text}"


def read_flash(key: bytes, value: str | None) -> str | None:
    """The sentence of a ``nuvom_flash`` cookie this app signed; ``None`` for any other
    (absent, planted by another page of the host, signed by an earlier process)."""
    mac, dot, text = (value or "").partition(".")
    given = mac.encode(errors="backslashreplace")  # bytes: a planted value may be any text
    if not dot or not hmac.compare_digest(given, _flash_mac(key, text).encode()):
        return None
    return unquote(text)


def _flash_mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(errors="backslashreplace"), hashlib.sha256).hexdigest()


def create_app(kernel: Any, *, token: str | None = None, read_only: bool = False,
               allowed_hosts: Iterable[str] | str = ()) -> Starlette:
    """The dashboard over ``kernel``'s backends.

    :param token: required from every client when set (see :mod:`.security`).
    :param read_only: hide every action and refuse every POST.
    :param allowed_hosts: without a token, the host names (``Host`` without its port) it
        answers besides 127.0.0.1, localhost and [::1] — the names a reverse proxy
        forwards — as names or one comma-separated string; ``"*"`` answers any host (only
        behind authentication of your own). Others get a 421 (DNS rebinding).
    """
    hosts = parse_allowed_hosts(allowed_hosts if isinstance(allowed_hosts, str)
                                else ",".join(allowed_hosts))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             finalize=_printable)
    templates = Jinja2Templates(env=env)
    flash_key = secrets.token_bytes(32)  # signs the reports of actions (module docstring)
    env.filters.update(when=views.format_time, age=_age)
    env.globals.update(duration=_duration, ran=_ran, read_only=read_only, csrf_field=CSRF_FIELD,
                       refresh_secs=REFRESH_SECS, windows=views.WINDOWS,
                       seen_header=SEEN_HEADER, clip_chars=views.CLIP_CHARS,
                       job_url=jinja2.pass_context(lambda ctx, job_id: job_url(
                           ctx["base"], job_id)),
                       action_url=jinja2.pass_context(lambda ctx, action, job_id: action_url(
                           ctx["base"], action, job_id)),
                       bulk_limit=actions.BULK_LIMIT, relative=queued.relative,
                       waiting=queued.WAITING, queued_page_size=queued.PAGE_SIZE,
                       queued_url=jinja2.pass_context(lambda ctx, queue, states: queued_url(
                           ctx["base"], queue, states)))

    def render(request: Request, name: str, status_code: int = 200, **context: Any
               ) -> Response:
        cookie = request.cookies.get(FLASH_COOKIE)
        flash = read_flash(flash_key, cookie)
        context.update(csrf=request.state.csrf, flash=flash, path=_route_path(request),
                       base=_base(request))
        context.setdefault("now", time.time())
        response = templates.TemplateResponse(request, name, context,
                                              status_code=status_code)
        if cookie is not None:  # read once; a forged one is not kept either
            response.delete_cookie(FLASH_COOKIE)
        return response

    def live(request: Request, page: str, fragment: str, **context: Any) -> Response:
        """A page with a live section (``fragment``), or, for htmx's refresh, the section
        alone; only its ticking parts when it shows what the page already has."""
        context.update(now=time.time(), base=_base(request), path=_route_path(request),
                       digest=_DIGEST_SLOT)
        html = env.get_template(fragment).render(context)
        key = views.digest(_TICK.sub(r"\1", html))  # the ticks' ids, not their text
        if not request.headers.get("hx-request"):
            return render(request, page, **{**context, "digest": key})
        if request.headers.get(SEEN_HEADER) == key:
            ticks = "".join(f'<span class="tick" id="{i}" hx-swap-oob="true">{t}</span>'
                            for i, t in _TICK.findall(html))
            return HTMLResponse(ticks, headers={"HX-Reswap": "none"})
        return HTMLResponse(html.replace(_DIGEST_SLOT, key))

    def done(request: Request, target: str, sentence: str) -> Response:
        """Redirect to ``target`` (a path below the mount) reporting ``sentence`` there."""
        response = RedirectResponse(_base(request) + target, status_code=303)
        response.set_cookie(FLASH_COOKIE, sign_flash(flash_key, sentence),
                            httponly=True, samesite="strict")
        return response

    def refused() -> Response | None:
        if not read_only:
            return None
        return PlainTextResponse("403: this dashboard runs with --read-only: no actions",
                                 status_code=403)

    def home(request: Request) -> Response:
        return live(request, "overview.html", "_overview.html",
                    overview=views.overview(kernel))

    def jobs(request: Request) -> Response:
        flt = views.JobFilter.from_params(request.query_params)
        after = request.query_params.get("after") or None
        page = views.list_jobs(kernel.results, flt, after=after)
        base = _base(request)
        next_url = None
        if page.next_cursor is not None:
            next_url = f"{base}/jobs?" + urlencode({**flt.params(), "after": page.next_cursor})
        every_time = {k: v for k, v in flt.params().items() if k != "since"}
        return render(request, "jobs.html", page=page, filter=flt, next_url=next_url,
                      first_url=f"{base}/jobs?" + urlencode(flt.params()) if after else None,
                      clear_url=f"{base}/jobs?" + urlencode(every_time),
                      statuses=views.RECORD_STATES,
                      bulk_actions=[a for a, states in actions.ACTIONS.items()
                                    if flt.status in states])

    def queued_jobs(request: Request) -> Response:
        flt = queued.QueuedFilter.from_params(request.query_params)
        after = request.query_params.get("after") or None
        page = queued.list_queued(kernel.queue, flt, after=after)
        workers = workers_of(kernel, page.jobs)
        base, params = _base(request), flt.params()

        def url(query: list[tuple[str, str]]) -> str:
            return f"{base}/queued" + (f"?{urlencode(query)}" if query else "")

        return live(request, "queued.html", "_queued.html", listing=page, filter=flt,
                    workers=workers,
                    refresh_secs=queued.refresh_secs(page.took_secs),
                    after=after, states=list(queued.STATES), queue_backend=kernel.queue.name,
                    self_url=url([*params, ("after", after)] if after else params),
                    next_url=(None if page.next_cursor is None
                              else url([*params, ("after", page.next_cursor)])),
                    first_url=url(params) if after else None)

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if (legacy := _legacy_action(request, job_id)) is not None:
            # 308 keeps the method and body: a confirmation form rendered before the move
            # still posts (the Guard checked its CSRF token on the way in, and checks again)
            return RedirectResponse(action_url(_base(request), *legacy), status_code=308)
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("405: a job's page takes no POST; its actions are at "
                                     "/actions/<action>/<id>", status_code=405)
        if views.impossible_job_id(job_id):
            detail = views.JobDetail(job_id=job_id, status=JobStatus.UNKNOWN, record=None)
        else:
            detail = await run_in_threadpool(views.job_detail, kernel, job_id)
        full = bool(request.query_params.get("full"))
        if detail.status is JobStatus.UNKNOWN:
            return render(request, "job.html", detail=detail, full=full, status_code=404)
        return render(request, "job.html", detail=detail, full=full)

    async def job_action(request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in actions.ACTIONS:
            return PlainTextResponse(f"404: no action {action!r}; use one of "
                                     f"{', '.join(actions.ACTIONS)}", status_code=404)
        if (denied := refused()) is not None:
            return denied
        if views.impossible_job_id(job_id):
            return PlainTextResponse("404: no job has this id: a job id never holds a NUL "
                                     "character (\\x00)", status_code=404)
        if request.method == "GET":
            detail = await run_in_threadpool(views.job_detail, kernel, job_id)
            if detail.status is JobStatus.UNKNOWN:  # as its page: nothing to confirm
                return render(request, "job.html", detail=detail, full=False,
                              status_code=404)
            return render(request, "confirm.html", action=action, detail=detail, filter=None,
                          matching=None)
        form = await request.form()
        run = actions.parse_run(str(form.get("run") or ""), required=action == "retry")
        _ok, sentence = await run_in_threadpool(actions.act, kernel, action, job_id, run)
        return done(request, job_url("", job_id), sentence)

    async def bulk_action(request: Request) -> Response:
        action = request.path_params["action"]
        if (denied := refused()) is not None:
            return denied
        if request.method == "GET":
            flt = views.JobFilter.from_params(request.query_params)
            actions.check_bulk_filter(action, flt)
            found, more = await run_in_threadpool(actions.matching, kernel, flt)
            found, steps = await run_in_threadpool(actions.without_steps, kernel, action, found)
            return render(request, "confirm.html", action=action, detail=None, filter=flt,
                          matching=(len(found), more), confirmed=found, steps=steps,
                          confirmed_field=actions.encode_confirmed(found))
        form = await request.form()
        fields = {k: str(v) for k, v in form.items()}
        flt = views.JobFilter.from_params(fields)
        confirmed = actions.decode_confirmed(fields.get("jobs"))
        report = await run_in_threadpool(actions.bulk, kernel, action, flt, confirmed,
                                         fields.get("more") == "1")
        return done(request, "/jobs?" + urlencode(flt.params()), report.summary())

    def workers(request: Request) -> Response:
        return live(request, "workers.html", "_workers.html",
                    workers=views.live_workers(kernel.results),
                    result_backend=kernel.results.name)

    def schedules(request: Request) -> Response:
        return live(request, "schedules.html", "_schedules.html",
                    schedules=views.schedules(kernel))

    def bad_request(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", status_code=400, message=str(exc),
                      heading="Bad request", retry_secs=None)

    def unavailable(request: Request, exc: Exception) -> Response:
        """A backend's error (the store is down, refuses the password, is busy): a 503
        that names it in the backend's own words, never a traceback. An htmx refresh gets
        the sentence alone, which ``dashboard.js`` shows over the section it could not
        refresh; a full page reloads itself every :data:`RETRY_SECS` seconds (a GET), so
        it recovers with the store."""
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        message = f"{type(exc).__name__}: {text or 'no message'}"
        log.warning("dashboard: %s %s: %s", request.method, request.url.path, message)
        if request.headers.get("hx-request"):
            return PlainTextResponse(views.printable(message), status_code=503)
        return render(request, "error.html", status_code=503, message=message,
                      heading="The job store cannot be read",
                      retry_secs=RETRY_SECS if request.method in ("GET", "HEAD") else None)

    routes = [
        Route("/", home),
        Route("/jobs", jobs),
        Route("/jobs/{job_id:path}", job, methods=["GET", "POST"]),  # POST: _legacy_action
        Route("/actions/{action:str}/{job_id:path}", job_action, methods=["GET", "POST"]),
        Route("/bulk/{action:str}", bulk_action, methods=["GET", "POST"]),
        Route("/queued", queued_jobs),
        Route("/workers", workers),
        Route("/schedules", schedules),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes,
                     middleware=[Middleware(Guard, token=token, allowed_hosts=hosts)],
                     exception_handlers={views.BadRequest: bad_request,
                                         NuvomError: unavailable})
