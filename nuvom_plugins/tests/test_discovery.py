"""The AST discoverer on small real trees written into tmp_path."""

from __future__ import annotations

import json
import textwrap
import threading
from pathlib import Path

import pytest

from nuvom_kernel.discovery import DiscoveryReport, TaskRef
from nuvom_plugins.discovery import AstDiscoverer, plugin, scanner


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def run(root: Path, **kw: object) -> tuple[DiscoveryReport, dict[str, object]]:
    return AstDiscoverer().discover(root, **kw)  # type: ignore[arg-type]


def by_name(report: DiscoveryReport) -> dict[str, TaskRef]:
    return {t.name: t for t in report.tasks}


def test_every_spelling_of_nuvoms_decorator(tmp_path: Path) -> None:
    write(tmp_path, {
        "app/__init__.py": "",
        "app/plain.py": """
            from nuvom_kernel import task

            @task
            def add(a, b):
                '''Add two numbers.

                More text.'''
                return a + b

            @task(retries=3, timeout_secs=2.5, name="mul.v2", tags=("math", "fast"))
            async def mul(a, b):
                return a * b
        """,
        "app/aliases.py": """
            import nuvom_kernel
            import nuvom_kernel as nv
            from nuvom_kernel import task as job
            from nuvom_kernel.task import task as deep
            later = nv.task

            @nuvom_kernel.task
            def f1(): ...

            @nv.task(queue="mail")
            def f2(): ...

            @job
            def f3(): ...

            @deep()
            def f4(): ...

            @later
            def f5(): ...
        """,
        "app/__init__extra.py": "from nuvom_kernel import *\n@task\ndef star(): ...\n",
    })
    report, _ = run(tmp_path)
    tasks = by_name(report)
    assert sorted(tasks) == ["add", "f1", "f2", "f3", "f4", "f5", "mul.v2", "star"]
    add = tasks["add"]
    assert (add.module, add.file, add.line, add.func_name) == ("app.plain", "app/plain.py",
                                                               5, "add")
    assert add.description == "Add two numbers." and not add.is_async and add.options == {}
    mul = tasks["mul.v2"]
    assert mul.is_async and mul.func_name == "mul" and mul.line == 12
    assert dict(mul.options) == {"retries": 3, "timeout_secs": 2.5, "tags": ["math", "fast"]}
    assert dict(tasks["f2"].options) == {"queue": "mail"}
    assert report.errors == [] and report.warnings == []


def test_other_libraries_task_is_not_picked_up(tmp_path: Path) -> None:
    write(tmp_path, {
        "celery_app.py": """
            from celery import Celery, task
            import nuvom_kernel  # mentioned, but not used for these
            app = Celery()

            @app.task
            def c1(): ...

            @app.task(bind=True)
            def c2(self): ...

            @task
            def c3(): ...
        """,
        "local.py": """
            from nuvom_kernel import task
            def task(fn):  # shadows the import from here on
                return fn

            @task
            def not_nuvom(): ...
        """,
        "rebound.py": """
            from nuvom_kernel import task
            task = lambda f: f

            @task
            def also_not(): ...
        """,
        "nameonly.py": """
            def task(f):
                return f

            @task
            def plain(): ...
        """,
    })
    report, _ = run(tmp_path)
    assert report.tasks == []


def test_methods_and_nested_functions_are_rejected_with_warnings(tmp_path: Path) -> None:
    write(tmp_path, {"m.py": """
        from nuvom_kernel import task

        class Service:
            @task
            def method(self): ...

        def outer():
            @task
            def inner(): ...

        @task
        def ok(): ...

        class Conditional:
            if True:
                @task
                async def guarded(self): ...

                def helper(self):
                    @task
                    def deeper(): ...

        match 1:
            case 1:
                def in_match():
                    @task
                    def matched(): ...
    """})
    report, _ = run(tmp_path)
    assert [t.name for t in report.tasks] == ["ok"]
    assert any(w.startswith("m.py:6:") and "method 'method'" in w for w in report.warnings)
    assert any(w.startswith("m.py:10:") and "'inner'" in w for w in report.warnings)
    assert any("method 'guarded' of class 'Conditional'" in w for w in report.warnings)
    assert any("'deeper' inside class 'Conditional'" in w for w in report.warnings)
    assert any("'matched' inside function 'in_match'" in w for w in report.warnings)
    assert len(report.warnings) == 5


def test_non_literal_options_are_skipped_with_a_warning_each(tmp_path: Path) -> None:
    """An option held in a variable was dropped without a word (``concurrency=LIMIT``: the
    workers' first claims ignored the limit); each one is now named, with the fix."""
    write(tmp_path, {"t.py": """
        from nuvom_kernel import task
        QUEUE = "x"
        LIMIT = 1
        opts = {}

        @task(retries=2, queue=QUEUE, timeout_secs=1 + 1, concurrency=LIMIT,
              description="From option", **opts)
        def t():
            '''From docstring.'''
    """})
    report, _ = run(tmp_path)
    [ref] = report.tasks
    assert dict(ref.options) == {"retries": 2, "description": "From option"}
    assert ref.description == "From option"
    assert any("**options" in w for w in report.warnings)
    for option in ("queue", "timeout_secs", "concurrency"):
        assert any(w.startswith(f"t.py:7: task 't': {option}= is not a literal") and
                   "Write it as a literal" in w for w in report.warnings), report.warnings
    assert len(report.warnings) == 4


def test_a_task_whose_name_is_not_a_literal_is_left_out_with_a_warning(tmp_path: Path
                                                                      ) -> None:
    """``@task(name=NAME)`` was recorded under the function's name, a task workers do not
    have: every tick of its schedule failed. Its name cannot be read, so it is not recorded."""
    write(tmp_path, {"t.py": """
        from nuvom_kernel import task, every
        NAME = "reports.daily"

        @task(name=NAME, schedule=every(seconds=1), concurrency=LIMIT)
        def daily(): ...

        @task(name="reports.weekly")
        def weekly(): ...
    """})
    report, _ = run(tmp_path)
    assert [t.name for t in report.tasks] == ["reports.weekly"]
    [warning] = report.warnings
    assert warning.startswith("t.py:5: task 'daily': name= is not a string literal")
    assert "left out of the manifest" in warning and 'name="..."' in warning


def test_a_fallback_decorator_in_another_branch_does_not_hide_nuvoms(tmp_path: Path
                                                                    ) -> None:
    """Optional-dependency code binds ``task`` twice; Python binds Nuvom's (it is installed
    where discovery runs), but the branch walked last won and every task was missed."""
    write(tmp_path, {
        "try_except.py": """
            try:
                from nuvom_kernel import task, every
            except ImportError:  # nuvom not installed: run inline
                def task(fn=None, **options):
                    return fn if fn is not None else (lambda f: f)
                every = None

            @task(schedule=every(minutes=5))
            def nightly_sync(): ...
        """,
        "if_else.py": """
            from nuvom_kernel import task as _nuvom_task
            if _nuvom_task is not None:
                task = _nuvom_task
            else:
                task = lambda fn: fn

            @task
            def other(): ...
        """,
        "match_case.py": """
            import sys
            match sys.platform:
                case "emscripten":
                    def task(fn): return fn
                case _:
                    from nuvom_kernel import task

            @task
            def matched(): ...
        """,
        "not_nuvom.py": """
            try:
                from celery import task
            except ImportError:
                def task(fn): return fn

            @task
            def celery_only(): ...
        """,
    })
    report, _ = run(tmp_path)
    tasks = by_name(report)
    assert sorted(tasks) == ["matched", "nightly_sync", "other"], report.warnings
    assert tasks["nightly_sync"].options["schedule"]["every"] == 300
    assert report.warnings == [] and report.errors == []


def test_schedules_are_recorded_so_workers_need_not_import(tmp_path: Path) -> None:
    write(tmp_path, {"t.py": """
        import nuvom_kernel as nk
        from nuvom_kernel import task, cron, every
        ZONE = "Europe/Paris"

        @task(schedule=cron("0 9 * * MON-FRI", tz="Europe/Paris", args=(1,)), catch_up="all")
        def report(): ...

        @task(schedule=nk.every(minutes=1, seconds=30), overlap="skip", concurrency=2)
        def poll(): ...

        @task(schedule="*/5 * * * *")
        def five(): ...

        @task(schedule=every(days=1, hours=1))
        def daily(): ...

        @task(schedule=cron("0 9 * * *", tz=ZONE))
        def dynamic(): ...

        NIGHTLY = cron("0 3 * * *")

        @task(schedule=NIGHTLY)
        def held(): ...
    """})
    report, _ = run(tmp_path)
    tasks = by_name(report)
    assert dict(tasks["report"].options) == {
        "catch_up": "all",
        "schedule": {"cron": "0 9 * * MON-FRI", "tz": "Europe/Paris", "args": [1],
                     "kwargs": {}}}
    assert dict(tasks["poll"].options) == {
        "overlap": "skip", "concurrency": 2,
        "schedule": {"every": 90.0, "args": [], "kwargs": {}}}
    assert dict(tasks["daily"].options) == {  # days: read statically as import reads it
        "schedule": {"every": 90_000, "args": [], "kwargs": {}}}
    assert dict(tasks["five"].options) == {"schedule": "*/5 * * * *"}
    assert dict(tasks["dynamic"].options) == {}
    assert any("'dynamic'" in w and "schedule=" in w for w in report.warnings)
    # A schedule held in a variable was skipped without a word: workers never fired it
    # unless something imported the module.
    assert dict(tasks["held"].options) == {}
    assert any("'held'" in w and "workers find it only once the module is imported" in w
               for w in report.warnings), report.warnings


INVALID_SCHEDULES = """\
from nuvom_kernel import task, cron, every

@task(schedule="61 * * * *")
def bad_min(): ...

@task(schedule=cron("0 9 * * *", tz="Europe/Pariss"))
def bad_zone(): ...

@task(schedule=every(seconds=-5))
def bad_every(): ...

@task(schedule=30)
def bad_type(): ...

@task(schedule="0 */5 * * * *")
def quartz(): ...

@task(name="never.v2", schedule=cron("0 0 31 2 *"))
def never(): ...

@task(schedule="* * * * *", catch_up="some")
def bad_policy(): ...

@task(schedule=every(seconds="5"))
def text_every(): ...

@task(schedule="* * * * *", catch_up_window_secs=1e999)
def endless_window(): ...

@task(schedule=every(minutes=5), overlap="skip", catch_up="all")
def fine(): ...
"""


def test_invalid_schedule_literals_warn_naming_file_task_and_problem(tmp_path: Path) -> None:
    """Each is refused by the workers (and by @task on import): discovery says so, where,
    and what is wrong, instead of recording it silently."""
    write(tmp_path, {"jobs/t.py": INVALID_SCHEDULES})
    report, _ = run(tmp_path)
    lines = INVALID_SCHEDULES.splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    expected = {
        "bad_min": ("schedule=\"61", "invalid cron expression '61 * * * *'"),
        "bad_zone": ("Pariss", "unknown time zone 'Europe/Pariss'"),
        "bad_every": ("seconds=-5", "positive interval"),
        "bad_type": ("schedule=30", "schedule= takes cron(...), every(...) or a cron string, "
                                    "got 30"),
        "quartz": ("*/5 * * * *", "Seconds are not supported"),
        "never.v2": ("31 2", "never fires"),
        "bad_policy": ("some", "catch_up='some'"),
        # Both passed discovery: "5" became 5.0 (import fails), infinity was accepted.
        "text_every": ('seconds="5"', "every(seconds=...) takes a number, got '5'"),
        "endless_window": ("1e999", "catch_up_window_secs must be a number of seconds above 0"),
    }
    for task_name, (where, problem) in expected.items():
        found = [w for w in report.warnings if f"task {task_name!r}" in w]
        assert len(found) == 1, (task_name, report.warnings)
        assert found[0].startswith(f"jobs/t.py:{line_of(where)}: "), found[0]
        assert problem in found[0] and "Workers will not fire this schedule" in found[0]
    assert len(report.warnings) == len(expected)  # nothing about `fine`
    assert sorted(by_name(report)) == sorted([*expected, "fine"])  # the tasks are recorded


def test_options_import_would_refuse_are_warned_about_naming_task_and_problem(
        tmp_path: Path) -> None:
    """``@task(retry=3)`` and ``backoff="exp"`` were recorded with no word, and the first
    ``.delay()`` or worker import then failed."""
    write(tmp_path, {"t.py": """
        from nuvom_kernel import task

        @task(retry=3)
        def typo(): ...

        @task(backoff="exp", retries=2)
        def bad_backoff(): ...

        @task(retries=2, backoff="exponential", description="d", tags=["a"], queue="q")
        def fine(): ...
    """})
    report, _ = run(tmp_path)
    assert sorted(by_name(report)) == ["bad_backoff", "fine", "typo"]  # still recorded
    typo, backoff = report.warnings
    assert typo.startswith("t.py:4: task 'typo': @task() has no option 'retry' (did you "
                           "mean retries=?)"), typo
    assert backoff.startswith("t.py:7: task 'bad_backoff': @task(backoff=...) takes "
                              "'fixed' or 'exponential', got 'exp'"), backoff
    assert "Importing the module raises this error" in backoff


def test_a_name_or_tags_import_would_refuse_are_warned_about(tmp_path: Path) -> None:
    """``name=5`` was recorded under the function's name with no word, ``tags="email"``
    as its letters."""
    write(tmp_path, {"t.py": """
        from nuvom_kernel import task

        @task(name=5)
        def numbered(): ...

        @task(tags="email")
        def tagged(): ...
    """})
    report, _ = run(tmp_path)
    assert sorted(by_name(report)) == ["numbered", "tagged"]  # still recorded
    name, tags = report.warnings
    assert name.startswith("t.py:4: task 'numbered': @task(name=...) takes a non-empty "
                           "string, got 5. Importing the module raises this error"), name
    assert tags.startswith("t.py:7: task 'tagged': @task(tags=...) takes a list of "
                           "strings"), tags


def test_files_cached_before_schedules_were_checked_are_examined_again(tmp_path: Path
                                                                        ) -> None:
    write(tmp_path, {"t.py": INVALID_SCHEDULES})
    _, state = run(tmp_path)
    old = json.loads(json.dumps(state))
    for version in (1, 2):  # caches written without (some of) these warnings: not trusted
        old["version"] = version
        for entry in old["files"].values():
            entry["warnings"] = []
        report, _ = run(tmp_path, state=old)
        assert report.files_parsed == 1 and len(report.warnings) == 9


def test_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {
        "good.py": "from nuvom_kernel import task\n@task\ndef g(): ...\n",
        "pkg/broken.py": "from nuvom_kernel import task\n\n@task\ndef b(:\n    pass\n",
    })
    report, _ = run(tmp_path)
    assert [t.name for t in report.tasks] == ["g"]
    assert len(report.errors) == 1
    assert report.errors[0].startswith("pkg/broken.py:4: syntax error")


def test_a_file_that_stops_parsing_keeps_the_tasks_it_had(tmp_path: Path) -> None:
    """A typo saved in a task module, then a worker's start-up discovery, wrote a manifest
    without the module's tasks: their schedules stopped and their names were unknown."""
    source = "from nuvom_kernel import task\n@task(retries=2)\ndef b(): ...\n"
    write(tmp_path, {"pkg/mod.py": source})
    _, state = run(tmp_path)
    write(tmp_path, {"pkg/mod.py": source + "def broken(:\n"})
    report, state = run(tmp_path, state=state)
    assert [(t.name, t.options) for t in report.tasks] == [("b", {"retries": 2})]
    assert report.errors == ["pkg/mod.py:4: syntax error: invalid syntax; file skipped"]
    assert any("its task(s) b are kept" in w for w in report.warnings), report.warnings
    report, state = run(tmp_path, state=state)  # a warm run: nothing parsed, same answer
    assert report.files_parsed == 0 and [t.name for t in report.tasks] == ["b"]
    assert len(report.errors) == 1
    write(tmp_path, {"pkg/mod.py": "x = 1\n"})  # fixed, without the task: it goes
    report, _ = run(tmp_path, state=state)
    assert report.tasks == [] and report.errors == [] and report.warnings == []


def test_ignore_rules_and_default_skips(tmp_path: Path) -> None:
    one = "from nuvom_kernel import task\n@task\ndef {}(): ...\n"
    write(tmp_path, {
        "keep.py": one.format("keep"),
        "scripts/skipme.py": one.format("ignored_dir"),
        "gen/a_gen.py": one.format("ignored_glob"),
        "gen/b.py": one.format("kept_in_gen"),
        "gen/keep_gen.py": one.format("negated"),
        ".venv/lib/t.py": one.format("venv"),
        "myenv/lib/t.py": one.format("custom_venv"),
        "myenv/pyvenv.cfg": "home = /usr\n",
        "node_modules/x/t.py": one.format("node"),
        ".git/hooks/t.py": one.format("git"),
        "__pycache__/t.py": one.format("cache"),
        "tests/test_x.py": one.format("excluded_by_flag"),
        ".nuvomignore": "# comment\nscripts/\n*_gen.py\n!keep_gen.py\n",
    })
    report, _ = run(tmp_path, exclude=["tests"])
    assert sorted(t.name for t in report.tasks) == ["keep", "kept_in_gen", "negated"]
    report, _ = run(tmp_path, include=["gen/**"])
    assert sorted(t.name for t in report.tasks) == ["kept_in_gen", "negated"]


def test_incremental_runs_reparse_only_changed_files(tmp_path: Path) -> None:
    one = "from nuvom_kernel import task\n@task\ndef {}(): ...\n"
    write(tmp_path, {f"m{i}.py": one.format(f"t{i}") for i in range(5)})
    write(tmp_path, {"plain.py": "x = 1\n"})
    first, state = run(tmp_path)
    assert (first.files_scanned, first.files_parsed, len(first.tasks)) == (6, 6, 5)
    state = json.loads(json.dumps(state))  # it must survive the manifest's JSON
    second, state = run(tmp_path, state=state)
    assert second.files_parsed == 0 and len(second.tasks) == 5
    (tmp_path / "m2.py").write_text(one.format("renamed"))
    (tmp_path / "m4.py").unlink()
    third, state = run(tmp_path, state=state)
    assert third.files_parsed == 1
    assert sorted(t.name for t in third.tasks) == ["renamed", "t0", "t1", "t3"]


def test_fast_mode_parses_only_files_that_mention_nuvom(tmp_path: Path) -> None:
    write(tmp_path, {"t.py": "from nuvom_kernel import task\n@task\ndef t(): ...\n",
                     "plain.py": "x = 1\n", "broken_other.py": "def (\n"})
    report, _ = AstDiscoverer(parse_all=False).discover(tmp_path)
    assert (report.files_scanned, report.files_parsed) == (3, 1)
    assert [t.name for t in report.tasks] == ["t"] and report.errors == []
    report, _ = AstDiscoverer().discover(tmp_path)
    assert report.files_parsed == 3 and report.errors[0].startswith("broken_other.py:1:")


def test_errors_of_unchanged_files_are_still_reported(tmp_path: Path) -> None:
    write(tmp_path, {"bad.py": "import nuvom_kernel\ndef (\n"})
    _, state = run(tmp_path)
    report, _ = run(tmp_path, state=state)
    assert report.files_parsed == 0 and report.errors[0].startswith("bad.py:2:")


def test_links_to_outside_the_project_are_followed_once_and_inner_links_not(
        tmp_path: Path) -> None:
    """Python imports through a linked folder (``pkg -> ../shared/pkg``), so its tasks are
    the project's: they were skipped without a word. A link to a project file or folder is
    another name for something scanned already (it duplicated every task it held), and a
    link to the project itself, or a loop outside it, must end."""
    one = "from nuvom_kernel import task\n@task\ndef {}(): ...\n"
    project, shared = tmp_path / "project", tmp_path / "shared"
    write(shared, {"pkg/__init__.py": "", "pkg/jobs.py": one.format("shared_job")})
    write(project, {"app/__init__.py": "", "app/tasks.py": one.format("app_job")})
    (project / "pkg").symlink_to(shared / "pkg", target_is_directory=True)
    (project / "again").symlink_to(shared / "pkg", target_is_directory=True)  # seen: once
    (project / "app_alias").symlink_to(project / "app", target_is_directory=True)
    (project / "tasks_alias.py").symlink_to(project / "app" / "tasks.py")
    (project / "up").symlink_to(tmp_path, target_is_directory=True)  # holds the project
    (shared / "pkg" / "loop").symlink_to(shared, target_is_directory=True)
    report, _ = run(project)
    found = sorted((t.name, t.file) for t in report.tasks)
    assert found == [("app_job", "app/tasks.py"), ("shared_job", "again/jobs.py")] or \
        found == [("app_job", "app/tasks.py"), ("shared_job", "pkg/jobs.py")], found
    assert not any("also defined" in w for w in report.warnings), report.warnings


def test_duplicate_task_names_warn(tmp_path: Path) -> None:
    one = "from nuvom_kernel import task\n@task\ndef send(): ...\n"
    write(tmp_path, {"a.py": one, "b.py": one})
    report, _ = run(tmp_path)
    assert any("'send' is also defined at a.py:3" in w for w in report.warnings)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        run(tmp_path / "missing")


def test_plugin_registers_the_ast_discoverer() -> None:
    assert [c.name for c in plugin.nuvom_register_discoverers()] == ["ast"]


def test_parallel_parse_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    one = "from nuvom_kernel import task\n@task(retries={0})\ndef t{0}():\n    '''T{0}.'''\n"
    write(tmp_path, {f"pkg/m{i}.py": one.format(i) for i in range(12)})
    write(tmp_path, {"pkg/bad.py": "def (\n", "pkg/plain.py": "x = 1\n"})
    serial, serial_state = AstDiscoverer(workers=1).discover(tmp_path)
    pools: list[object] = []
    real = scanner.ProcessPoolExecutor

    def recording(*args: object, **kwargs: object) -> object:
        pools.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scanner, "ProcessPoolExecutor", recording)
    pooled, pooled_state = AstDiscoverer(workers=2, parallel_min_files=1).discover(tmp_path)
    if threading.active_count() == 1:
        assert pools, "a single-threaded process should parse in a pool"
    assert pooled.tasks == serial.tasks and pooled.errors == serial.errors
    assert pooled.files_parsed == serial.files_parsed == 14
    assert pooled_state == serial_state
