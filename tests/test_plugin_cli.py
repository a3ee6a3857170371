"""``nuvom plugin test``: by plugin name, ``--all``, ``module:attr``; table, JSON, exit status.

Each test runs the real ``nuvom`` entry point in a subprocess from an empty project
directory, as a plugin author would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nuvom_kernel.testing.fakes import EXPECTED_FAILURES
from tests.helpers import fake_distribution


def nuvom(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", "from nuvom_kernel.cli import main; main()", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def rows(output: str, first: str) -> list[list[str]]:
    """Table rows (split on runs of spaces) whose first cell is ``first``."""
    return [line.split() for line in output.splitlines() if line.split()[:1] == [first]]


@pytest.mark.slow
def test_plugin_test_memory_passes_with_a_table(tmp_path: Path) -> None:
    result = nuvom(["plugin", "test", "memory"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Registration" in out and "Contracts" in out
    contract_rows = {(r[1], r[2]): r for r in rows(out, "memory") if r[1] in ("queue", "result")}
    assert set(contract_rows) == {("queue", "memory"), ("result", "memory")}
    for row in contract_rows.values():
        passed, failed, _skipped, verdict = row[3:7]
        assert int(passed) > 10 and failed == "0" and verdict == "PASS"
    checks = [r for r in rows(out, "memory") if r[1] not in ("queue", "result")]
    assert checks and all("ok" in r for r in checks)
    assert out.rstrip().splitlines()[-1].startswith("PASSED")


def test_plugin_test_all_covers_every_installed_backend(tmp_path: Path) -> None:
    result = nuvom(["plugin", "test", "--all", "--json", "-k", "fifo or unknown_ids or empty"],
                   tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    tested = {(t["kind"], t["name"]) for t in report["targets"]}
    assert {("queue", "memory"), ("result", "memory")} <= tested
    assert report["ok"] is True
    for target in report["targets"]:
        mine = [t for t in report["tests"] if t["target"] == target["id"]]
        assert mine and all(t["outcome"] == "passed" for t in mine), target


def test_module_attr_of_a_broken_backend_fails_with_its_tests_named(tmp_path: Path) -> None:
    result = nuvom(["plugin", "test", "nuvom_kernel.testing.fakes:LifoQueue",
                    "-k", "fifo or priority or claim_order or ack_removes or browse or limit or "
                    "held_back or lease_ends"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    [row] = [r for r in rows(out, "nuvom_kernel.testing.fakes:LifoQueue") if r[1] == "queue"]
    assert row[2] == "fake-lifo" and row[-1] == "FAIL" and int(row[4]) >= 2
    failures = out.split("Failures", 1)[1]
    # (settle_many needs a result backend sharing the queue's store, which the meta test's
    # stubs give and `nuvom plugin test` of a bare queue backend does not: skipped there)
    for name in EXPECTED_FAILURES["LifoQueue"] - {
            "test_every_way_a_lease_ends_gives_its_room_back[settle_many]"}:
        assert name in failures
    assert "test_ack_removes" not in failures
    assert out.rstrip().splitlines()[-1].startswith("FAILED")


def test_toml_listed_target_is_checked_against_its_capability_key(tmp_path: Path) -> None:
    (tmp_path / "myqueue.py").write_text(textwrap.dedent("""
        from nuvom_kernel.testing.stubs import StubQueue

        class GoodQueue(StubQueue):
            name = "goodq"
        """))
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["myqueue:GoodQueue"]\n')
    result = nuvom(["plugin", "test", "myqueue:GoodQueue", "-k", "fifo", "--json"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["toml key 'queue_backend'"]["ok"] is True
    assert [(t["kind"], t["name"]) for t in report["targets"]] == [("queue", "goodq")]
    by_backend_name = nuvom(["plugin", "test", "goodq", "-k", "fifo"], tmp_path)
    assert by_backend_name.returncode == 0, by_backend_name.stdout + by_backend_name.stderr


def test_registration_problems_fail_without_running_anything(tmp_path: Path) -> None:
    (tmp_path / "sloppy.py").write_text(textwrap.dedent("""
        from nuvom_kernel import hookimpl
        from nuvom_kernel.backends import QueueBackend

        class HalfQueue(QueueBackend):
            name = "half"
            def push(self, messages): ...

        @hookimpl
        def nuvom_register_queue_backend():  # typo: the hook ends in "backends"
            return [HalfQueue]

        def nuvom_register_result_backends():  # not marked @hookimpl
            return []
        """))
    result = nuvom(["plugin", "test", "sloppy", "sloppy:HalfQueue"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "nuvom_register_queue_backend is not a Nuvom hook" in out
    assert "nuvom_register_result_backends is not marked @nuvom_kernel.hookimpl" in out
    assert ("HalfQueue does not implement: ack, claim, clear, extend, peek_state, qsize, "
            "release, retry") in out
    assert "FAIL" in out and "Contracts" not in out


def test_unknown_name_and_missing_arguments(tmp_path: Path) -> None:
    unknown = nuvom(["plugin", "test", "no-such-thing"], tmp_path)
    assert unknown.returncode == 2, "a name that names nothing is a usage error"
    assert "no installed plugin or backend is named 'no-such-thing'" in unknown.stderr
    assert "memory" in unknown.stderr, "the error lists what is installed"
    nothing = nuvom(["plugin", "test"], tmp_path)
    assert nothing.returncode == 2 and "--all" in nothing.stderr


def test_a_keyword_matching_no_contract_test_fails(tmp_path: Path) -> None:
    """It printed PASSED (0 tests) and exited 0: pytest's "no tests collected" (status 5)
    counted as success, so a typo in -k passed any plugin."""
    result = nuvom(["plugin", "test", "memory", "-k", "no_such_test_xyz"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("Error: no contract test matched -k 'no_such_test_xyz', so nothing was tested"
            in result.stderr)
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAILED")
    as_json = nuvom(["plugin", "test", "memory", "-k", "no_such_test_xyz", "--json"], tmp_path)
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and "no contract test matched" in report["error"]


def test_a_hooks_only_plugin_still_passes_with_a_keyword(tmp_path: Path) -> None:
    """No backend, so no contract test to match: registration checks only, as without -k."""
    (tmp_path / "observer.py").write_text(textwrap.dedent("""
        from nuvom_kernel import hookimpl

        @hookimpl
        def nuvom_register_commands(cli):
            pass
        """))
    for extra in ([], ["-k", "fifo"]):
        result = nuvom(["plugin", "test", "observer", *extra], tmp_path)
        assert result.returncode == 0, (extra, result.stdout + result.stderr)
        assert "no contract test matched" not in result.stderr
        assert result.stdout.rstrip().splitlines()[-1].startswith("PASSED")


SETTINGS_PLUGIN = '''
import dataclasses
import json
import os

from nuvom_kernel import hookimpl
from nuvom_kernel.testing.stubs import StubQueue


@dataclasses.dataclass
class KhSettings:
    size: int = 3
    verbose: bool = False
    label: str = ""


class KhQueue(StubQueue):
    name = "khq2"

    @classmethod
    def from_settings(cls, settings, context):
        with open(os.environ["KH_SEEN"], "a") as seen:
            seen.write(json.dumps(dict(settings)) + "\\n")
        return cls(visibility_timeout_secs=context.visibility_timeout_secs)


@hookimpl
def nuvom_register_queue_backends():
    return [KhQueue]


@hookimpl
def nuvom_plugin_settings():
    return {"khq2": KhSettings}
'''


def test_set_values_go_through_the_declared_settings_schema(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set verbose=no --set bogus=1` reached from_settings as {'verbose': 'no', 'bogus': 1};
    production (NUVOM_PLUGINS__KHQ2__VERBOSE=no) gives False, and an unknown key is an error."""
    (tmp_path / "khplug.py").write_text(SETTINGS_PLUGIN)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nqueue_backend = ["khplug"]\n')
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("KH_SEEN", str(seen))
    result = nuvom(["plugin", "test", "khplug", "-k", "fifo", "--set", "verbose=no",
                    "--set", "size=7", "--set", "label=123"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    built = [json.loads(line) for line in seen.read_text().splitlines()]
    assert built and all(s == {"verbose": False, "size": 7, "label": "123"} for s in built)

    seen.unlink()
    unknown = nuvom(["plugin", "test", "khplug", "--set", "verbose=no", "--set", "bogus=1"],
                    tmp_path)
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert unknown.stderr == ("Error: --set bogus=1: 'bogus' is not a setting of plugin "
                              "'khq2'. Valid keys: label, size, verbose.\n")
    bad = nuvom(["plugin", "test", "khplug", "--set", "size=many"], tmp_path)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert ("Error: --set size=many: size='many' is invalid: it must be a whole number "
            "(e.g. 3)") in bad.stderr
    assert not seen.exists(), "nothing runs with a refused setting"


def test_set_visibility_timeout_is_refused_the_suite_sets_it(tmp_path: Path) -> None:
    """`--set visibility_timeout_secs=60` overrode the suite's short leases, and the lease
    tests failed, telling the author to fix a from_settings that did right."""
    done = nuvom(["plugin", "test", "memory", "--set", "visibility_timeout_secs=60"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        "Error: --set visibility_timeout_secs: the contract suite sets the visibility timeout "
        "itself (its lease tests build backends with leases of a fraction of a second, "
        "through BackendContext.visibility_timeout_secs); drop this setting\n")


def test_a_plugin_disabled_while_loading_fails_the_check_that_broke(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration hook that raised was reported under the check "import", sending its
    author after an import error that was not there: "register" now, "import" kept for a
    module that does not import."""
    site = fake_distribution(tmp_path / "site", "khbadreg", textwrap.dedent("""
        from nuvom_kernel import hookimpl

        @hookimpl
        def nuvom_register_queue_backends():
            raise RuntimeError("boom in register")
        """))
    fake_distribution(site, "khbadimp", "raise ImportError('no such dependency')\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = nuvom(["plugin", "test", "khbadreg", "khbadimp", "--json"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = {c["plugin"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["khbadreg"]["check"] == "register" and not checks["khbadreg"]["ok"]
    assert "failed in nuvom_register_queue_backends" in checks["khbadreg"]["detail"]
    assert checks["khbadimp"]["check"] == "import" and not checks["khbadimp"]["ok"]
