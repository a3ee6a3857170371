"""A NUL character in a filter, a page cursor or a job id is refused at the dashboard's
edge (400, or 404 for an id: no job id holds one). PostgreSQL refuses a NUL in any query
parameter, so it reached the store there and answered 500."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dash_fixtures import BASE_URL
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from starlette.testclient import TestClient

from nuvom_kernel.config import load_config
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_plugins_dashboard import create_app

#: URL -> the answer; ``%00`` is a NUL.
NUL_URLS = {
    "/jobs?task=%00": 400,
    "/jobs?queue=a%00": 400,
    "/jobs?status=failed&task=t%00": 400,
    "/jobs?after=1%7C%00": 400,
    "/jobs/%00": 404,
    "/jobs/a%00b": 404,
    "/actions/retry/a%00b": 404,
    "/actions/cancel/%00": 404,
    "/bulk/retry?status=failed&task=%00": 400,
}


def _check(client: TestClient) -> None:
    for url, status in NUL_URLS.items():
        response = client.get(url)
        assert response.status_code == status, (url, response.text[:300])
        assert "NUL" in response.text or "No backend knows this job id" in response.text, url
    token = client.cookies.get("nuvom_csrf")
    assert client.post("/actions/retry/a%00b", data={"csrf": token}).status_code == 404
    assert client.post("/bulk/retry", data={"csrf": token, "status": "failed",
                                            "task": "\x00"}).status_code == 400


def _refuses_nul(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, str) and "\x00" in a for a in (*args, *kwargs.values())):
            raise AssertionError(f"a NUL reached the backend: {method.__name__}{args}")
        return method(*args, **kwargs)

    return call


def test_a_nul_is_refused_before_any_backend_sees_it(kernel: Kernel, client: TestClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite (which stores a NUL) the stores are watched: no call may carry one."""
    for backend, names in ((kernel.queue, ("peek_state", "peek", "cancel")),
                           (kernel.results, ("get", "query"))):
        for name in names:
            monkeypatch.setattr(backend, name, _refuses_nul(getattr(backend, name)))
    _check(client)


def _postgres_installed() -> bool:
    pm = NuvomPluginManager()
    pm.load(load_config(Path(__file__).parent, {}), environ={})
    return "postgres" in set(pm.collect("nuvom_register_result_backends"))


@pytest.mark.skipif(not _postgres_installed(), reason="nuvom-plugins-postgres not installed")
def test_on_postgresql_a_nul_is_a_400_or_404_not_a_500(project: Path) -> None:
    # A test namespace: the plugin drops its schema when this process exits.
    kernel = Kernel(root=project, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
        "NUVOM_NAMESPACE": f"nuvom-test-dash-{uuid.uuid4().hex[:10]}"})
    try:
        with TestClient(create_app(kernel), base_url=BASE_URL,
                        follow_redirects=False) as pg_client:
            assert pg_client.get("/jobs").status_code == 200
            _check(pg_client)
    finally:
        kernel.close()
