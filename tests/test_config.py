"""Settings sources, provenance and errors for malformed values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nuvom_kernel.config import Settings, load_config
from nuvom_kernel.errors import ConfigError, PluginConfigError


def test_defaults(tmp_path: Path):
    config = load_config(tmp_path, environ={})
    s = config.settings
    assert (s.queue_backend, s.result_backend) == ("sqlite", "sqlite")
    assert s.job_timeout_secs is None
    assert s.data_dir == Path(".nuvom")
    assert set(config.sources.values()) == {"default"}
    assert config.path is None


def test_file_then_env_precedence_and_provenance(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text(
        "[settings]\nmax_workers = 8\nbatch_size = 3\nqueue_backend = 'memory'\n")
    config = load_config(tmp_path, environ={"NUVOM_MAX_WORKERS": "2",
                                            "NUVOM_JOB_TIMEOUT_SECS": "2.5"})
    s = config.settings
    assert s.max_workers == 2 and config.sources["max_workers"] == "env NUVOM_MAX_WORKERS"
    assert s.batch_size == 3 and config.sources["batch_size"] == ".nuvom_plugins.toml [settings]"
    assert s.queue_backend == "memory"
    assert s.job_timeout_secs == 2.5
    assert config.sources["log_level"] == "default"


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("NUVOM_MAX_WORKERS", "abc", "NUVOM_MAX_WORKERS='abc' is invalid: max_workers must be a "
                                 "whole number from 1 to 10000"),
    # a digit too many started threads until the host refused, an error logged for each
    ("NUVOM_MAX_WORKERS", "99999999999999999999", "max_workers must be a whole number from "
                                                  "1 to 10000"),
    ("NUVOM_BATCH_SIZE", "0", "NUVOM_BATCH_SIZE='0'"),
    ("NUVOM_BATCH_SIZE", "100000000", "batch_size must be a whole number from 1 to 10000"),
    ("NUVOM_PREFETCH", "100001", "prefetch must be a whole number from 0 to 100000"),
    ("NUVOM_JOB_TIMEOUT_SECS", "soon", "number of seconds"),
    ("NUVOM_RETRY_DELAY_SECS", "-1", "number of seconds >= 0"),
    ("NUVOM_VISIBILITY_TIMEOUT_SECS", "0", "number of seconds > 0"),
    # accepted as > 0 once, then every claim on PostgreSQL failed: "interval out of range"
    ("NUVOM_VISIBILITY_TIMEOUT_SECS", "inf", "number of seconds > 0"),
    ("NUVOM_GRACE_PERIOD_SECS", "1e13", "at most 31622400 seconds (366 days)"),
    ("NUVOM_JOB_TIMEOUT_SECS", "-inf", "number of seconds > 0 (or none)"),
    ("NUVOM_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
])
def test_malformed_env_names_variable_and_accepted_values(tmp_path: Path, var: str,
                                                          value: str, expected: str):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={var: value})
    assert expected in str(info.value)
    assert var in str(info.value)


def test_invalid_toml_names_file_and_line(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text("[plugins]\nqueue_backend = [\n\n= broken\n")
    with pytest.raises(PluginConfigError) as info:
        load_config(tmp_path, environ={})
    text = str(info.value)
    assert ".nuvom_plugins.toml" in text and "line 4" in text


def test_toml_that_is_not_utf8_names_file_and_line(tmp_path: Path):
    """A comment saved as Latin-1 raised a UnicodeDecodeError traceback from every command."""
    (tmp_path / ".nuvom_plugins.toml").write_bytes(b"[settings]\n# caf\xe9\nworkers = 2\n")
    with pytest.raises(PluginConfigError) as info:
        load_config(tmp_path, environ={})
    text = str(info.value)
    assert ".nuvom_plugins.toml" in text and "line 2 is not UTF-8" in text, text


def test_invalid_toml_exits_2_from_cli(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text("[settings\n")
    proc = subprocess.run([sys.executable, "-m", "nuvom_kernel", "config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert ".nuvom_plugins.toml" in proc.stderr and "line 1" in proc.stderr


@pytest.mark.parametrize(("entered", "shown"), [("512", "512MB"), ("2GB", "2048MB"),
                                                ("1000000", "1000000MB")])
def test_config_shows_the_memory_limit_in_the_unit_it_is_entered_in(
        tmp_path: Path, entered: str, shown: str):
    """``--max-memory-per-child 512`` (MB) showed as 536870912, bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    proc = subprocess.run([sys.executable, "-m", "nuvom_kernel", "config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**env, "NUVOM_MAX_MEMORY_PER_CHILD": entered,
                               "NUVOM_QUEUE_BACKEND": "memory",
                               "NUVOM_RESULT_BACKEND": "memory"})
    assert proc.returncode == 0, proc.stderr
    [row] = [line.split() for line in proc.stdout.splitlines()
             if line.startswith("max_memory_per_child ")]
    assert row[1] == shown, row


def test_unknown_settings_key_and_plugins_key(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text("[settings]\nmax_worker = 3\n")
    with pytest.raises(PluginConfigError, match="max_worker"):
        load_config(tmp_path, environ={})
    (tmp_path / ".nuvom_plugins.toml").write_text("[plugins]\nqueue = ['x:y']\n")
    with pytest.raises(PluginConfigError, match=r"unknown key 'queue'.*queue_backend"):
        load_config(tmp_path, environ={})


def test_plugins_table_shape(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text(
        "[plugins]\nqueue_backend = ['a:B']\nresult_backend = 'c:D'\ndisable = ['file']\n"
        "[plugins.sqlite]\npath = 'x.db'\n")
    config = load_config(tmp_path, environ={})
    assert config.plugins.targets == {"queue_backend": ("a:B",), "result_backend": ("c:D",)}
    assert config.plugins.disable == ("file",)
    assert config.plugin_settings("sqlite") == {"path": "x.db"}
    assert config.plugin_settings("other") == {}


def test_importing_nuvom_touches_no_environment_and_reads_no_file(tmp_path: Path):
    (tmp_path / ".nuvom_plugins.toml").write_text("[settings\n")  # would raise if read
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import nuvom_kernel, nuvom_kernel.kernel, nuvom_kernel.worker, nuvom_kernel.cli\n"
        "assert dict(os.environ) == before\n"
        "assert nuvom_kernel.kernel._default is None\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NUVOM_MAX_WORKERS": "abc"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


def test_every_setting_has_an_env_var_named_after_it():
    import attrs

    for field in attrs.fields(Settings):
        assert field.metadata["env"] == "NUVOM_" + field.name.upper()


@pytest.mark.parametrize("options", [
    {"timeout_secs": float("inf")}, {"timeout_secs": float("nan")},
    {"retry_delay_secs": float("nan")}, {"retry_delay_secs": float("inf")},
    {"backoff_max_secs": float("inf")}, {"unique_for": float("inf")},
])
def test_task_durations_must_be_finite(options: dict[str, float]) -> None:
    """A NaN passes every ``< 0`` check and an infinity every ``> 0`` one; either would reach
    the wire (where JSON has no such number) or a backend's time arithmetic."""
    from nuvom_kernel.models import TaskOptions

    name = next(iter(options))
    with pytest.raises(ValueError, match=f"{name} must be a finite number|{name} must be > 0"):
        TaskOptions(**options)


@pytest.mark.parametrize(("argument", "value", "said"), [
    ("workers", 99_999, "Worker(workers=...) must be a whole number from 1 to 10000"),
    ("workers", 0, "Worker(workers=...) must be a whole number from 1 to 10000"),
    ("batch_size", 10**9, "Worker(batch_size=...) must be a whole number from 1 to 10000"),
    ("prefetch", -1, "Worker(prefetch=...) must be a whole number from 0 to 100000"),
])
def test_a_workers_arguments_are_bounded_as_its_settings(tmp_path: Path, argument: str,
                                                         value: int, said: str) -> None:
    """The settings refuse a worker of 10^20 threads; ``Worker(workers=...)`` took it (and
    ``workers=-1`` started none), as the CLI's bounds were the settings' alone."""
    from nuvom_kernel import Worker
    from nuvom_kernel.kernel import Kernel

    kernel = Kernel(root=tmp_path, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                            "NUVOM_RESULT_BACKEND": "memory"})
    try:
        with pytest.raises(ValueError) as info:
            Worker(kernel, **{argument: value})
        assert str(info.value) == f"{said} (e.g. 4); got {value!r}"
        assert Worker(kernel, workers=3, prefetch=0).workers == 3
    finally:
        kernel.close()


@pytest.mark.parametrize(("toml", "said"), [
    # a setting of plugin sqlite written as a key: "must be a list of strings" sent the
    # user the wrong way
    ("[plugins]\nsqlite = 5\n", "[plugins] has unknown key 'sqlite'. Known capability keys"),
    ("settings = 5\n", "[settings] must be a table, got 5: write `[settings]` on a line of "
                       "its own"),
    ('plugins = "x"\n', "[plugins] must be a table, got 'x': write `[plugins]` on a line of "
                        "its own"),
])
def test_a_toml_table_written_as_a_value_is_told_how_to_write_it(tmp_path: Path, toml: str,
                                                                   said: str) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert said in str(info.value)
