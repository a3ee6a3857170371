"""How ``nuvom`` fails: exit statuses of the real console script, a malformed manifest, plugins
that break while loading or are disabled, duplicate tasks in discovery, ``plugin test --set``.

The exit statuses are read from the ``nuvom`` console script in a subprocess: click's
``CliRunner`` runs a command in standalone mode, which hides what ``main()`` does with it
(``discover tasks`` exited 0 on errors behind a test that saw 1). The broken plugins are real
installed distributions (a ``.dist-info`` with an entry point, on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nuvom_kernel import hints, hookimpl
from nuvom_kernel.cli import make_cli
from nuvom_kernel.config import load_config
from nuvom_kernel.discovery import ManifestError, read_manifest
from nuvom_kernel.errors import BackendNotFoundError, PluginLoadError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.registry import TaskRegistry
from tests.helpers import (
    NUVOM,
    fake_distribution,
    run_nuvom,
    user_env,
    wait_until,
    worker_starts_and_stops,
    write_module,
)

MEMORY = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory"}

RAISES_IN_REGISTER = '''
from nuvom_kernel import hookimpl


@hookimpl
def nuvom_register_queue_backends():
    raise RuntimeError("boom in register")
'''

RAISES_IN_SETTINGS = '''
from nuvom_kernel import hookimpl


@hookimpl
def nuvom_plugin_settings():
    raise RuntimeError("boom in settings")
'''

# Adds a command and a subcommand of the kernel's `plugin` group, then raises.
RAISES_IN_COMMANDS = '''
from nuvom_kernel import hookimpl


@hookimpl
def nuvom_register_commands(cli):
    @cli.command(name="khhalf")
    def half():
        """Half registered."""

    @cli.commands["plugin"].command(name="khsub")
    def sub():
        """Half registered too."""

    raise RuntimeError("boom in commands")
'''

FAKEQ = '''
from nuvom_kernel import hookimpl
from nuvom_kernel.testing.stubs import StubQueue


class FakeQueue(StubQueue):
    name = "fakeq"


@hookimpl
def nuvom_register_queue_backends():
    return [FakeQueue]
'''


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration warnings are said once per process; each test starts afresh."""
    monkeypatch.setattr(hints, "_warned", set())


def _site(tmp_path: Path, plugin: str, source: str) -> str:
    return str(fake_distribution(tmp_path / "site", plugin, source))


# --- exit statuses (fault 4, fault 10) ------------------------------------------------------


def test_discover_tasks_exits_1_on_errors_from_the_console_script(tmp_path: Path) -> None:
    """Its help says "exits with status 1 if there were errors": the real ``nuvom`` and
    ``python -m nuvom_kernel`` did exit 0 (main() dropped the status click returned)."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    (tmp_path / "broken.py").write_text("from nuvom_kernel import task\n@task\ndef bad(:\n")
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: broken.py:3: syntax error" in done.stderr
    assert (tmp_path / ".nuvom" / "manifest.json").exists(), "written either way"
    module = subprocess.run([sys.executable, "-m", "nuvom_kernel", "discover", "tasks"],
                            cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert module.returncode == 1, module.stdout + module.stderr


FAILING_DISCOVERER = """
from nuvom_kernel import hookimpl
from nuvom_kernel.discovery import Discoverer


class Flaky(Discoverer):
    name = "flaky"

    def discover(self, root, *, include=(), exclude=(), state=None):
        raise RuntimeError("the flaky discoverer broke")


@hookimpl
def nuvom_register_discoverers():
    return [Flaky]
"""


def test_a_discoverer_that_fails_whole_keeps_the_previous_manifest(tmp_path: Path) -> None:
    """A discoverer that raised was reported, and the manifest rewritten without any of
    the tasks it finds: every schedule disappeared for the workers."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    (tmp_path / "jobs.py").write_text("from nuvom_kernel import task\n@task\ndef a():\n"
                                      "    return 1\n")
    assert run_nuvom(["discover", "tasks"], tmp_path).returncode == 0
    manifest = tmp_path / ".nuvom" / "manifest.json"
    before = manifest.read_text()
    (tmp_path / "flaky_plugin.py").write_text(FAILING_DISCOVERER)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\ndiscoverer = ["flaky_plugin"]\n')
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the flaky discoverer broke" in done.stderr
    assert "was not written (the previous one is kept)" in done.stderr
    assert manifest.read_text() == before
    assert "Traceback" not in done.stderr


def test_the_manifest_is_written_with_the_umask_and_a_write_error_says_so(
        tmp_path: Path) -> None:
    """The manifest was always 0600 (mkstemp): a worker running as another user could not
    read it. And a data directory that cannot be made was a traceback."""
    pytest.importorskip("nuvom_plugins")
    (tmp_path / "jobs.py").write_text("from nuvom_kernel import task\n@task\ndef a():\n"
                                      "    return 1\n")
    done = subprocess.run(f"umask 022 && exec {NUVOM} discover tasks", shell=True,
                          cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".nuvom" / "manifest.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / "blocked").write_text("a file where the data directory should be")
    done = run_nuvom(["discover", "tasks"], tmp_path, NUVOM_DATA_DIR="blocked")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot write the manifest" in done.stderr and "NUVOM_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr


COMMAND_WITH_STATUS = '''
import click
from nuvom_kernel import hookimpl


@click.command(name="exit-with")
@click.argument("code", type=int)
def exit_with(code):
    click.get_current_context().exit(code)


@hookimpl
def nuvom_register_commands(cli):
    cli.add_command(exit_with)
'''


@pytest.mark.parametrize("code", [0, 1, 3])
def test_any_commands_exit_status_reaches_the_shell(tmp_path: Path, code: int) -> None:
    """Not only `discover tasks`: a plugin's command that exits with a status exits the
    ``nuvom`` process with it."""
    (tmp_path / "statuses.py").write_text(COMMAND_WITH_STATUS)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["statuses"]\n')
    done = run_nuvom(["exit-with", str(code)], tmp_path)
    assert done.returncode == code, done.stdout + done.stderr


def test_usage_errors_and_help_keep_their_statuses(tmp_path: Path) -> None:
    assert run_nuvom(["--help"], tmp_path).returncode == 0
    assert run_nuvom(["--version"], tmp_path).returncode == 0
    unknown = run_nuvom(["no-such-command"], tmp_path)
    assert unknown.returncode == 2 and "No such command" in unknown.stderr


@pytest.mark.parametrize(("toml", "env", "expected"), [
    ("", {"NUVOM_MAX_WORKERS": "abc"}, "NUVOM_MAX_WORKERS='abc' is invalid"),
    ('[settings]\nmax_workers = "abc"\n', {}, "[settings] max_workers='abc' is invalid"),
    ("[settings]\nmax_workerz = 4\n", {}, "unknown key(s) max_workerz"),
    ("[setting]\nmax_workers = 4\n", {}, "unknown table [setting]"),
    ("", {"NUVOM_PLUGINS__MEMORY__VISIBILITY_TIMEOUT_SECS": "soon"},
     "visibility_timeout_secs='soon' is invalid"),
])
def test_every_configuration_error_exits_2(tmp_path: Path, toml: str, env: dict[str, str],
                                           expected: str) -> None:
    """main()'s docstring: configuration errors exit 2. A bad core value exited 1."""
    if toml:
        (tmp_path / ".nuvom_plugins.toml").write_text(toml)
    done = run_nuvom(["config"], tmp_path, **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


PICKY_QUEUE = '''
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.testing.stubs import StubQueue


class PickyQueue(StubQueue):
    name = "picky"

    @classmethod
    def from_settings(cls, settings, context):
        raise PluginConfigError(
            f"[plugins.picky] level={settings.get('level')!r} is invalid: use 1 or 2")
'''


def test_status_names_an_unknown_serializer(tmp_path: Path) -> None:
    """`nuvom status` is the check a user runs after configuring: with a serializer no plugin
    provides it printed the queue and exited 0, while every worker refused to start."""
    done = run_nuvom(["status"], tmp_path, NUVOM_SERIALIZER="nosuch")
    assert done.returncode != 0, done.stdout
    assert "serializer 'nosuch'" in done.stderr and "Installed: json" in done.stderr
    done = run_nuvom(["status", "--json"], tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["serializer"] == "json"


def test_a_configuration_error_found_by_a_command_exits_2(tmp_path: Path) -> None:
    """Found when the command builds the backend (its from_settings refuses the value),
    not while loading: still a configuration error, still 2 (it was 1)."""
    (tmp_path / "picky_queue.py").write_text(PICKY_QUEUE)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "picky"\nresult_backend = "memory"\n\n'
        '[plugins]\nqueue_backend = ["picky_queue:PickyQueue"]\n\n'
        '[plugins.picky]\nlevel = 3\n')
    done = run_nuvom(["status"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == "Error: [plugins.picky] level=3 is invalid: use 1 or 2\n"


def test_plugin_test_checks_set_values_before_running(tmp_path: Path) -> None:
    """``--set badformat`` surfaced as "the contract run did not complete (pytest exit
    status 4)" from the child pytest run."""
    done = run_nuvom(["plugin", "test", "memory", "--set", "path=/x", "--set", "badformat"],
                     tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'badformat' is not KEY=VALUE" in done.stderr
    assert "did not complete" not in done.stderr and "Contracts" not in done.stdout
    empty_key = run_nuvom(["plugin", "test", "memory", "--set", "=1"], tmp_path)
    assert empty_key.returncode == 2 and "'=1' is not KEY=VALUE" in empty_key.stderr


# --- a malformed manifest (fault 3) ---------------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [
    ("not json", "it is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("[]", "the top level is a list, not an object"),
    ("{}", 'it has no "tasks" list'),
    ('{"tasks": {}}', '"tasks" is an object, not a list'),
    ('{"tasks": [1]}', "tasks[0] is a number (1), not an object"),
    ('{"tasks": [{"name": "x"}]}', "tasks[0] (task 'x'): \"module\" is missing"),
    ('{"tasks": [{"module": "m"}]}', 'tasks[0]: "name" is missing'),
    ('{"tasks": [{"name": "a", "module": "m"}, {"name": 2, "module": "m"}]}',
     'tasks[1]: "name" is a number (2), not a non-empty string'),
    ('{"tasks": [{"name": "x", "module": "m", "options": []}]}',
     "tasks[0] (task 'x'): \"options\" is a list, not an object"),
    ('{"tasks": [], "state": 3}', '"state" is a number (3), not an object'),
    ('{"tasks": [], "state": []}', '"state" is a list, not an object'),
])
def test_a_malformed_manifest_names_the_file_the_entry_and_the_fix(
        tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    text = str(info.value)
    assert str(tmp_path / "manifest.json") in text
    assert problem in text, text
    assert "Rerun `nuvom discover tasks`" in text
    assert isinstance(info.value, ValueError), "what every reader already catches"


def test_a_manifest_that_cannot_be_read_is_a_manifest_error(tmp_path: Path) -> None:
    """A manifest path that is a folder (or a file this user may not read) raised a bare
    OSError, which no reader catches: the worker died at start."""
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path)


def test_a_valid_manifest_still_reads(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({
        "version": 1, "state": {}, "tasks": [{"name": "a", "module": "m", "file": "m.py",
                                             "line": 3, "options": {"retries": 2}}]}))
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest["tasks"][0]["options"] == {"retries": 2}
    assert read_manifest(tmp_path / "nowhere") is None


def test_the_registry_ignores_a_malformed_manifest_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "manifest.json").write_text('{"tasks": [{"name": "x"}]}')
    registry = TaskRegistry()
    with caplog.at_level(logging.WARNING, logger="nuvom.registry"):
        assert registry.load_manifest(tmp_path) == 0  # a KeyError before
    assert "ignoring manifest" in caplog.text and "\"module\" is missing" in caplog.text
    assert registry.modules() == []


@pytest.mark.parametrize("discoverer", [True, False])
def test_a_worker_starts_without_a_malformed_manifest(tmp_path: Path, discoverer: bool) -> None:
    """``nuvom runworker`` died at start with a raw KeyError: it says so and discovers again
    (writing a valid manifest), or, without a discoverer, warns and runs."""
    (tmp_path / ".nuvom").mkdir()
    (tmp_path / ".nuvom" / "manifest.json").write_text('{"tasks": [{"name": "x"}]}')
    (tmp_path / "jobs.py").write_text("from nuvom_kernel import task\n@task\ndef a(): pass\n")
    env = MEMORY if discoverer else {**MEMORY, "NUVOM_DISABLE_PLUGINS": "discovery"}
    out = worker_starts_and_stops(tmp_path, env, "--workers", "1")
    assert "manifest.json is not a valid Nuvom manifest" in out and "Traceback" not in out
    if discoverer:
        assert "the manifest is unusable" in out and ": discovered 1 task(s)" in out, out
        manifest = read_manifest(tmp_path / ".nuvom")
        assert manifest is not None and [t["name"] for t in manifest["tasks"]] == ["a"]
    else:
        assert "ignoring manifest" in out, out


@pytest.mark.parametrize("content", ['{"tasks": [1]}', "not json"])
def test_list_tasks_says_which_file_is_wrong(tmp_path: Path, content: str) -> None:
    (tmp_path / ".nuvom").mkdir()
    (tmp_path / ".nuvom" / "manifest.json").write_text(content)
    done = run_nuvom(["list", "tasks"], tmp_path, **MEMORY)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith(f"Error: {tmp_path / '.nuvom' / 'manifest.json'} is not a "
                                  f"valid Nuvom manifest"), done.stderr
    assert "Rerun `nuvom discover tasks`" in done.stderr and "Traceback" not in done.stderr


def test_discover_rewrites_a_malformed_manifest(tmp_path: Path) -> None:
    pytest.importorskip("nuvom_plugins")
    (tmp_path / ".nuvom").mkdir()
    (tmp_path / ".nuvom" / "manifest.json").write_text('{"tasks": [1], "state": []}')
    (tmp_path / "jobs.py").write_text("from nuvom_kernel import task\n@task\ndef a(): pass\n")
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "previous manifest" in done.stderr and "starting fresh" in done.stderr
    manifest = read_manifest(tmp_path / ".nuvom")
    assert manifest is not None and [t["name"] for t in manifest["tasks"]] == ["a"]


# --- plugins whose hooks raise (fault 5) ----------------------------------------------------


def test_a_raising_registration_hook_is_named_and_every_other_command_runs(
        tmp_path: Path) -> None:
    """It broke every command, `plugin list` and `config` included, with a raw traceback."""
    site = _site(tmp_path, "breg", RAISES_IN_REGISTER)
    expected = ("plugin 'breg' (distribution nuvom-plugins-breg 0.1) failed in "
                "nuvom_register_queue_backends: RuntimeError('boom in register')")
    listed = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith("breg ")]
    assert row[:4] == ["breg", "nuvom-plugins-breg", "0.1", "FAILED"], row
    assert expected in listed.stderr and "NUVOM_DISABLE_PLUGINS=breg" in listed.stderr
    assert "Traceback" not in listed.stderr
    as_json = run_nuvom(["plugin", "list", "--json"], tmp_path, PYTHONPATH=site, **MEMORY)
    [entry] = [r for r in json.loads(as_json.stdout) if r["name"] == "breg"]
    assert expected in entry["failure"] and entry["provides"] == {}

    for command in (["config"], ["status"]):  # they do not need what breg provides
        done = run_nuvom(command, tmp_path, PYTHONPATH=site, **MEMORY)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert expected in done.stderr and "Traceback" not in done.stderr

    needed = run_nuvom(["status"], tmp_path, PYTHONPATH=site, NUVOM_QUEUE_BACKEND="breg",
                       NUVOM_RESULT_BACKEND="memory")
    assert needed.returncode == 1, needed.stdout + needed.stderr
    [error] = [line for line in needed.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: the queue backend 'breg' is not available: " + expected)
    assert error.endswith("or disable it with NUVOM_DISABLE_PLUGINS=breg.")
    assert "Traceback" not in needed.stderr


def test_a_raising_settings_hook_is_named_and_config_still_runs(tmp_path: Path) -> None:
    site = _site(tmp_path, "bset", RAISES_IN_SETTINGS)
    done = run_nuvom(["config"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0, done.stderr
    assert "plugin 'bset' (distribution nuvom-plugins-bset 0.1) failed in " \
           "nuvom_plugin_settings: RuntimeError('boom in settings')" in done.stderr
    assert "NUVOM_DISABLE_PLUGINS=bset" in done.stderr and "Traceback" not in done.stderr
    assert "queue_backend" in done.stdout


UNREADABLE_SCHEMAS = {
    "blist": ("list[str]", "", "gives 'tags' the type list[str]"),
    "bhint": ("Path", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from pathlib import Path\n",
              "has a type annotation that cannot be evaluated: NameError("),
}


@pytest.mark.parametrize("plugin", sorted(UNREADABLE_SCHEMAS))
def test_a_settings_schema_the_kernel_cannot_read_disables_its_plugin(tmp_path: Path,
                                                                    plugin: str) -> None:
    """It stopped every command (`plugin list` too) naming neither the plugin nor its
    distribution; an annotation imported under TYPE_CHECKING gave a raw NameError."""
    kind, preamble, problem = UNREADABLE_SCHEMAS[plugin]
    source = (f"from __future__ import annotations\nimport attrs\n{preamble}"
              "from nuvom_kernel import hookimpl\n\n"
              f"@attrs.define\nclass Settings:\n    tags: {kind} = None\n\n"
              f"@hookimpl\ndef nuvom_plugin_settings():\n    return {{'{plugin}': Settings}}\n")
    site = _site(tmp_path, plugin, source)
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0, done.stderr
    assert (f"plugin '{plugin}' (distribution nuvom-plugins-{plugin} 0.1) failed in "
            "nuvom_plugin_settings") in done.stderr, done.stderr
    assert problem in done.stderr and f"NUVOM_DISABLE_PLUGINS={plugin}" in done.stderr
    assert "Traceback" not in done.stderr
    [row] = [line.split() for line in done.stdout.splitlines() if line.startswith(plugin)]
    assert "FAILED" in row


def test_a_raising_command_hook_disables_only_its_plugin(tmp_path: Path) -> None:
    """It stopped every command, ``runworker`` and the ``plugin list`` that would show it
    included: now it is disabled for the process like a plugin that fails to load, its
    commands (those added before it raised too) missing, every other command working."""
    site = _site(tmp_path, "bcmd", RAISES_IN_COMMANDS)
    failure = ("plugin 'bcmd' (distribution nuvom-plugins-bcmd 0.1) failed in "
               "nuvom_register_commands: RuntimeError('boom in commands') (raised at "
               f"{Path(site) / 'nuvom_fake_bcmd.py'}:15 in nuvom_register_commands). It is "
               "disabled for this process: fix or upgrade it, or disable it with "
               "NUVOM_DISABLE_PLUGINS=bcmd")
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count(f"error: {failure}") == 1, done.stderr  # once, as loading says
    assert "Traceback" not in done.stderr
    [row] = [line.split() for line in done.stdout.splitlines() if line.startswith("bcmd")]
    assert "FAILED" in row
    for command in (["khhalf"], ["plugin", "khsub"]):
        gone = run_nuvom(command, tmp_path, PYTHONPATH=site, **MEMORY)
        assert gone.returncode == 2 and "No such command" in gone.stderr, gone.stderr
    out = worker_starts_and_stops(tmp_path, {"PYTHONPATH": site, **MEMORY}, "--workers", "1")
    assert failure in out, out
    fixed = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site,
                      NUVOM_DISABLE_PLUGINS="bcmd", **MEMORY)
    assert fixed.returncode == 0 and "bcmd" not in fixed.stderr, fixed.stderr


def test_loading_disables_a_plugin_whose_hook_raises(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(_site(tmp_path, "breg", RAISES_IN_REGISTER))
    monkeypatch.chdir(tmp_path)
    pm = NuvomPluginManager()
    pm.load(load_config(tmp_path, environ={}), environ={})
    assert pm.get_plugin("breg") is None
    assert "failed in nuvom_register_queue_backends" in pm.failures["breg"]
    assert "memory" in pm.collect("nuvom_register_queue_backends"), "the others still load"
    [info] = [i for i in pm.plugin_infos() if i.name == "breg"]
    assert info.failure == pm.failures["breg"] and info.distribution == "nuvom-plugins-breg"


RETURNS_THE_CLASS = '''
from nuvom_kernel import hookimpl
from nuvom_plugins.memory import MemoryJobQueue, MemoryResultBackend


class BareQueue(MemoryJobQueue):
    name = "bare"


class WrongKind(MemoryResultBackend):
    name = "wrongkind"


class NamelessQueue(MemoryJobQueue):
    name = ""


@hookimpl
def nuvom_register_queue_backends():
    return {shape}
'''


@pytest.mark.parametrize(("shape", "says"), [
    ("BareQueue", "plugin 'bshape': nuvom_register_queue_backends returned <class "
                  "'nuvom_fake_bshape.BareQueue'>, not a list of classes: return [BareQueue]"),
    ("['BareQueue']", "plugin 'bshape': nuvom_register_queue_backends returned 'BareQueue' "
                      "in its list, which is not a class"),
    ("[NamelessQueue]", "plugin 'bshape': <class 'nuvom_fake_bshape.NamelessQueue'> from "
                        "nuvom_register_queue_backends has an empty 'name' class attribute"),
    # a result backend listed as a queue: listed by `plugin list`, then an AttributeError
    # blamed on the store at its first use
    ("[BareQueue, WrongKind]", "plugin 'bshape': nuvom_register_queue_backends returned "
                               "<class 'nuvom_fake_bshape.WrongKind'>, which is not a "
                               "nuvom_kernel.backends.QueueBackend subclass"),
])
def test_a_registration_hook_returning_the_wrong_shape_disables_its_plugin(
        tmp_path: Path, shape: str, says: str) -> None:
    """``return BareQueue`` (not a list) stopped every command, ``nuvom plugin list`` and
    ``nuvom plugin test`` included, with ``TypeError: 'ABCMeta' object is not iterable``
    naming no plugin; a name in the list, or a class named ``""``, stopped every command
    that loaded backends. Now the plugin is disabled, named, with what it returned."""
    pytest.importorskip("nuvom_plugins")
    site = _site(tmp_path, "bshape", RETURNS_THE_CLASS.format(shape=shape))
    for command in (["plugin", "list"], ["status"]):
        done = run_nuvom(command, tmp_path, PYTHONPATH=site, **MEMORY)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, done.stderr
        assert "It is disabled for this process: fix or upgrade it, or disable it with " \
               "NUVOM_DISABLE_PLUGINS=bshape" in done.stderr, done.stderr


SETTINGS_SHAPE = '''
import attrs
from nuvom_kernel import hookimpl
from nuvom_plugins.memory import MemoryJobQueue


@attrs.define
class BsetSettings:
    depth: int = 1


class BsetQueue(MemoryJobQueue):
    name = "bset"


@hookimpl
def nuvom_register_queue_backends():
    return [BsetQueue]


@hookimpl
def nuvom_plugin_settings():
    return {shape}
'''


@pytest.mark.parametrize(("shape", "says"), [
    ("[BsetSettings]", "returned [<class 'nuvom_fake_bset.BsetSettings'>], not a dict of "
                       "table name -> class: return {\"<table name>\": TheSettingsClass}"),
    ("BsetSettings", "returned <class 'nuvom_fake_bset.BsetSettings'>, not a dict of table "
                     "name -> class"),
    ('{"bset": BsetSettings()}', "returned BsetSettings(depth=1) for table 'bset', not a "
                                 "class (the class itself, not an instance)"),
    ("{5: BsetSettings}", "returned the table name 5, not a non-empty string"),
])
def test_a_settings_hook_returning_the_wrong_shape_says_what_to_return(
        tmp_path: Path, shape: str, says: str) -> None:
    """Each stopped with Python's own words (``cannot convert dictionary update sequence
    element #0``, ``no attribute '__qualname__'``), naming no fix."""
    pytest.importorskip("nuvom_plugins")
    site = _site(tmp_path, "bset", SETTINGS_SHAPE.format(shape=shape))
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert f"plugin 'bset': nuvom_plugin_settings {says}" in done.stderr, done.stderr


RAISES_IN_STATS = '''
from nuvom_kernel import hookimpl
from nuvom_plugins.memory import MemoryJobQueue


class BstatQueue(MemoryJobQueue):
    name = "bstat"

    def stats(self):
        open("/")  # a `path` naming a folder
'''


def test_a_plugins_own_error_in_a_command_names_the_plugin(tmp_path: Path) -> None:
    """``nuvom status`` over a backend whose method raised a plain ``OSError`` ended in a
    traceback naming no plugin (``.delay()`` named it)."""
    pytest.importorskip("nuvom_plugins")
    source = RAISES_IN_STATS + "\n\n@hookimpl\ndef nuvom_register_queue_backends():\n" \
        "    return [BstatQueue]\n"
    site = _site(tmp_path, "bstat", source)
    done = run_nuvom(["status"], tmp_path, PYTHONPATH=site, **{**MEMORY,
                     "NUVOM_QUEUE_BACKEND": "bstat"})
    assert done.returncode == 1, done.stdout + done.stderr
    module = Path(site) / "nuvom_fake_bstat.py"
    assert f"Error: plugin 'bstat' raised IsADirectoryError: [Errno 21] Is a directory: '/' " \
           f"(at {module}:10 in stats). Check its settings ([plugins.bstat] in " \
           ".nuvom_plugins.toml, or NUVOM_PLUGINS__BSTAT__<KEY>)" in done.stderr, done.stderr
    assert "Traceback" in done.stderr, "the traceback is kept, before the line"


def test_a_project_plugins_own_error_in_a_command_names_the_plugin(tmp_path: Path) -> None:
    """The same for a plugin listed in ``.nuvom_plugins.toml``: its module is the project's
    own file, so its line is found by that file, not by a package's folder (which would be
    the user's whole project)."""
    pytest.importorskip("nuvom_plugins")
    (tmp_path / "my_stats.py").write_text(RAISES_IN_STATS)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "bstat"\nresult_backend = "memory"\n\n'
        '[plugins]\nqueue_backend = ["my_stats:BstatQueue"]\n')
    done = run_nuvom(["status"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Error: plugin 'my_stats:BstatQueue' raised IsADirectoryError: [Errno 21] Is a " \
           f"directory: '/' (at {tmp_path / 'my_stats.py'}:10 in stats)" in done.stderr, \
        done.stderr


def test_ctrl_c_while_plugins_load_ends_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C in the second or so ``nuvom runworker`` spends importing every installed
    plugin ended in a ``KeyboardInterrupt`` traceback."""
    (tmp_path / "slow_loading.py").write_text(
        "import pathlib, time\nfrom nuvom_kernel import hookimpl\n"
        "pathlib.Path('loading').touch()\ntime.sleep(60)\n\n\n"
        "@hookimpl\ndef nuvom_register_queue_backends():\n    return []\n")
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["slow_loading"]\n')
    proc = subprocess.Popen([str(NUVOM), "runworker"], cwd=tmp_path, env=user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "loading").exists() or proc.poll() is not None, 30,
                   "the plugin to start loading")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "Aborted! (interrupted while loading plugins, before the command ran)" in err, err
    assert "Traceback" not in err, err


class _RaisesLate:
    """Registered after loading (an embedder's ``pm.register``), so never probed."""

    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type]:
        raise RuntimeError("late boom")


def test_a_hook_registered_after_loading_that_raises_is_named(tmp_path: Path) -> None:
    pm = NuvomPluginManager()
    pm.load(load_config(tmp_path, environ={}), environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    pm.register(_RaisesLate(), name="late")
    with pytest.raises(PluginLoadError, match=r"plugin 'late' failed in "
                                              r"nuvom_register_queue_backends: "
                                              r"RuntimeError\('late boom'\)"):
        pm.collect("nuvom_register_queue_backends")
    [info] = [i for i in pm.plugin_infos() if i.name == "late"]
    assert info.failure is not None and "late boom" in info.failure


class _ConfigureRaises:
    @hookimpl
    def nuvom_configure(self, config: object) -> None:
        raise RuntimeError("configure boom")


def test_a_plugin_whose_configure_raises_is_disabled_and_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its error is logged once with the fix and kept; it is unregistered, the rest stay."""
    pm = NuvomPluginManager()
    pm.load(load_config(tmp_path, environ={}), environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with caplog.at_level(logging.ERROR, logger="nuvom.plugins"):
        pm.register(_ConfigureRaises(), name="cfgboom")
    line = _ConfigureRaises.nuvom_configure.__code__.co_firstlineno + 2  # its raise
    failure = ("plugin 'cfgboom' failed in nuvom_configure: RuntimeError('configure boom') "
               f"(raised at {__file__}:{line} in nuvom_configure). It is disabled for this "
               "process: ")
    assert pm.failures["cfgboom"].startswith(failure), pm.failures
    assert "NUVOM_DISABLE_PLUGINS=cfgboom" in pm.failures["cfgboom"]
    assert caplog.text.count(failure) == 1, caplog.text
    assert pm.get_plugin("cfgboom") is None
    assert pm.get_plugin("nuvom_kernel.builtin") is not None, "the others stay"



BAD_NAMES = """
from nuvom_kernel.testing.stubs import StubQueue


class IntQueue(StubQueue):
    name = 5


class EmptyQueue(StubQueue):
    name = ""
"""


def test_plugin_list_shows_a_backend_with_a_non_string_name_as_failed(tmp_path: Path) -> None:
    """`plugin list` crashed with "TypeError: sequence item 0: expected str instance, int
    found" on a backend whose name is 5."""
    (tmp_path / "badname.py").write_text(BAD_NAMES)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["badname:IntQueue"]\n')
    expected = ("plugin 'badname:IntQueue': <class 'badname.IntQueue'> from "
                "nuvom_register_queue_backends has a 'name' class attribute that is not a "
                "string: 5 (int). Set it to a non-empty string")
    listed = run_nuvom(["plugin", "list"], tmp_path, **MEMORY)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "Traceback" not in listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines()
             if line.startswith("badname:IntQueue ")]
    assert "FAILED" in row, row
    assert expected in listed.stderr
    as_json = run_nuvom(["plugin", "list", "--json"], tmp_path, **MEMORY)
    assert as_json.returncode == 0, as_json.stderr
    [entry] = [r for r in json.loads(as_json.stdout) if r["name"] == "badname:IntQueue"]
    assert expected in entry["failure"] and entry["provides"] == {}


class _Named:
    """A plugin registering one queue class whose ``name`` is given (or missing)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type]:
        return [self.cls]


@pytest.mark.parametrize(("attrs", "problem"), [
    ({}, "has no 'name' class attribute"),
    ({"name": 5}, "has a 'name' class attribute that is not a string: 5 (int)"),
    ({"name": None}, "has a 'name' class attribute that is not a string: None (NoneType)"),
    ({"name": ""}, "has an empty 'name' class attribute"),
])
def test_collect_says_what_is_wrong_with_a_name(tmp_path: Path, attrs: dict[str, object],
                                                problem: str) -> None:
    """``name = 5`` and ``name = ""`` were reported as "has no 'name' class attribute"."""
    pm = NuvomPluginManager()
    pm.load(load_config(tmp_path, environ={}), environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    cls = type("OddQueue", (), attrs)
    pm.register(_Named(cls), name="odd")
    with pytest.raises(PluginLoadError) as raised:
        pm.collect("nuvom_register_queue_backends")
    assert str(raised.value) == (
        f"plugin 'odd': {cls!r} from nuvom_register_queue_backends {problem}. Set it to a "
        "non-empty string, the name configuration selects it by (e.g. name = \"myqueue\").")
    [info] = [i for i in pm.plugin_infos() if i.name == "odd"]
    assert info.failure == str(raised.value)


# --- disabled plugins (fault 6) -------------------------------------------------------------


def test_a_disabled_backend_is_reported_disabled_not_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(_site(tmp_path, "fakeq", FAKEQ))
    enabled = Kernel(root=tmp_path, environ={"NUVOM_QUEUE_BACKEND": "fakeq"})
    assert enabled.queue.name == "fakeq"
    by_env = Kernel(root=tmp_path, environ={"NUVOM_QUEUE_BACKEND": "fakeq",
                                            "NUVOM_DISABLE_PLUGINS": "fakeq"})
    with pytest.raises(BackendNotFoundError) as info:
        _ = by_env.queue
    text = str(info.value)
    assert ("the queue backend 'fakeq' is provided by a disabled plugin: plugin 'fakeq' "
            "(nuvom-plugins-fakeq), disabled by NUVOM_DISABLE_PLUGINS=fakeq") in text
    assert "pip install" not in text and "no installed plugin" not in text
    assert "NUVOM_QUEUE_BACKEND=<name>" in text

    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\ndisable = ["fakeq"]\n')
    by_file = Kernel(root=tmp_path, environ={"NUVOM_QUEUE_BACKEND": "fakeq"})
    with pytest.raises(BackendNotFoundError) as info:
        _ = by_file.queue
    assert (f"disabled by [plugins] disable in {tmp_path / '.nuvom_plugins.toml'}"
            in str(info.value))


def test_an_enqueue_with_a_result_backend_no_plugin_provides_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``.delay()`` queued the job though no worker could start with that result backend
    (a worker builds it first); only a ``get()`` said why. A workflow's steps as well."""
    from nuvom_kernel import chain
    from nuvom_kernel.kernel import use_kernel

    write_module(tmp_path, "t_noresults", "from nuvom_kernel import task\n\n\n@task\n"
                                          "def add(x, y):\n    return x + y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel = Kernel(root=tmp_path, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                            "NUVOM_RESULT_BACKEND": "postgress"})
    with use_kernel(kernel):
        from t_noresults import add  # type: ignore[import-not-found]

        for enqueue in (lambda: add.delay(1, 2), lambda: add.map([(1, 2), (3, 4)]),
                        lambda: chain(add.s(1, 2), add.s(3)).delay()):
            with pytest.raises(BackendNotFoundError, match="result backend 'postgress'"):
                enqueue()
        assert kernel.queue.qsize() == 0, "nothing is queued"
    kernel.close()


def test_a_disabled_discoverer_is_reported_disabled(tmp_path: Path) -> None:
    pytest.importorskip("nuvom_plugins")
    done = run_nuvom(["discover", "tasks"], tmp_path, NUVOM_DISABLE_PLUGINS="discovery")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the 'ast' discoverer comes with the plugin 'discovery' (nuvom-plugins), which " \
           "is disabled by NUVOM_DISABLE_PLUGINS=discovery: remove it from there to use it" \
           in done.stderr
    assert "pip install" not in done.stderr


def test_disabling_another_plugin_of_the_distribution_is_not_blamed_for_the_discoverer(
        tmp_path: Path) -> None:
    """With ``file`` disabled and autoload off, the error named plugin ``file`` as the
    provider of the ``ast`` discoverer (it matched the distribution, not the plugin) and
    dropped the note that autoload is off, the real cause."""
    pytest.importorskip("nuvom_plugins")
    done = run_nuvom(["discover", "tasks"], tmp_path, NUVOM_DISABLE_PLUGINS="file",
                     NUVOM_DISABLE_PLUGIN_AUTOLOAD="1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "disabled by" not in done.stderr and "pip install" not in done.stderr, \
        "it is installed, and plugin file is not its provider"
    assert ("the 'ast' discoverer comes with the plugin 'discovery' (nuvom-plugins), which "
            "is not loaded: NUVOM_DISABLE_PLUGIN_AUTOLOAD='1' is set") in done.stderr


def test_a_misspelt_backend_name_is_answered_with_the_installed_name_not_a_package(
        tmp_path: Path) -> None:
    """``sqllite`` was answered with ``pip install nuvom-plugins-sqllite``: a package
    nobody publishes, or worse, one a stranger could."""
    kernel = Kernel(root=tmp_path, environ={**MEMORY, "NUVOM_QUEUE_BACKEND": "memroy"})
    with pytest.raises(BackendNotFoundError) as info:
        _ = kernel.queue
    text = str(info.value)
    assert "the queue backend 'memroy' (did you mean 'memory'?)" in text, text
    assert "pip install" not in text and "NUVOM_QUEUE_BACKEND=<name>" in text

    unknown = Kernel(root=tmp_path, environ={**MEMORY, "NUVOM_QUEUE_BACKEND": "kafka"})
    with pytest.raises(BackendNotFoundError) as info:
        _ = unknown.queue
    assert "did you mean" not in str(info.value)
    assert "its documentation names the distribution" in str(info.value)
    assert "nuvom-plugins-kafka" not in str(info.value)

    # a serializer is none of our backends: 'pickle' was asked "did you mean 'file'?", and
    # 'redis' told to install the Redis plugin
    for name in ("pickle", "redis"):
        other = Kernel(root=tmp_path, environ={**MEMORY, "NUVOM_SERIALIZER": name})
        with pytest.raises(BackendNotFoundError) as info:
            _ = other.serializer
        text = str(info.value)
        assert f"no installed plugin provides the serializer {name!r}. Installed: json" \
            in text, text
        assert "did you mean" not in text and "nuvom-plugins-redis" not in text, text


def test_a_missing_command_of_our_plugins_names_the_plugin(tmp_path: Path) -> None:
    """``nuvom dashboard`` without its plugin said only "No such command 'dashboard'"."""
    pytest.importorskip("nuvom_plugins_dashboard")
    done = run_nuvom(["dashboard"], tmp_path, NUVOM_DISABLE_PLUGINS="dashboard")
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("No such command 'dashboard'. It comes with the plugin 'dashboard' "
            "(nuvom-plugins-dashboard), which is disabled by "
            "NUVOM_DISABLE_PLUGINS=dashboard: remove it") in done.stderr, done.stderr
    off = run_nuvom(["dashboard"], tmp_path, NUVOM_DISABLE_PLUGIN_AUTOLOAD="1")
    assert ("(nuvom-plugins-dashboard), which is not loaded: NUVOM_DISABLE_PLUGIN_AUTOLOAD"
            "='1' is set") in off.stderr, "installed, not loaded: no install to advise"
    assert "not installed" not in off.stderr
    other = run_nuvom(["nosuch"], tmp_path)
    assert other.returncode == 2 and "It comes with" not in other.stderr
    # embedded (no ctx.obj): the group knows its kernel's plugins; it read ctx.obj.pm
    kernel = Kernel(root=tmp_path, environ={**MEMORY, "NUVOM_DISABLE_PLUGINS": "dashboard"})
    embedded = CliRunner().invoke(make_cli(kernel), ["dashboard"])
    assert embedded.exit_code == 2, embedded.output
    assert "which is disabled by NUVOM_DISABLE_PLUGINS=dashboard" in embedded.output


def test_a_disabled_name_no_plugin_has_is_warned_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.syspath_prepend(_site(tmp_path, "fakeq", FAKEQ))
    env = {"NUVOM_DISABLE_PLUGINS": "fakqe", **MEMORY}
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        Kernel(root=tmp_path, environ=env)
        Kernel(root=tmp_path, environ=env)  # a second kernel of the process: no repeat
    [record] = [r for r in caplog.records if "fakqe" in r.getMessage()]
    text = record.getMessage()
    assert text.startswith("NUVOM_DISABLE_PLUGINS=fakqe names plugin 'fakqe', but no "
                           "installed plugin is called that (did you mean 'fakeq'?)"), text
    assert "Installed plugins: " in text and "fakeq" in text.split("Installed plugins: ")[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        Kernel(root=tmp_path, environ={"NUVOM_DISABLE_PLUGINS": "fakeq", **MEMORY})
    assert not caplog.records, "an installed plugin's name is no typo"


def test_the_disabled_typo_warning_reaches_the_cli(tmp_path: Path) -> None:
    site = _site(tmp_path, "fakeq", FAKEQ)
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site,
                     NUVOM_DISABLE_PLUGINS="fakqe", **MEMORY)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("NUVOM_DISABLE_PLUGINS=fakqe names plugin 'fakqe'") == 1


def test_a_plugin_that_raises_at_import_is_named_where_it_raised(tmp_path: Path) -> None:
    """"failed to import: RuntimeError('boom at import'). Reinstall it": no file, no line
    (``-v`` showed no more), and reinstalling does not fix a bug in the plugin's code."""
    site = _site(tmp_path, "bimp", "X = 1\nraise RuntimeError('boom at import')\n")
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0, done.stderr
    assert "plugin 'bimp' (entry point 'nuvom_fake_bimp' of distribution nuvom-plugins-bimp) " \
           "failed to import: RuntimeError('boom at import') (raised at " \
           f"{Path(site) / 'nuvom_fake_bimp.py'}:2). Fix that error in its code (or install " \
           "what it imports), upgrade it, or disable it with NUVOM_DISABLE_PLUGINS=bimp" \
           in done.stderr, done.stderr


def test_an_error_a_library_raises_at_import_names_the_plugins_line_too(tmp_path: Path
                                                                      ) -> None:
    """``json.loads("{not json")`` at a plugin's import was said "raised at
    .../json/decoder.py:353": the library's line, not the plugin's that called it."""
    code = "import json\n\nSETTINGS = json.loads('{not json')\n"
    site = _site(tmp_path, "bjson", code)
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert done.returncode == 0, done.stderr
    assert f"(raised at {Path(site) / 'nuvom_fake_bjson.py'}:3, in " in done.stderr, \
        done.stderr
    assert "decoder.py:" in done.stderr.split("nuvom_fake_bjson.py:3, in ")[1], done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    debug = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, NUVOM_LOG_LEVEL="DEBUG",
                      **MEMORY)  # its whole traceback, as DEBUG promises
    assert "debug: plugin 'bjson' failed to import\nTraceback" in debug.stderr, debug.stderr
    assert f'File "{Path(site) / "nuvom_fake_bjson.py"}", line 3' in debug.stderr
    (tmp_path / "json_target.py").write_text(code)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["json_target"]\n')
    refused = run_nuvom(["config"], tmp_path, **MEMORY)
    assert refused.returncode == 2, refused.stderr
    assert f"(raised at {tmp_path / 'json_target.py'}:3, in " in refused.stderr, \
        refused.stderr


def test_a_backend_whose_plugin_failed_in_a_hook_is_said_so_with_the_line(tmp_path: Path
                                                                         ) -> None:
    """A plugin whose ``nuvom_configure`` raised had registered backend 'fakeq'; asking for
    it said "no installed plugin provides the queue backend 'fakeq' ... install the plugin",
    and the failure named no line of the plugin's."""
    code = FAKEQ + ("\n\n@hookimpl\ndef nuvom_configure(config):\n"
                    "    raise RuntimeError('boom in configure')\n")
    site = _site(tmp_path, "brokenconf", code)
    done = run_nuvom(["status"], tmp_path, PYTHONPATH=site, NUVOM_QUEUE_BACKEND="fakeq",
                     NUVOM_RESULT_BACKEND="memory")
    assert done.returncode != 0
    assert "the queue backend 'fakeq' is provided by plugin 'brokenconf', which failed: " \
           "plugin 'brokenconf' (distribution nuvom-plugins-brokenconf 0.1) failed in " \
           "nuvom_configure: RuntimeError('boom in configure') (raised at " \
           f"{Path(site) / 'nuvom_fake_brokenconf.py'}:17 in nuvom_configure)" \
           in done.stderr, done.stderr
    assert "no installed plugin provides" not in done.stderr, done.stderr


def test_a_plugin_import_error_names_the_plugins_line_or_none(tmp_path: Path) -> None:
    """A SyntaxError was said "raised at <frozen importlib._bootstrap>:241", and an entry
    point naming what its module lacks (a rename) was told to fix its code, at a line of
    importlib: the plugin's own line, or none and "Reinstall it"."""
    site = _site(tmp_path, "bsyn", "def broken(:\n    pass\n")
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert f"(raised at {Path(site) / 'nuvom_fake_bsyn.py'}:1). Fix that error in its " \
           "code" in done.stderr, done.stderr
    assert "<frozen" not in done.stderr, done.stderr
    stale = _site(tmp_path / "two", "bstale", "X = 1\n")
    info = next(Path(stale).glob("*.dist-info"))
    (info / "entry_points.txt").write_text("[nuvom]\nbstale = nuvom_fake_bstale:Renamed\n")
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=stale, **MEMORY)
    assert "failed to import: AttributeError(" in done.stderr, done.stderr
    assert "raised at" not in done.stderr, done.stderr
    assert "The entry point is wrong: its module nuvom_fake_bstale has no 'Renamed': fix " \
           "the entry point's value in the distribution's pyproject.toml " \
           "([project.entry-points.nuvom]), then reinstall it" in done.stderr, done.stderr


def test_an_entry_point_naming_a_module_its_package_lacks_says_to_fix_it(tmp_path: Path
                                                                        ) -> None:
    """``nuvom_plugins_x.plugn`` (a typo) was told "Reinstall it", which keeps the typo."""
    site = _site(tmp_path, "btypo", "X = 1\n")
    package = Path(site) / "nuvom_pkg_btypo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text("X = 1\n")
    info = next(Path(site).glob("*.dist-info"))
    (info / "entry_points.txt").write_text("[nuvom]\nbtypo = nuvom_pkg_btypo.plugn\n")
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert "The entry point is wrong: its package nuvom_pkg_btypo is installed but has no " \
           "module 'plugn' (did you mean nuvom_pkg_btypo.plugin?): fix the entry point's " \
           "value" in done.stderr, done.stderr
    gone = _site(tmp_path / "two", "bgone", "X = 1\n")
    (Path(gone) / "nuvom_fake_bgone.py").unlink()  # the whole module missing: reinstall
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=gone, **MEMORY)
    assert "Reinstall it, or disable it with NUVOM_DISABLE_PLUGINS=bgone" in done.stderr, \
        done.stderr


def test_a_disabled_toml_target_is_not_imported(tmp_path: Path) -> None:
    """Disabling a .nuvom_plugins.toml target (as a failed plugin's hint says) skips it:
    it was imported and then refused as "does not implement" its capability."""
    (tmp_path / "broken_target.py").write_text("raise ImportError('no such dependency')\n")
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["broken_target:Queue"]\n')
    refused = run_nuvom(["config"], tmp_path, **MEMORY)
    assert refused.returncode == 2, refused.stderr
    # found, and failed as it ran: not "check the module path"
    assert "target 'broken_target:Queue' failed while it was imported: ImportError('no such " \
           f"dependency') (raised at {tmp_path / 'broken_target.py'}:1). Fix that error in " \
           "its code" in refused.stderr, refused.stderr
    done = run_nuvom(["config"], tmp_path, NUVOM_DISABLE_PLUGINS="broken_target:Queue",
                     **MEMORY)
    assert done.returncode == 0, done.stderr


def test_a_toml_target_that_exits_or_cannot_be_built_is_named(tmp_path: Path) -> None:
    """A target module calling ``sys.exit(3)`` at import ended every command with status 3
    and not a word; a plugin class whose ``__init__`` raised printed a bare traceback that
    named neither the plugin nor the toml key (only a TypeError was caught)."""
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "breaks_in_init.py").write_text(
        "from nuvom_kernel import hookimpl\n\n\nclass Hooks:\n    def __init__(self):\n"
        "        raise RuntimeError('boom in init')\n\n    @hookimpl\n"
        "    def nuvom_after_enqueue(self, job):\n        pass\n")
    toml = tmp_path / ".nuvom_plugins.toml"
    for target, said in (
            ("exits_at_import", "target 'exits_at_import' called sys.exit(3) while it was "
                                "imported. Fix that error in its code"),
            ("breaks_in_init:Hooks", "target 'breaks_in_init:Hooks' is a class whose "
             "__init__ raised RuntimeError('boom in init') (raised at "
             f"{tmp_path / 'breaks_in_init.py'}:6). Fix its __init__")):
        toml.write_text(f'[plugins]\nhooks = ["{target}"]\n')
        for command in (["status"], ["plugin", "test", target]):
            done = run_nuvom(command, tmp_path, **MEMORY)
            assert done.returncode == 2, (command, done.returncode, done.stderr)
            assert f"{toml} [plugins] hooks: {said}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
    toml.unlink()  # `nuvom plugin test` of a target the project does not load
    done = run_nuvom(["plugin", "test", "breaks_in_init:Hooks"], tmp_path, **MEMORY)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done
    assert "plugin class built  FAIL    building it without arguments raised " \
           "RuntimeError('boom in init')" in done.stdout, done.stdout
    done = run_nuvom(["plugin", "test", "exits_at_import"], tmp_path, **MEMORY)
    assert done.returncode == 2, done.stderr
    assert "cannot import 'exits_at_import': SystemExit(3)" in done.stderr, done.stderr


# --- duplicate tasks in discovery (fault 9) -------------------------------------------------

TASK_A = "from nuvom_kernel import task\n\n\n@task\ndef a():\n    pass\n"

OTHER_DISCOVERER = '''
from nuvom_kernel import hookimpl
from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef


class OtherDiscoverer(Discoverer):
    name = "other"

    def discover(self, root, *, include=(), exclude=(), state=None):
        return DiscoveryReport(tasks=[TaskRef(name="a", module="elsewhere", file="elsewhere.py",
                                              line=1, func_name="a")]), {}


@hookimpl
def nuvom_register_discoverers():
    return [OtherDiscoverer]
'''


def test_a_duplicate_found_by_one_discoverer_is_warned_once(tmp_path: Path) -> None:
    """The scanner warns "also defined at"; the merge warned again, as if a second
    discoverer had found it."""
    pytest.importorskip("nuvom_plugins")
    (tmp_path / "one.py").write_text(TASK_A)
    (tmp_path / "two.py").write_text(TASK_A)
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "'a'" in line]
    assert len(warnings) == 1, done.stderr
    assert "also defined at one.py:" in warnings[0]


def test_a_duplicate_across_discoverers_is_warned_by_the_merge(tmp_path: Path) -> None:
    pytest.importorskip("nuvom_plugins")
    (tmp_path / "one.py").write_text(TASK_A)
    (tmp_path / "other_disc.py").write_text(OTHER_DISCOVERER)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\ndiscoverer = ["other_disc"]\n')
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("warning: elsewhere.py:1: task 'a' found by 'other' is already at one.py:5 "
            "(found by 'ast'); the first one is kept") in done.stderr


def test_two_distributions_with_one_plugin_name_are_named(tmp_path: Path) -> None:
    """The second was skipped without a word: installing a plugin named like an installed
    one (a scaffold called `memory`) silently hid the real one."""
    pytest.importorskip("nuvom_plugins")
    site = _site(tmp_path, "memory", "")  # distribution nuvom-plugins-memory, plugin memory
    done = run_nuvom(["plugin", "list"], tmp_path, PYTHONPATH=site, **MEMORY)
    assert ("two installed distributions provide the plugin 'memory': nuvom-plugins-memory "
            "and nuvom-plugins; only nuvom-plugins-memory's is loaded") in done.stderr, \
        done.stdout + done.stderr
    assert "pip uninstall nuvom-plugins" in done.stderr


def test_plugin_list_with_autoload_off_says_why_nothing_is_listed(tmp_path: Path) -> None:
    """It said "No plugins installed. Install ... with pip" about plugins that were
    installed, only not loaded."""
    done = run_nuvom(["plugin", "list"], tmp_path, NUVOM_DISABLE_PLUGIN_AUTOLOAD="1")
    assert done.returncode == 0, done.stderr
    assert "No plugins loaded. Note: no installed distribution's plugin is loaded: " \
           "NUVOM_DISABLE_PLUGIN_AUTOLOAD='1' is set" in done.stdout, done.stdout
    assert "pip install" not in done.stdout


def test_autoload_turned_off_by_0_says_so_not_that_nothing_is_installed(
        tmp_path: Path) -> None:
    """``NUVOM_DISABLE_PLUGIN_AUTOLOAD=0`` turns autoloading off (any non-empty value, as
    pytest's variable), and the error said "no installed plugin provides the queue backend
    'sqlite'. Installed: none", about a plugin that was installed."""
    done = run_nuvom(["status"], tmp_path, NUVOM_DISABLE_PLUGIN_AUTOLOAD="0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no loaded plugin provides the queue backend 'sqlite'. Loaded: " in done.stderr, \
        done.stderr
    assert "no installed plugin" not in done.stderr
    assert ("NUVOM_DISABLE_PLUGIN_AUTOLOAD='0' is set (any non-empty value, 0 and false too, "
            "turns autoloading off: unset it to load installed plugins)") in done.stderr


def test_runworker_queue_names_split_at_commas_and_are_checked(tmp_path: Path) -> None:
    """``--queue c,mail`` (Celery's ``-Q c,mail``) served one queue literally named
    "c,mail"; a name no store holds (undecodable bytes) failed every claim, for ever."""
    from nuvom_kernel.cli.core import _queue_names

    assert _queue_names(("c,mail", "x")) == ("c", "mail", "x")
    done = run_nuvom(["runworker", "--queue", "default,"], tmp_path, **MEMORY)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Invalid value for --queue: a queue name is a non-empty string" in done.stderr
    done = run_nuvom(["runworker", "--queue", "caf\udce9"], tmp_path, **MEMORY)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds a NUL or a lone surrogate" in done.stderr
