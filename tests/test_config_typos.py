"""A misspelt name in the configuration is never ignored silently (docs/configuration.md).

In ``.nuvom_plugins.toml`` an unknown top-level table is an error; ``[plugins.<Name>]`` is
case-insensitive like backend names. A ``[plugins.<name>]`` table or
``NUVOM_PLUGINS__<NAME>__*`` variable that no installed plugin claims, and a ``NUVOM_*``
variable that is not a setting, are warnings (a shared configuration may name a plugin only
some hosts have), logged once per process with the closest known name.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import attrs
import pytest

from nuvom_kernel import hints
from nuvom_kernel.config import (
    KERNEL_VARIABLES,
    TEST_VARIABLE_PREFIX,
    Settings,
    load_config,
)
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.kernel import Kernel
from tests.helpers import run_nuvom

ROOT = Path(__file__).resolve().parent.parent
MEMORY = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory"}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration warnings are said once per process; each test starts afresh."""
    monkeypatch.setattr(hints, "_warned", set())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "nuvom.config" and r.levelno == logging.WARNING]


# --- unknown tables: an error ---------------------------------------------------------------


def test_an_unknown_table_is_refused_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text("[setting]\nmax_workers = 8\n")
    with pytest.raises(PluginConfigError) as info:
        load_config(tmp_path, environ={})
    text = str(info.value)
    assert text.startswith(f"{tmp_path / '.nuvom_plugins.toml'}: unknown table [setting] "
                           f"(did you mean [settings]?)"), text
    assert "[settings] (core settings)" in text and "[plugins] (plugin targets" in text


def test_a_setting_outside_any_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text("max_workers = 8\n")
    with pytest.raises(PluginConfigError, match="unknown top-level key 'max_workers': put it "
                                                r"under \[settings\]"):
        load_config(tmp_path, environ={})


def test_the_repositorys_own_file_and_the_documented_tables_load(tmp_path: Path) -> None:
    """The tables the docs and the repository's commented .nuvom_plugins.toml use are the
    two known ones: refusing others breaks none of them."""
    load_config(ROOT, environ={})
    (tmp_path / ".nuvom_plugins.toml").write_text(
        "[settings]\nmax_workers = 8\n[plugins]\ndisable = ['file']\n"
        "[plugins.sqlite]\npath = 'q.db'\n")
    assert load_config(tmp_path, environ={}).settings.max_workers == 8


def test_the_cli_refuses_an_unknown_table_with_status_2(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text("[setting]\nmax_workers = 8\n")
    done = run_nuvom(["config"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown table [setting] (did you mean [settings]?)" in done.stderr


# --- [plugins.<Name>]: case-insensitive -----------------------------------------------------


def test_plugin_tables_are_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.SQLite]\npath = "custom.db"\n')
    config = load_config(tmp_path, environ={})
    assert config.plugin_settings("sqlite") == {"path": "custom.db"}
    assert config.plugin_settings("SQLite") == {"path": "custom.db"}
    overridden = load_config(tmp_path, environ={"NUVOM_PLUGINS__SQLITE__PATH": "env.db"})
    assert overridden.plugin_settings("sqlite") == {"path": "env.db"}


def test_a_case_insensitive_table_reaches_the_backend(tmp_path: Path) -> None:
    """[plugins.SQLite] path was shown by `nuvom config` but not used: the database went to
    .nuvom/nuvom.db."""
    pytest.importorskip("nuvom_plugins_sqlite")
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.SQLite]\npath = "custom.db"\n')
    done = run_nuvom(["status"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "custom.db").exists()
    assert not (tmp_path / ".nuvom" / "nuvom.db").exists()
    report = json.loads(run_nuvom(["config", "--json"], tmp_path).stdout)
    [row] = [r for r in report["plugins"] if (r["plugin"], r["key"]) == ("sqlite", "path")]
    assert row["value"] == "custom.db" and row["env"] == "NUVOM_PLUGINS__SQLITE__PATH"


def test_two_tables_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.sqlite]\npath = "a.db"\n[plugins.SQLite]\nsynchronous = "FULL"\n')
    with pytest.raises(PluginConfigError, match=r"\[plugins.sqlite\] and \[plugins.SQLite\] "
                       r"both set plugin 'sqlite'.*merge them"):
        load_config(tmp_path, environ={})


def test_a_misspelt_settings_key_gets_the_closest(tmp_path: Path) -> None:
    """``[setting]`` and ``NUVOM_MAX_WORKER`` got a did-you-mean; a ``[settings]`` key did
    not."""
    (tmp_path / ".nuvom_plugins.toml").write_text("[settings]\nmax_worker = 2\naaa = 1\n")
    with pytest.raises(PluginConfigError, match=r"unknown key\(s\) aaa, max_worker \(did you "
                       r"mean max_workers\?\); known: queue_backend"):
        load_config(tmp_path, environ={})


def test_a_declared_schema_checks_a_table_in_another_case(tmp_path: Path) -> None:
    @attrs.frozen
    class Demo:
        size: int = 1

    (tmp_path / ".nuvom_plugins.toml").write_text("[plugins.DEMO]\nsize = '4'\nsise = 2\n")
    config = load_config(tmp_path, environ={})
    with pytest.raises(PluginConfigError, match="'sise' is not a setting of plugin 'demo'"):
        config.declare_plugin_settings({"Demo": Demo})


# --- unclaimed plugin tables and variables: a warning ---------------------------------------


def test_an_unclaimed_plugin_table_is_warned_once(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.memroy]\npath = "x"\n')
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        Kernel(root=tmp_path, environ=MEMORY)
        Kernel(root=tmp_path, environ=MEMORY)  # a second kernel of the process
    [warning] = [w for w in _warnings(caplog) if "memroy" in w]
    assert warning.startswith(f"{tmp_path / '.nuvom_plugins.toml'} [plugins.memroy]: no "
                              f"installed plugin is named 'memroy' (did you mean "
                              f"[plugins.memory]?), so this table is not used here."), warning
    installed = warning.split("Installed plugins and backends: ")[1]
    assert "memory" in installed


def test_an_unclaimed_plugin_variable_is_warned(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        Kernel(root=tmp_path, environ={"NUVOM_PLUGINS__MEMROY__VISIBILITY_TIMEOUT_SECS": "3",
                                       **MEMORY})
    [warning] = [w for w in _warnings(caplog) if "MEMROY" in w]
    assert warning.startswith("NUVOM_PLUGINS__MEMROY__VISIBILITY_TIMEOUT_SECS: no installed "
                              "plugin is named 'memroy' (did you mean "
                              "NUVOM_PLUGINS__MEMORY__VISIBILITY_TIMEOUT_SECS?)"), warning


def test_claimed_tables_are_not_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    """Claimed by declaring settings (memory), by a disabled plugin (file: its table may
    serve other hosts), by a backend's name, or by a plugin's own name."""
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\ndisable = ["file"]\n[plugins.Memory]\nvisibility_timeout_secs = 3\n'
        '[plugins.file]\nfsync = false\n')
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        kernel = Kernel(root=tmp_path, environ={"NUVOM_PLUGINS__DISCOVERY__X": "1", **MEMORY})
    assert _warnings(caplog) == []
    assert kernel.config.plugin_settings("memory") == {"visibility_timeout_secs": 3.0}


DEMO_PLUGIN = """
import attrs
from nuvom_kernel import hookimpl
from nuvom_plugins.memory import MemoryJobQueue


class DemoQueue(MemoryJobQueue):
    name = "demo"


@attrs.define
class DemoSettings:
    size: int = 1


@hookimpl
def nuvom_register_queue_backends():
    return [DemoQueue]


@hookimpl
def nuvom_plugin_settings():
    return {TABLE: DemoSettings}
"""


@pytest.mark.parametrize("table", ["demoo", "Demo"])
def test_settings_declared_under_another_name_than_the_backends_are_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, table: str) -> None:
    """A plugin that registers ``demo`` but declares ``[plugins.demoo]`` leaves
    ``[plugins.demo]`` without key checks, and claims the misspelt table, so the
    unclaimed-table warning says nothing either: this one names the plugin and the fix."""
    module = f"demo_plugin_{table.lower()}"  # one per case: a module is imported once
    (tmp_path / f"{module}.py").write_text(DEMO_PLUGIN.replace("TABLE", repr(table)))
    (tmp_path / ".nuvom_plugins.toml").write_text(
        f'[plugins]\nqueue_backend = ["{module}"]\n[plugins.demo]\nsise = 2\n')
    if table == "Demo":  # its own backend's name (tables are case-insensitive): checked
        with pytest.raises(PluginConfigError, match="'sise' is not a setting of plugin 'demo'"):
            Kernel(root=tmp_path, environ=MEMORY)
        (tmp_path / ".nuvom_plugins.toml").write_text(
            f'[plugins]\nqueue_backend = ["{module}"]\n[plugins.demo]\nsize = 2\n')
        with caplog.at_level(logging.WARNING, logger="nuvom.config"):
            kernel = Kernel(root=tmp_path, environ=MEMORY)
        assert kernel.config.plugin_settings("demo") == {"size": 2}
        assert _warnings(caplog) == []
        return
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        Kernel(root=tmp_path, environ=MEMORY)  # the misspelt key passes: nothing checks it
    warnings = [w for w in _warnings(caplog) if module in w]
    assert warnings == [
        f"plugin '{module}' declares the settings of [plugins.demoo], but registers its "
        "backends as 'demo': [plugins.demo] is read without its key checks. The plugin's "
        "nuvom_plugin_settings should return {'demo': ...}."]


def test_the_cli_warns_about_an_unclaimed_table_and_runs(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.sqllite]\npath = "custom.db"\n')
    done = run_nuvom(["config"], tmp_path, **MEMORY)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("[plugins.sqllite]: no installed plugin is named 'sqllite'") == 1
    variable = run_nuvom(["config"], tmp_path, NUVOM_PLUGINS__SQLLITE__PATH="/tmp/x.db",
                         **MEMORY)
    assert variable.returncode == 0, variable.stderr
    assert "NUVOM_PLUGINS__SQLLITE__PATH: no installed plugin is named 'sqllite'" \
        in variable.stderr



def test_a_table_of_an_installed_plugin_is_no_typo_with_autoload_off(tmp_path: Path) -> None:
    """With autoload off, installed plugins are not loaded: ``[plugins.sqlite]`` was said
    to name no installed plugin, with sqlite installed. A misspelt table still is."""
    pytest.importorskip("nuvom_plugins_sqlite")
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.sqlite]\npath = "custom.db"\n\n[plugins.sqllite]\npath = "x.db"\n')
    done = run_nuvom(["config"], tmp_path, NUVOM_DISABLE_PLUGIN_AUTOLOAD="1", **MEMORY)
    assert done.returncode == 0, done.stderr
    assert "no installed plugin is named 'sqlite'" not in done.stderr, done.stderr
    assert "[plugins.sqllite]: no installed plugin is named 'sqllite'" in done.stderr


# --- NUVOM_* variables that are no setting: a warning ---------------------------------------


def test_an_unknown_variable_is_warned_with_the_closest_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"NUVOM_MAX_WORKER": "8"}
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        config = load_config(tmp_path, environ=env)
        load_config(tmp_path, environ=env)  # once per process, not per load
    assert config.settings.max_workers == 4
    assert _warnings(caplog) == [
        "environment variable NUVOM_MAX_WORKER is not a Nuvom setting (did you mean "
        "NUVOM_MAX_WORKERS?), so it is not used. `nuvom config` lists the settings and their "
        "variables (docs/configuration.md)."]


@pytest.mark.parametrize(("variable", "hint"), [
    ("NUVOM_PLUGINS_LISTQ__PATH",
     "(did you mean NUVOM_PLUGINS__LISTQ__PATH, for [plugins.listq] path?)"),
    ("NUVOM_PLUGIN__MY_Q__SIZE",
     "(did you mean NUVOM_PLUGINS__MY_Q__SIZE, for [plugins.my_q] size?)"),
    ("NUVOM_PLUGINS_LISTQ_PATH",
     "(a plugin setting is NUVOM_PLUGINS__<NAME>__<KEY>, with two underscores before each "
     "part, e.g. NUVOM_PLUGINS__SQLITE__PATH for [plugins.sqlite] path)"),
])
def test_a_plugin_variable_with_a_wrong_separator_names_the_one_meant(
        tmp_path: Path, variable: str, hint: str) -> None:
    """``NUVOM_PLUGINS_LISTQ__PATH`` (one underscore short) was called no setting, with no
    word about the plugin setting it was meant to be: the closest *setting* was all the
    warning looked for. The real ``nuvom`` warns once, on stderr."""
    done = run_nuvom(["config"], tmp_path, **{variable: "x.json"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"environment variable {variable} is not a Nuvom setting {hint}, "
                             "so it is not used.") == 1, done.stderr


def test_known_variables_are_not_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    env = {field.metadata["env"]: "1" for field in attrs.fields(Settings)
           if field.name in ("max_workers", "batch_size")}
    env |= {var: "" for var in KERNEL_VARIABLES}
    env |= {f"{TEST_VARIABLE_PREFIX}REDIS_URL": "redis://x", "NUVOM_PLUGINS__SQLITE__PATH": "q",
            "OTHER_NUVOM_THING": "1"}
    with caplog.at_level(logging.WARNING, logger="nuvom.config"):
        load_config(tmp_path, environ=env)
    assert _warnings(caplog) == []


def test_the_cli_warns_about_an_unknown_variable(tmp_path: Path) -> None:
    done = run_nuvom(["config"], tmp_path, NUVOM_MAX_WORKER="8")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: environment variable NUVOM_MAX_WORKER is not a Nuvom "
                             "setting (did you mean NUVOM_MAX_WORKERS?)") == 1, done.stderr
    assert re.search(r"^max_workers +4 ", done.stdout, re.M)


def test_every_variable_the_kernel_reads_is_documented() -> None:
    """The variables the warning treats as known are the ones docs/configuration.md lists."""
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for variable in KERNEL_VARIABLES:
        assert f"`{variable}`" in doc
    assert f"`{TEST_VARIABLE_PREFIX}`" in doc
