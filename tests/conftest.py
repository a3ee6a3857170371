"""Kernel test fixtures: isolated kernels on real backends, a project directory per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import E2E_BACKENDS, SERVER_BACKENDS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: The first part of every project's namespace in this run. Not the plugins' ``nuvom-test-``
#: prefix: a namespace with that prefix is removed when the process that created it exits,
#: and here that may be a worker the test started and stopped while the test still reads
#: the queue. This run removes its own namespaces when it ends
#: (:func:`_server_namespaces_removed`), and never another run's.
E2E_NAMESPACE_PREFIX = f"nuvom-e2e-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as cwd, importable, with task modules written by tests.

    With a server backend installed (Redis, PostgreSQL), the project gets a namespace of its
    own in ``.nuvom_plugins.toml`` — read alike by in-process kernels and by the workers
    the test starts there — so tests sharing one server never see each other's jobs.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in list(os.environ):
        if key.startswith("NUVOM_"):
            monkeypatch.delenv(key)
    if SERVER_BACKENDS:
        (tmp_path / ".nuvom_plugins.toml").write_text(
            f'[settings]\nnamespace = "{E2E_NAMESPACE_PREFIX}{uuid.uuid4().hex[:12]}"\n')
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _server_namespaces_removed() -> Iterator[None]:
    """Remove this run's schemas and keys from the shared servers once every test is done:
    by then no worker of a test is left to use them."""
    yield
    if "postgres" in SERVER_BACKENDS:
        import psycopg
        from psycopg import sql

        from nuvom_plugins_postgres.settings import PostgresSettings, schema_name

        settings = PostgresSettings()
        prefix = schema_name(settings.schema, E2E_NAMESPACE_PREFIX)
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            names = [row[0] for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE left(nspname, %s) = %s",
                (len(prefix), prefix))]
            for name in names:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    if "redis" in SERVER_BACKENDS:
        from nuvom_plugins_redis.connection import delete_prefix
        from nuvom_plugins_redis.settings import RedisSettings

        defaults = RedisSettings()
        delete_prefix(defaults.url, f"{defaults.key_prefix}:{E2E_NAMESPACE_PREFIX}")


@pytest.fixture
def make_kernel(project: Path) -> Iterator[Callable[..., Kernel]]:
    kernels: list[Kernel] = []

    def make(backend: str = "memory", result_backend: str | None = None, **env: str) -> Kernel:
        environ = {"NUVOM_QUEUE_BACKEND": backend,
                   "NUVOM_RESULT_BACKEND": result_backend or backend,
                   "NUVOM_RETRY_DELAY_SECS": "0.05", **env}
        kernel = Kernel(root=project, environ=environ)
        kernels.append(kernel)
        return kernel

    yield make
    for kernel in kernels:
        kernel.close()


@pytest.fixture(params=E2E_BACKENDS)
def kernel(request: pytest.FixtureRequest, make_kernel: Callable[..., Kernel]
           ) -> Iterator[Kernel]:
    """A kernel on each installed backend, installed as this process's kernel."""
    k = make_kernel(request.param)
    with use_kernel(k):
        yield k


def _workflow_kernel(backend: str, project: Path, make_kernel: Callable[..., Kernel]
                     ) -> Iterator[Kernel]:
    from tests import test_workflows as wf
    from tests.helpers import write_module

    if backend != "memory" and backend not in wf.BACKENDS:
        pytest.skip(f"the {backend} backend is not installed")
    write_module(project, "wf_tasks", wf.TASKS)
    k = make_kernel(backend)
    with use_kernel(k):
        yield k


@pytest.fixture(params=["memory", "sqlite", "file"])
def workflow_kernel(request: pytest.FixtureRequest, project: Path,
                    make_kernel: Callable[..., Kernel]) -> Iterator[Kernel]:
    """A kernel on each backend that runs workflows, with the workflow tests' tasks
    (``wf_tasks``) in the project, installed as this process's kernel."""
    yield from _workflow_kernel(request.param, project, make_kernel)


@pytest.fixture(params=["sqlite", "file"])
def stored_workflow_kernel(request: pytest.FixtureRequest, project: Path,
                           make_kernel: Callable[..., Kernel]) -> Iterator[Kernel]:
    """:func:`workflow_kernel` on the backends whose store is a file, which a test edits
    from outside as a hand edit or a disk fault would."""
    yield from _workflow_kernel(request.param, project, make_kernel)


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    from nuvom_kernel.registry import REGISTRY

    REGISTRY.clear()
    yield
    REGISTRY.clear()
