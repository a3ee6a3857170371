"""Plugin settings from the environment (issue 12, point 3), walked as docs/configuration.md
says: ``NUVOM_PLUGINS__<NAME>__<KEY>`` overrides ``[plugins.<name>] <key>``, typed through the
plugin's declared schema; unknown keys and bad values stop ``nuvom`` with exit status 2 and an
error naming the variable or table, the key and the valid keys; ``nuvom config`` lists every
plugin setting with its source and masks passwords.

The end-to-end tests set real environment variables on real ``nuvom`` and Python processes.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import attrs
import pytest

from nuvom_kernel import hookimpl
from nuvom_kernel.config import PluginSchema, load_config, mask_secret
from nuvom_kernel.errors import PluginConfigError, PluginLoadError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugin_settings import schema_of, scrub_secret
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.values import Converted, Seconds, SecondsOrZero, whole
from tests.helpers import run_nuvom, user_env

TASKS = "from nuvom_kernel import task\n\n\n@task\ndef add(x, y):\n    return x + y\n"


def _config_json(project: Path, **env: str) -> dict[str, Any]:
    done = run_nuvom(["config", "--json"], project, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _plugin_row(report: dict[str, Any], plugin: str, key: str) -> dict[str, Any]:
    [row] = [r for r in report["plugins"] if (r["plugin"], r["key"]) == (plugin, key)]
    return row


def test_env_path_reaches_the_sqlite_backend(tmp_path: Path) -> None:
    """The issue's example, ``NUVOM_PLUGINS__SQLITE__PATH=/data/q.db``: the file table says
    one path, the variable another; the job lands in the variable's database."""
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.sqlite]\npath = "from_file.db"\n')
    wanted = tmp_path / "data" / "q.db"
    enqueue = subprocess.run(
        [sys.executable, "-c", "from tasks import add; print(add.delay(2, 3).id)"],
        cwd=tmp_path, env=user_env(NUVOM_PLUGINS__SQLITE__PATH=str(wanted)),
        capture_output=True, text=True, timeout=60, check=False)
    assert enqueue.returncode == 0, enqueue.stderr
    assert wanted.exists() and not (tmp_path / "from_file.db").exists()

    status = run_nuvom(["status", "--json"], tmp_path,
                       NUVOM_PLUGINS__SQLITE__PATH=str(wanted))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["depth"] == {"default": 1}
    assert json.loads(run_nuvom(["status", "--json"], tmp_path).stdout)["depth"] == {}, \
        "without the variable, nuvom reads the file's path: the job is not there"

    report = _config_json(tmp_path, NUVOM_PLUGINS__SQLITE__PATH=str(wanted))
    row = _plugin_row(report, "sqlite", "path")
    assert row == {"plugin": "sqlite", "key": "path", "value": str(wanted),
                   "env": "NUVOM_PLUGINS__SQLITE__PATH",
                   "source": "env NUVOM_PLUGINS__SQLITE__PATH"}


def test_file_value_is_listed_with_its_table_and_unset_keys_as_default(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.sqlite]\npath = "q.db"\nsynchronous = "FULL"\n')
    report = _config_json(tmp_path)
    assert _plugin_row(report, "sqlite", "synchronous")["source"] == \
        f"{tmp_path / '.nuvom_plugins.toml'} [plugins.sqlite]"
    assert _plugin_row(report, "sqlite", "busy_timeout_secs") == {
        "plugin": "sqlite", "key": "busy_timeout_secs", "value": None,
        "env": "NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS", "source": "default"}


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("NUVOM_PLUGINS__SQLITE__PTH", "/data/q.db", "'pth' is not a setting of plugin 'sqlite'"),
    ("NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS", "soon", "busy_timeout_secs='soon' is invalid"),
    ("NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS", "inf", "must be a finite number"),
    ("NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS", "1e400", "must be a finite number"),
    ("NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS", "nan", "must be a finite number"),
    ("NUVOM_PLUGINS__FILE__FSYNC", "maybe", "fsync='maybe' is invalid: it must be true or "
                                            "false"),
])
def test_bad_env_setting_stops_every_command(tmp_path: Path, var: str, value: str,
                                             expected: str) -> None:
    done = run_nuvom(["status"], tmp_path, **{var: value})
    assert done.returncode == 2, done.stdout + done.stderr
    assert var in done.stderr and expected in done.stderr
    plugin = var.split("__")[1].lower()
    valid = {"sqlite": "busy_timeout_secs, path, result_ttl_secs, results_path, synchronous",
             "file": "fsync, path, queue_path"}[plugin]
    assert "Valid keys" in done.stderr and valid in done.stderr


def test_config_refuses_a_bad_synchronous_as_every_command_does(tmp_path: Path) -> None:
    """``nuvom config`` showed ``OFF`` and exited 0: only opening the store checked it."""
    for command in (["config"], ["status"]):
        done = run_nuvom(command, tmp_path, NUVOM_PLUGINS__SQLITE__SYNCHRONOUS="OFF")
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert ("NUVOM_PLUGINS__SQLITE__SYNCHRONOUS: synchronous='OFF' is invalid: it must "
                "be NORMAL (default) or FULL") in done.stderr, (command, done.stderr)


def test_unknown_key_in_the_file_names_the_table(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.sqlite]\nbusy_timeout = 5\n')
    done = run_nuvom(["config"], tmp_path)
    assert done.returncode == 2
    assert f"{tmp_path / '.nuvom_plugins.toml'} [plugins.sqlite]" in done.stderr
    assert "'busy_timeout' is not a setting" in done.stderr
    assert "busy_timeout_secs" in done.stderr


def test_malformed_variable_name_is_explained(tmp_path: Path) -> None:
    done = run_nuvom(["config"], tmp_path, NUVOM_PLUGINS__SQLITE="x.db")
    assert done.returncode == 2
    assert "NUVOM_PLUGINS__SQLITE is not a plugin setting" in done.stderr
    assert "NUVOM_PLUGINS__<NAME>__<KEY>" in done.stderr


def test_config_masks_passwords_of_undeclared_plugins(tmp_path: Path) -> None:
    """A plugin that is not installed (or declares no schema) still gets its variables
    listed, as strings, and a password in a URL or DSN never reaches the terminal."""
    env = {"NUVOM_PLUGINS__REDIS__URL": "redis://worker:s3cret@cache:6379/0",
           "NUVOM_PLUGINS__PG__DSN": "host=db user=app password=hunter2 dbname=jobs",
           "NUVOM_PLUGINS__PG__PASSWORD": "hunter2"}
    table = run_nuvom(["config"], tmp_path, **env)
    assert table.returncode == 0, table.stderr
    assert "s3cret" not in table.stdout and "hunter2" not in table.stdout
    assert "redis://worker:***@cache:6379/0" in table.stdout
    assert "host=db user=app password=*** dbname=jobs" in table.stdout
    report = _config_json(tmp_path, **env)
    assert _plugin_row(report, "redis", "url")["source"] == "env NUVOM_PLUGINS__REDIS__URL"
    assert _plugin_row(report, "pg", "password")["value"] == "***"


@pytest.mark.parametrize(("key", "value", "masked"), [
    ("url", "postgresql://app:p%40ss@db/jobs?sslmode=require",
     "postgresql://app:***@db/jobs?sslmode=require"),
    ("url", "redis://:onlypass@host", "redis://:***@host"),
    ("url", "redis://host:6379/0", "redis://host:6379/0"),
    ("dsn", "dbname=x password='a b' host=y", "dbname=x password=*** host=y"),
    ("api_key", "abc", "***"),
    ("path", "/data/q.db", "/data/q.db"),
    # a password in the query string (redis-py and libpq take it there) was shown
    ("url", "redis://127.0.0.1:6379/13?password=S3cret", "redis://127.0.0.1:6379/13?password=***"),
    ("url", "unix:///tmp/r.sock?db=0&password=S3cret&x=1", "unix:///tmp/r.sock?db=0&password=***&x=1"),
    ("dsn", "postgresql://pg@h/x?sslmode=require&password=S3cret",
     "postgresql://pg@h/x?sslmode=require&password=***"),
    ("url", "redis://u:p@ss@h?password=S3cret", "redis://u:***@h?password=***"),
    # libpq's escaped quote ended the match early: "password=***SECRET'"
    ("dsn", r"host=h password='a\'S3cret' dbname=x", "host=h password=*** dbname=x"),
    # a URL that does not parse was shown whole
    ("url", "redis://:p[ss@host:6379/0", "redis://***"),
    # a '#', '?' or '/' in the password: read as a fragment, a query or a path, and shown
    # whole (libpq and redis-py accept '#' and '?'), by config, status and the worker
    ("dsn", "postgresql://pg:SeCr#tPW@127.0.0.1/db", "postgresql://pg:***@127.0.0.1/db"),
    ("dsn", "postgresql://pg:SeCr?tPW@127.0.0.1/db", "postgresql://pg:***@127.0.0.1/db"),
    ("dsn", "postgres://pg:SeCr/tPW@h/db", "postgres://pg:***@h/db"),
    ("url", "redis://:SeCr#tPW@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("dsn", "postgresql:///db?host=/tmp&user=a@b", "postgresql:///db?host=/tmp&user=a@b"),
])
def test_mask_secret(key: str, value: str, masked: str) -> None:
    assert mask_secret(key, value) == masked


def test_scrub_secret_takes_the_password_and_its_pieces_out_of_a_message() -> None:
    """redis-py's complaint about ``redis://:SeCr#tPW@...`` quoted 'SeCr' as a port."""
    url = "redis://:SeCr#tPW@127.0.0.1:6379/0"
    assert scrub_secret("Port could not be cast to integer value as 'SeCr'", url) == \
        "Port could not be cast to integer value as '***'"
    assert scrub_secret(f"bad URL {url!r}", url) == "bad URL 'redis://***@127.0.0.1:6379/0'"
    assert scrub_secret("nothing secret here", "redis://h:6379/0") == "nothing secret here"


# --- the schema, in process -----------------------------------------------------------------


@attrs.frozen
class _AttrsSchema:
    url: str
    pool_size: int = 4
    timeout_secs: float = 1.0
    tls: bool = False
    ca_file: Path | None = None


@dataclasses.dataclass
class _DataclassSchema:
    url: str = ""


@pytest.mark.parametrize("schema", [_AttrsSchema, _DataclassSchema])
def test_schema_from_attrs_or_dataclass(schema: type) -> None:
    assert "url" in PluginSchema.from_class("x", schema).fields


def test_environment_strings_are_converted_and_override_the_file(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.demo]\nurl = "redis://file"\npool_size = 2\ntls = true\n')
    config = load_config(tmp_path, environ={
        "NUVOM_PLUGINS__DEMO__POOL_SIZE": "8", "NUVOM_PLUGINS__DEMO__TLS": "off",
        "NUVOM_PLUGINS__DEMO__TIMEOUT_SECS": "0.5", "NUVOM_PLUGINS__DEMO__CA_FILE": ""})
    assert config.plugin_settings("demo")["pool_size"] == "8", "no schema yet: strings"
    config.declare_plugin_settings({"demo": _AttrsSchema})
    assert config.plugin_settings("demo") == {"url": "redis://file", "pool_size": 8,
                                              "tls": False, "timeout_secs": 0.5}


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    """``NUVOM_PLUGINS__SQLITE__PATH=`` (an unfilled ``${VAR}``) was refused as an empty
    path where the docs say an empty key means the default: the file's value applies, else
    the default. A key that exists nowhere is still a typo, empty or not."""
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[settings]\nmax_workers = 8\n[plugins.demo]\nurl = "redis://file"\npool_size = 2\n')
    config = load_config(tmp_path, environ={
        "NUVOM_PLUGINS__DEMO__POOL_SIZE": "", "NUVOM_PLUGINS__DEMO__TIMEOUT_SECS": " ",
        "NUVOM_MAX_WORKERS": "", "NUVOM_BATCH_SIZE": ""})
    config.declare_plugin_settings({"demo": _AttrsSchema})
    assert config.plugin_settings("demo") == {"url": "redis://file", "pool_size": 2}
    assert config.settings.max_workers == 8 and config.sources["max_workers"].endswith(
        "[settings]")
    assert config.settings.batch_size == 32 and config.sources["batch_size"] == \
        "default (env empty)"
    rows = {row.key: row.source for row in config.plugin_setting_rows() if row.plugin == "demo"}
    assert rows["timeout_secs"] == "default (env empty)", rows
    assert rows["pool_size"].endswith("[plugins.demo]") and rows["tls"] == "default", rows
    typo = load_config(tmp_path, environ={"NUVOM_PLUGINS__DEMO__POOL_SIZ": ""})
    with pytest.raises(PluginConfigError, match="'pool_siz' is not a setting of plugin 'demo'"):
        typo.declare_plugin_settings({"demo": _AttrsSchema})


def test_unsupported_field_type_is_refused_at_declaration() -> None:
    @attrs.frozen
    class Bad:
        hosts: list[str]

    with pytest.raises(PluginConfigError, match=r"'hosts' the type .*list\[str\].*use str"):
        PluginSchema.from_class("bad", Bad)


class _Declares:
    def __init__(self, schema: type) -> None:
        self.schema = schema

    @hookimpl
    def nuvom_plugin_settings(self) -> dict[str, type]:
        return {"demo": self.schema}


def test_one_schema_per_table_name(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    pm = NuvomPluginManager()
    pm.register(_Declares(_AttrsSchema), name="first")
    pm.register(_Declares(_DataclassSchema), name="second")
    with pytest.raises(PluginLoadError, match=r"both declare the settings of "
                                              r"\[plugins\.demo\]") as info:
        pm.load(config, environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "'first'" in str(info.value) and "'second'" in str(info.value)


def test_a_shared_key_reaches_both_sqlite_backends(tmp_path: Path) -> None:
    """One schema per plugin covers its queue and its result backend alike."""
    kernel = Kernel(root=tmp_path, environ={"NUVOM_PLUGINS__SQLITE__SYNCHRONOUS": "FULL",
                                            "NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS": "7"})
    try:
        assert kernel.queue.settings.synchronous == "FULL"  # type: ignore[attr-defined]
        assert kernel.results.settings.synchronous == "FULL"  # type: ignore[attr-defined]
        assert kernel.results.settings.busy_timeout_secs == 7.0  # type: ignore[attr-defined]
    finally:
        kernel.close()


def test_two_variables_of_one_setting_differing_in_case_are_refused(tmp_path: Path) -> None:
    """``NUVOM_PLUGINS__SQLITE__PATH`` and ``NUVOM_PLUGINS__sqlite__path``: the last in
    sorted order silently won (the file's equivalent, two tables differing in case, is an
    error)."""
    done = run_nuvom(["config"], tmp_path, NUVOM_PLUGINS__SQLITE__PATH="/a.db",
                     NUVOM_PLUGINS__sqlite__path="/b.db")
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("NUVOM_PLUGINS__SQLITE__PATH and NUVOM_PLUGINS__sqlite__path set the same "
            "plugin setting") in done.stderr


@pytest.mark.parametrize(("args", "flag"), [
    (["--grace-period", "nan"], "--grace-period"), (["--grace-period", "inf"], "--grace-period"),
    (["--max-child-age", "inf"], "--max-child-age"), (["--max-child-age", "0"], "--max-child-age"),
])
def test_runworker_refuses_durations_no_setting_takes(tmp_path: Path, args: list[str],
                                                      flag: str) -> None:
    """click's FloatRange let NaN and infinity through where the variables refuse them."""
    done = run_nuvom(["runworker", *args], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Invalid value for '{flag}'" in done.stderr


def test_a_namespace_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """``namespace = ["a", "b"]`` became the namespace "['a', 'b']"."""
    (tmp_path / ".nuvom_plugins.toml").write_text('[settings]\nnamespace = ["a", "b"]\n')
    done = run_nuvom(["status"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "namespace=['a', 'b'] is invalid: it must be a string" in done.stderr


# --- checks carried by an annotation (values.Seconds, Converted) --------------------------


def test_a_declared_duration_is_checked_at_load_and_by_the_plugin_alike(
        tmp_path: Path) -> None:
    """A plugin's ``Seconds`` field is refused at load (every command, the kernel's words),
    and ``schema_of(...).check`` gives a backend built from a plain mapping the same check:
    four plugins had each written "finite, > 0, at most 366 days" themselves, one of them
    (the kernel's float check) letting ``1e13`` through to fail at run time."""
    @attrs.frozen
    class Timed:
        wait_secs: Seconds = 5.0
        grace_secs: SecondsOrZero | None = None
        level: Annotated[int, Converted(whole(1))] = 1
        label: Annotated[str, "a note for the reader only"] = "x"

    (tmp_path / ".nuvom_plugins.toml").write_text("[plugins.timed]\nwait_secs = 1e13\n")
    config = load_config(tmp_path, environ={"NUVOM_PLUGINS__TIMED__GRACE_SECS": "0"})
    with pytest.raises(PluginConfigError) as refused:
        config.declare_plugin_settings({"timed": Timed})
    assert "[plugins.timed]: wait_secs=10000000000000.0 is invalid: it must be a finite " \
        "number of seconds > 0 and at most 31622400 seconds (366 days)" in str(refused.value)

    schema = schema_of("timed", Timed)
    assert schema.check({"wait_secs": "2.5", "grace_secs": "0", "level": " 3 ",
                         "label": "y"}) == {
        "wait_secs": 2.5, "grace_secs": 0.0, "level": 3, "label": "y"}
    assert schema.check({"wait_secs": None}) == {}  # None: the default
    with pytest.raises(PluginConfigError, match="'wait' is not a setting of plugin 'timed'"):
        schema.check({"wait": None})  # a misspelt key is refused, whatever its value
    for key, value, says in [("wait_secs", "inf", "finite number of seconds > 0"),
                             ("wait_secs", 0, "finite number of seconds > 0"),
                             ("grace_secs", -1, "finite number of seconds >= 0"),
                             ("level", 0, "whole number >= 1")]:
        with pytest.raises(PluginConfigError) as bad:
            schema.check({key: value})
        assert str(bad.value).startswith(
            f"[plugins.timed] {key}={value!r} (NUVOM_PLUGINS__TIMED__{key.upper()}) is "
            f"invalid: it must be a") and says in str(bad.value), bad.value
