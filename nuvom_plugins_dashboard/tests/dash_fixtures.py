"""Fixtures (imported by each test module: a test folder of a distribution holds no
conftest.py, whose module name would collide with the other distributions' own): a project
directory on the SQLite backends (a real file), its kernel, and the dashboard app over it
through Starlette's TestClient, which talks to it as ``http://127.0.0.1`` (a token-less
dashboard answers loopback names only; TestClient's default ``testserver`` is not one)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_plugins_dashboard import create_app

#: What the clients call the dashboard (the ``Host`` they send).
BASE_URL = "http://127.0.0.1"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as cwd, importable, with no ``NUVOM_*`` from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in list(os.environ):
        if key.startswith("NUVOM_"):
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def kernel(project: Path) -> Iterator[Kernel]:
    k = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                      "NUVOM_RESULT_BACKEND": "sqlite"})
    with use_kernel(k):
        yield k
    k.close()


@pytest.fixture
def make_client(kernel: Kernel) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**options: object) -> TestClient:
        client = TestClient(create_app(kernel, **options), base_url=BASE_URL,
                            follow_redirects=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
