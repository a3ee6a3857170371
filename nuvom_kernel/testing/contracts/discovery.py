"""``DiscovererContract``: what every task discoverer must do, as pytest tests.

Subclass it and override one fixture returning a ready discoverer::

    class TestMyDiscoverer(DiscovererContract):
        @pytest.fixture
        def discoverer(self):
            return MyDiscoverer()

Each test writes a small project under ``tmp_path`` and checks the :class:`TaskRef` values
found: where each task is (module, file, line), its registry name and literal options, that
nothing was imported, that a broken file is reported without stopping the scan, and that the
incremental ``state`` never hides a change.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef

__all__ = ["DiscovererContract"]

_TASKS = '''\
from nuvom_kernel import task


@task
def add(a, b):
    """Add two numbers.

    Longer text.
    """
    return a + b


@task(retries=2, queue="math", timeout_secs=1.5)
def mul(a, b):
    return a * b


def helper():
    return add(1, 2)
'''

_JOBS = '''\
import nuvom_kernel


@nuvom_kernel.task(name="pkg.send")
async def send_email(to):
    return to
'''


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


class DiscovererContract:
    """Contract tests for :class:`~nuvom_kernel.discovery.Discoverer` implementations."""

    @pytest.fixture
    def discoverer(self) -> Discoverer:
        """Override: return a ready discoverer instance."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the discoverer fixture: return "
            "YourDiscoverer() (see docs/writing_plugins.md)")

    @pytest.fixture
    def project(self, tmp_path: Path) -> Path:
        root = tmp_path / "project"
        root.mkdir()
        return root

    def _write(self, root: Path, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text), encoding="utf-8")

    def _run(self, discoverer: Discoverer, root: Path, **kwargs: object
             ) -> tuple[DiscoveryReport, dict[str, object]]:
        report, state = discoverer.discover(root, **kwargs)  # type: ignore[arg-type]
        assert isinstance(report, DiscoveryReport) and isinstance(state, dict)
        assert all(isinstance(t, TaskRef) for t in report.tasks)
        return report, state

    def _by_name(self, report: DiscoveryReport) -> dict[str, TaskRef]:
        names = [t.name for t in report.tasks]
        assert len(names) == len(set(names)), f"a task was reported twice: {sorted(names)}"
        return {t.name: t for t in report.tasks}

    def test_finds_tasks_with_their_location(self, discoverer: Discoverer, project: Path
                                             ) -> None:
        self._write(project, {"tasks.py": _TASKS, "pkg/__init__.py": "", "pkg/jobs.py": _JOBS})
        found = self._by_name(self._run(discoverer, project)[0])
        assert set(found) == {"add", "mul", "pkg.send"}
        add, mul, send = found["add"], found["mul"], found["pkg.send"]
        assert (add.module, add.file, add.line) == ("tasks", "tasks.py",
                                                     _line_of(_TASKS, "def add"))
        assert (mul.module, mul.line) == ("tasks", _line_of(_TASKS, "def mul"))
        assert (send.module, send.file, send.line) == ("pkg.jobs", "pkg/jobs.py",
                                                       _line_of(_JOBS, "async def"))
        assert send.func_name == "send_email" and add.func_name == "add"

    def test_custom_name_and_literal_options(self, discoverer: Discoverer, project: Path
                                             ) -> None:
        self._write(project, {"tasks.py": _TASKS, "pkg/__init__.py": "", "pkg/jobs.py": _JOBS})
        found = self._by_name(self._run(discoverer, project)[0])
        assert dict(found["mul"].options) == {"retries": 2, "queue": "math",
                                              "timeout_secs": 1.5}
        assert "name" not in found["pkg.send"].options, "name= is the task name, not an option"
        assert dict(found["add"].options) == {}

    def test_async_tasks_are_flagged(self, discoverer: Discoverer, project: Path) -> None:
        self._write(project, {"tasks.py": _TASKS, "pkg/__init__.py": "", "pkg/jobs.py": _JOBS})
        found = self._by_name(self._run(discoverer, project)[0])
        assert found["pkg.send"].is_async is True and found["add"].is_async is False

    def test_description_is_the_docstring_first_line(self, discoverer: Discoverer,
                                                     project: Path) -> None:
        self._write(project, {"tasks.py": _TASKS})
        found = self._by_name(self._run(discoverer, project)[0])
        assert found["add"].description == "Add two numbers."
        assert found["mul"].description is None

    def test_does_not_import_code(self, discoverer: Discoverer, project: Path) -> None:
        sentinel = project.parent / "imported.txt"
        self._write(project, {"side_effects.py": f'''\
            from pathlib import Path
            from nuvom_kernel import task

            @task
            def harmless():
                return 1

            Path({str(sentinel)!r}).write_text("imported")
            raise SystemExit("importing this module is forbidden")
            '''})
        found = self._by_name(self._run(discoverer, project)[0])
        assert not sentinel.exists(), "discovery must read source, never import it"
        assert set(found) == {"harmless"}

    def test_unparsable_file_is_reported_not_fatal(self, discoverer: Discoverer,
                                                   project: Path) -> None:
        self._write(project, {"broken.py": "def oops(:\n    pass\n", "tasks.py": _TASKS})
        report, _ = self._run(discoverer, project)
        assert {"add", "mul"} <= set(self._by_name(report))
        assert any("broken.py" in e for e in report.errors), \
            f"the broken file must be named in report.errors, got {report.errors}"

    def test_ignores_other_decorators_and_plain_functions(self, discoverer: Discoverer,
                                                          project: Path) -> None:
        self._write(project, {"views.py": '''\
            import functools
            from nuvom_kernel import task

            app = object()

            @app.route("/")
            def index():
                return "hi"

            @functools.cache
            def cached():
                return task

            def plain():
                return task(plain)
            '''})
        report, _ = self._run(discoverer, project)
        assert report.tasks == []

    def test_exclude_patterns(self, discoverer: Discoverer, project: Path) -> None:
        self._write(project, {"tasks.py": _TASKS, "skipped/more.py": _JOBS})
        found = self._by_name(self._run(discoverer, project, exclude=["skipped/*"])[0])
        assert set(found) == {"add", "mul"}

    def test_empty_project(self, discoverer: Discoverer, project: Path) -> None:
        report, _ = self._run(discoverer, project)
        assert report.tasks == [] and report.errors == []

    def test_state_never_hides_a_change(self, discoverer: Discoverer, project: Path) -> None:
        self._write(project, {"tasks.py": _TASKS, "pkg/__init__.py": "", "pkg/jobs.py": _JOBS})
        first, state = self._run(discoverer, project)
        state = json.loads(json.dumps(state))  # it is stored in the JSON manifest
        again, state = self._run(discoverer, project, state=state)
        assert sorted(map(repr, again.tasks)) == sorted(map(repr, first.tasks)), \
            "a run with the previous state must find the same tasks"
        self._write(project, {"tasks.py": _TASKS + '\n\n@task\ndef div(a, b):\n    return a/b\n'})
        (project / "pkg" / "jobs.py").unlink()
        changed, _ = self._run(discoverer, project, state=json.loads(json.dumps(state)))
        assert set(self._by_name(changed)) == {"add", "mul", "div"}, \
            "an edited file must be re-read and a deleted one forgotten"
