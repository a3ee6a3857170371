"""A port outside 0-65535 is a configuration error, refused when the configuration is
read, with exit status 2 (docs/configuration.md) like ``port=abc``: it used to pass the
load, so ``nuvom config`` showed it as valid and only ``nuvom runworker`` refused it, as
the worker prepared, with exit status 1 and the error wrapped in a ``repr()``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prom_helpers import project as project  # the fixture

from nuvom_kernel.errors import PluginConfigError
from nuvom_plugins_prometheus.settings import PrometheusSettings

ENV = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
RANGE = "must be a TCP port 1-65535, or 0 for any free one"
VAR = "NUVOM_PLUGINS__PROMETHEUS__PORT"


def _nuvom(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    return subprocess.run([sys.executable, "-m", "nuvom_kernel", *args], cwd=project,
                          env={**full, **ENV, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("value", ["70000", "65536", "-1"])
@pytest.mark.parametrize("command", [["runworker"], ["config"], ["status"]])
def test_a_port_out_of_range_in_the_environment_is_a_config_error(
        project: Path, value: str, command: list[str]) -> None:
    done = _nuvom(project, {VAR: value}, *command)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"env {VAR}: port={value!r} is invalid: it {RANGE}" in done.stderr
    assert "PluginConfigError(" not in done.stderr  # a sentence, not a repr
    assert "failed to prepare the worker" not in done.stderr  # refused before any worker


def test_a_port_out_of_range_in_the_file_names_the_variable_too(project: Path) -> None:
    (project / ".nuvom_plugins.toml").write_text("[plugins.prometheus]\nport = 70000\n")
    done = _nuvom(project, {}, "runworker")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[plugins.prometheus]: port=70000 is invalid: it " + RANGE in done.stderr
    assert VAR in done.stderr


def test_a_blank_host_is_a_config_error_too(project: Path) -> None:
    """In the file: a blank variable counts as unset (docs/configuration.md)."""
    (project / ".nuvom_plugins.toml").write_text('[plugins.prometheus]\nhost = " "\n')
    done = _nuvom(project, {VAR: "0"}, "runworker")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[plugins.prometheus]: host=' ' is invalid" in done.stderr


@pytest.mark.parametrize(("value", "port"), [(0, 0), (1, 1), (65535, 65535), ("", None),
                                             (" 9464 ", 9464), (None, None)])
def test_the_range_ends_and_unset_are_accepted(value: object, port: int | None) -> None:
    assert PrometheusSettings.parse({"port": value}).port == port


@pytest.mark.parametrize("value", [65536, -1, True, 9464.5])
def test_a_plain_mapping_gets_the_same_refusal(value: object) -> None:
    """``parse`` (a test, an embedder) runs the converter the kernel runs at load."""
    with pytest.raises(PluginConfigError) as refused:
        PrometheusSettings.parse({"port": value})
    assert f"[plugins.prometheus] port={value!r} ({VAR}) is invalid: it {RANGE}" \
        in str(refused.value)
