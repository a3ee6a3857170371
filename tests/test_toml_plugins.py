"""A plugin that lives in the project, listed in ``.nuvom_plugins.toml`` (issue 12, point 2),
walked as docs/writing_plugins.md's last section says: the guide's queue code saved as
``my_queues.py``, the guide's toml, and the guide's commands run as the real ``nuvom``
console script from the project folder, without ``PYTHONPATH``.

Also from that walk: a result backend written from the guide's code passes its contract; a
target listed under the wrong capability key is told the right one; ``nuvom plugin test`` on a
toml-listed backend runs its registration checks; a contract failure names the promise.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import GUIDE, guide_block, guide_code, run_nuvom, stop_worker, user_env

TASKS = "from nuvom_kernel import task\n\n\n@task\ndef add(x, y):\n    return x + y\n"


@pytest.fixture
def toml_project(tmp_path: Path) -> Path:
    """The guide's project: tasks.py, my_queues.py (the guide's queue) and its toml."""
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "my_queues.py").write_text(guide_code("src/nuvom_plugins_listq/queue.py"))
    (tmp_path / ".nuvom_plugins.toml").write_text(
        guide_block("toml-project/.nuvom_plugins.toml", "toml"))
    return tmp_path


def _guide_steps() -> list[list[str]]:
    steps = [shlex.split(line, comments=True)
             for line in guide_block("toml-project commands", "bash").splitlines()]
    assert [s[:3] for s in steps] == [["nuvom", "plugin", "list"], ["nuvom", "plugin", "test"],
                                      ["nuvom", "runworker", "--workers"]], steps
    return steps


def test_every_command_loads_the_projects_plugin_without_pythonpath(toml_project: Path
                                                                    ) -> None:
    plugin_list, _, _ = _guide_steps()
    listed = run_nuvom([*plugin_list[1:], "--json"], toml_project)
    assert listed.returncode == 0, listed.stderr
    [row] = [p for p in json.loads(listed.stdout) if p["name"] == "my_queues:ListqQueue"]
    assert row["source"] == ".nuvom_plugins.toml"
    assert row["provides"] == {"queue_backend": ["listq"]}
    for command in (["config"], ["status"], ["list", "tasks"], ["plugin", "list"]):
        done = run_nuvom(command, toml_project)
        assert done.returncode != 2 and "ModuleNotFoundError" not in done.stderr, \
            f"nuvom {' '.join(command)}: {done.stderr}"


@pytest.mark.slow
def test_the_guides_commands_pass_the_contract_and_serve_a_worker(toml_project: Path
                                                                  ) -> None:
    _, plugin_test, runworker = _guide_steps()
    tested = run_nuvom(plugin_test[1:], toml_project, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    checks = [line.split() for line in tested.stdout.split("Contracts")[0].splitlines()
              if line.startswith("my_queues:ListqQueue")]
    assert len(checks) >= 4 and all("ok" in row for row in checks), tested.stdout
    assert any(row[1:4] == ["toml", "key", "'queue_backend'"] for row in checks)

    worker = subprocess.Popen([str(Path(sys.executable).parent / "nuvom"), *runworker[1:]],
                              cwd=toml_project, env=user_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        producer = subprocess.run(
            [sys.executable, "-c", "from tasks import add; print(add.delay(2, 3).get(timeout=30))"],
            cwd=toml_project, env=user_env(), capture_output=True, text=True, timeout=60,
            check=False)
        assert producer.returncode == 0, producer.stderr
        assert producer.stdout.strip() == "5"
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out
    assert "backend=listq" in out
    assert (toml_project / ".nuvom" / "my_queues.json").exists()


def test_a_target_under_the_wrong_key_is_told_the_right_one(toml_project: Path) -> None:
    toml = (toml_project / ".nuvom_plugins.toml").read_text()
    (toml_project / ".nuvom_plugins.toml").write_text(
        toml.replace('queue_backend = ["my_queues', 'result_backend = ["my_queues'))
    done = run_nuvom(["plugin", "list"], toml_project)
    assert done.returncode == 2
    assert "listed as a result_backend but does not implement " \
           "nuvom_register_result_backends()" in done.stderr
    assert 'list it under that key instead, e.g. queue_backend = ["my_queues:ListqQueue"]' \
        in done.stderr


@pytest.mark.slow
def test_the_guides_result_backend_passes_its_contract(tmp_path: Path) -> None:
    """`nuvom plugin new jsondir --kind result`, the guide's code, the contract; before the
    code, the stub's errors point at sections the guide has."""
    assert run_nuvom(["plugin", "new", "jsondir", "--kind", "result"], tmp_path).returncode == 0
    src = tmp_path / "nuvom-plugins-jsondir" / "src"
    target = "nuvom_plugins_jsondir.results:JsondirResults"
    stub = run_nuvom(["plugin", "test", target], src, timeout=300)
    assert stub.returncode == 1
    sections = {line.rsplit("section '", 1)[1].split("'")[0]
                for line in stub.stdout.splitlines() if "section '" in line}
    assert sections and all(f"\n### {s}\n" in GUIDE.read_text() for s in sections)

    (src / "nuvom_plugins_jsondir" / "results.py").write_text(
        guide_code("src/nuvom_plugins_jsondir/results.py"))
    tested = run_nuvom(["plugin", "test", target], src, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "\nPASSED: " in tested.stdout and ", 0 failed, 0 skipped" in tested.stdout
    (src / ".nuvom_plugins.toml").write_text(
        f'[settings]\nresult_backend = "jsondir"\n\n[plugins]\nresult_backend = ["{target}"]\n')
    status = run_nuvom(["status"], src)  # the guide's code says where its records are
    assert f"result store: {src / '.nuvom' / 'jsondir'}\n" in status.stdout, status.stdout


BROKEN_FILTER = '''
from nuvom_plugins.memory import MemoryJobQueue


class AnyQueue(MemoryJobQueue):
    """Ignores which queues were asked for."""

    name = "anyqueue"

    def claim(self, n, queues=None):
        return super().claim(n, None if queues else queues)
'''


def test_a_contract_failure_names_the_broken_promise(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN_FILTER)
    done = run_nuvom(["plugin", "test", "broken:AnyQueue", "-k", "test_claim_filters_by_queue"],
                     tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_claim_filters_by_queue: AssertionError: claim(n, queues) leases messages of " \
           "the named queues only" in done.stdout


def test_a_backend_missing_a_required_method_names_its_plugin(toml_project: Path) -> None:
    """The guide's queue with ``claim`` removed: every command that builds it, and
    ``.delay()``, say which plugin leaves which method unwritten (not a TypeError about an
    abstract class, nor an enqueue error about free space)."""
    code = (toml_project / "my_queues.py").read_text()
    start = code.index("    def claim(")
    end = code.index("\n    def ", start + 1)
    (toml_project / "my_queues.py").write_text(code[:start] + code[end + 1:])
    expected = ("plugin 'my_queues:ListqQueue': its queue backend 'listq' "
                "(my_queues.ListqQueue) does not implement: claim.")
    for command in (["status"], ["runworker", "--workers", "1"]):
        done = run_nuvom(command, toml_project, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    producer = subprocess.run(
        [sys.executable, "-c", "from tasks import add; add.delay(1, 2)"], cwd=toml_project,
        env=user_env(), capture_output=True, text=True, timeout=60)
    assert f"PluginLoadError: {expected}" in producer.stderr, producer.stderr
    tested = run_nuvom(["plugin", "test", "listq"], toml_project, timeout=120)
    assert tested.returncode == 1, tested.stdout + tested.stderr
    assert "ListqQueue does not implement: claim" in tested.stdout, tested.stdout
    assert "Contracts" not in tested.stdout, "each contract test failed on building the class"


def test_cancel_on_a_backend_without_it_says_so(toml_project: Path) -> None:
    """The guide's queue does not write the optional ``cancel``: ``nuvom cancel job`` says
    the backend cannot, as the guide promises (it printed a traceback)."""
    enqueued = subprocess.run(
        [sys.executable, "-c", "from tasks import add; print(add.delay(1, 2).id)"],
        cwd=toml_project, env=user_env(), capture_output=True, text=True, timeout=60)
    assert enqueued.returncode == 0, enqueued.stderr
    done = run_nuvom(["cancel", "job", enqueued.stdout.strip()], toml_project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Error: queue backend 'listq' cannot cancel jobs" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
