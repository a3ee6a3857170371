"""The dashboard's web app (Starlette + Jinja2, htmx served from this package).

Stable URLs, so an alert can link to them: ``/`` overview, ``/jobs`` (query ``status``,
``task``, ``queue``, and ``after`` for the next page), ``/jobs/<id>``, ``/workers``. Actions
are a confirmation page (GET) and a POST carrying the CSRF token; the POST reports what it
did on the page it redirects to. Templates autoescape everything: arguments, results and
errors are data, never markup.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nuvom_kernel.models import JobStatus
from nuvom_plugins_dashboard import actions, views
from nuvom_plugins_dashboard.security import CSRF_FIELD, Guard

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent
FLASH_COOKIE = "nuvom_flash"
#: Seconds between two refreshes of the live parts of a page.
REFRESH_SECS = 5


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="milliseconds")


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


def create_app(kernel: Any, *, token: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard over ``kernel``'s backends.

    :param token: required from every client when set (see :mod:`.security`).
    :param read_only: hide every action and refuse every POST.
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    templates = Jinja2Templates(env=env)
    env.filters.update(when=_when, age=_age)
    env.globals.update(duration=_duration, read_only=read_only, csrf_field=CSRF_FIELD,
                       refresh_secs=REFRESH_SECS, windows=views.WINDOWS,
                       job_url=lambda job_id: "/jobs/" + quote(job_id, safe=""),
                       bulk_limit=actions.BULK_LIMIT)

    def render(request: Request, name: str, status_code: int = 200, **context: Any
               ) -> Response:
        flash = request.cookies.get(FLASH_COOKIE)
        flash = unquote(flash) if flash is not None else None
        context.update(csrf=request.state.csrf, flash=flash, path=request.url.path,
                       now=time.time())
        response = templates.TemplateResponse(request, name, context,
                                              status_code=status_code)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE)
        return response

    def done(target: str, sentence: str) -> Response:
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(FLASH_COOKIE, quote(sentence), httponly=True, samesite="strict")
        return response

    def refused() -> Response | None:
        if not read_only:
            return None
        return PlainTextResponse("403: this dashboard runs with --read-only: no actions",
                                 status_code=403)

    def home(request: Request) -> Response:
        data = views.overview(kernel)
        if request.headers.get("hx-request"):
            return render(request, "_overview.html", overview=data)
        return render(request, "overview.html", overview=data)

    def jobs(request: Request) -> Response:
        flt = views.JobFilter.from_params(request.query_params)
        after = request.query_params.get("after") or None
        page = views.list_jobs(kernel.results, flt, after=after)
        next_url = None
        if page.next_cursor is not None:
            next_url = "/jobs?" + urlencode({**flt.params(), "after": page.next_cursor})
        return render(request, "jobs.html", page=page, filter=flt, next_url=next_url,
                      first_url="/jobs?" + urlencode(flt.params()) if after else None,
                      statuses=[s for s in JobStatus if s is not JobStatus.UNKNOWN],
                      bulk_actions=[a for a, states in actions.ACTIONS.items()
                                    if flt.status in states])

    def job(request: Request) -> Response:
        detail = views.job_detail(kernel, request.path_params["job_id"])
        if detail.status is JobStatus.UNKNOWN:
            return render(request, "job.html", detail=detail, status_code=404)
        return render(request, "job.html", detail=detail)

    async def job_action(request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in actions.ACTIONS:  # an id with a slash in it
            if request.method != "GET":
                return PlainTextResponse(f"404: no action {action!r}", status_code=404)
            request.path_params["job_id"] = f"{job_id}/{action}"
            return await run_in_threadpool(job, request)
        if (denied := refused()) is not None:
            return denied
        if request.method == "GET":
            detail = await run_in_threadpool(views.job_detail, kernel, job_id)
            return render(request, "confirm.html", action=action, detail=detail, filter=None,
                          matching=None)
        _ok, sentence = await run_in_threadpool(actions.act, kernel, action, job_id)
        return done("/jobs/" + quote(job_id, safe=""), sentence)

    async def bulk_action(request: Request) -> Response:
        action = request.path_params["action"]
        if (denied := refused()) is not None:
            return denied
        if request.method == "GET":
            flt = views.JobFilter.from_params(request.query_params)
            actions.check_bulk_filter(action, flt)
            ids, more = await run_in_threadpool(actions.matching, kernel, flt)
            return render(request, "confirm.html", action=action, detail=None, filter=flt,
                          matching=(len(ids), more))
        form = await request.form()
        flt = views.JobFilter.from_params({k: str(v) for k, v in form.items()})
        report = await run_in_threadpool(actions.bulk, kernel, action, flt)
        return done("/jobs?" + urlencode(flt.params()), report.summary())

    def workers(request: Request) -> Response:
        return render(request, "workers.html", workers=views.live_workers(kernel.results),
                      result_backend=kernel.results.name)

    def schedules(request: Request) -> Response:
        return render(request, "schedules.html", schedules=views.schedules(kernel))

    def bad_request(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", status_code=400, message=str(exc))

    routes = [
        Route("/", home),
        Route("/jobs", jobs),
        Route("/jobs/{job_id:path}/{action:str}", job_action, methods=["GET", "POST"]),
        Route("/jobs/{job_id:path}", job),
        Route("/bulk/{action:str}", bulk_action, methods=["GET", "POST"]),
        Route("/workers", workers),
        Route("/schedules", schedules),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token)],
                     exception_handlers={views.BadRequest: bad_request})
