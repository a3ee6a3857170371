"""Settings: defaults < the ``[settings]`` table of ``.nuvom_plugins.toml`` < ``NUVOM_*`` env.

Everything is read explicitly by :func:`load_config`; importing Nuvom reads no file and never
changes ``os.environ``. Each value remembers where it came from, which is what ``nuvom config``
prints.

``.nuvom_plugins.toml`` is the one file a user edits::

    [settings]                 # core settings, same names as the fields of Settings
    queue_backend = "sqlite"

    [plugins]                  # capability = ["module:attr", ...]; checked
    queue_backend = ["my_module:MyQueuePlugin"]
    disable = ["file"]         # plugin names never to load

    [plugins.sqlite]           # per-plugin settings, handed to that plugin / backend
    path = ".nuvom/nuvom.db"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from nuvom_kernel.errors import ConfigError, PluginConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["CAPABILITIES", "Config", "PluginsTable", "Settings", "load_config"]

PLUGINS_FILE = ".nuvom_plugins.toml"

#: ``[plugins]`` keys that name a capability, and the registration hook a target listed under
#: that key must implement (``None``: any hook will do).
CAPABILITIES: dict[str, str | None] = {
    "queue_backend": "nuvom_register_queue_backends",
    "result_backend": "nuvom_register_result_backends",
    "discoverer": "nuvom_register_discoverers",
    "serializer": "nuvom_register_serializers",
    "hooks": None,
}


def _positive_int(name: str, value: Any) -> int:
    try:
        number = _int(name, value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError("must be a whole number >= 1 (e.g. 4)")
    return number


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def _optional_non_negative_int(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        number = _int(name, value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError("must be a whole number >= 0 (e.g. 4), or empty for the default")
    return number


def _non_negative_float(name: str, value: Any) -> float:
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if number < 0 or number != number:
        raise ValueError("must be a number of seconds >= 0")
    return number


def _positive_float(name: str, value: Any) -> float:
    number = _non_negative_float(name, value)
    if number == 0:
        raise ValueError("must be a number of seconds > 0")
    return number


def _optional_positive_float(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _positive_float(name, value)


def _name(name: str, value: Any) -> str:
    text = str(value).strip().lower()
    if not text:
        raise ValueError("must be a non-empty backend name")
    return text


def _log_level(name: str, value: Any) -> str:
    text = str(value).strip().upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return text


def _path(name: str, value: Any) -> Path:
    text = str(value).strip()
    if not text:
        raise ValueError("must be a non-empty path")
    return Path(text)


def _setting(default: Any, env: str, parse: Callable[[str, Any], Any], doc: str) -> Any:
    return attrs.field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@attrs.frozen
class Settings:
    """Core settings. ``docs/configuration.md`` documents each one (a test keeps them equal)."""

    queue_backend: str = _setting("sqlite", "NUVOM_QUEUE_BACKEND", _name,
                                  "Name of the queue backend plugin to use.")
    result_backend: str = _setting("sqlite", "NUVOM_RESULT_BACKEND", _name,
                                   "Name of the result backend plugin to use.")
    max_workers: int = _setting(4, "NUVOM_MAX_WORKERS", _positive_int,
                                "Worker threads in `nuvom runworker`.")
    batch_size: int = _setting(16, "NUVOM_BATCH_SIZE", _positive_int,
                               "Most jobs leased in one `pop_batch` (never more than free "
                               "worker threads).")
    job_timeout_secs: float | None = _setting(
        None, "NUVOM_JOB_TIMEOUT_SECS", _optional_positive_float,
        "Default per-job timeout for tasks that set none; unset means no timeout.")
    retry_delay_secs: float = _setting(5.0, "NUVOM_RETRY_DELAY_SECS", _non_negative_float,
                                       "Default delay before a failed job's next attempt.")
    visibility_timeout_secs: float = _setting(
        30.0, "NUVOM_VISIBILITY_TIMEOUT_SECS", _positive_float,
        "How long a leased job stays invisible to other workers without a lease extension.")
    grace_period_secs: float = _setting(
        30.0, "NUVOM_GRACE_PERIOD_SECS", _non_negative_float,
        "How long the first SIGINT/SIGTERM waits for running jobs before stopping.")
    max_deliveries: int = _setting(
        20, "NUVOM_MAX_DELIVERIES", _positive_int,
        "A job delivered this many times without an outcome (its worker crashed or was "
        "killed each time) is failed; attempts that raised or timed out do not count.")
    max_abandoned_threads: int | None = _setting(
        None, "NUVOM_MAX_ABANDONED_THREADS", _optional_non_negative_int,
        "Most threads a worker leaves behind in timed-out tasks before it stops leasing "
        "until one returns; unset means as many as worker threads.")
    unknown_task_grace_secs: float = _setting(
        0.0, "NUVOM_UNKNOWN_TASK_GRACE_SECS", _non_negative_float,
        "How long after enqueue a job whose task this worker's module lacks is handed back "
        "for a newer worker (a rolling deploy); 0 fails such a job at once.")
    data_dir: Path = _setting(Path(".nuvom"), "NUVOM_DATA_DIR", _path,
                              "Where built-in backends keep their files; relative to the "
                              "working directory.")
    serializer: str = _setting("json", "NUVOM_SERIALIZER", _name,
                               "Codec for job payloads (a serializer plugin name).")
    log_level: str = _setting("INFO", "NUVOM_LOG_LEVEL", _log_level,
                              "Logging level of the `nuvom` CLI and workers.")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in attrs.fields(cls)]


@attrs.frozen
class PluginsTable:
    """The ``[plugins]`` table: targets per capability, disabled names, per-plugin settings."""

    targets: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    disable: tuple[str, ...] = ()
    settings: dict[str, dict[str, Any]] = attrs.field(factory=dict)


@attrs.frozen
class Config:
    """Effective configuration: settings, where each came from, and the plugins table."""

    settings: Settings
    sources: dict[str, str]
    plugins: PluginsTable
    path: Path | None  # the .nuvom_plugins.toml read, if any
    root: Path

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table (empty if absent)."""
        return dict(self.plugins.settings.get(name, {}))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise PluginConfigError(
            f"{path}: not valid TOML: {exc}. Fix the line named above; "
            f"the format is described in docs/configuration.md."
        ) from exc


def _parse_plugins(path: Path, table: Any) -> PluginsTable:
    if not isinstance(table, dict):
        raise PluginConfigError(f"{path}: [plugins] must be a table")
    targets: dict[str, tuple[str, ...]] = {}
    settings: dict[str, dict[str, Any]] = {}
    disable: tuple[str, ...] = ()
    for key, value in table.items():
        if isinstance(value, dict):
            settings[key] = value
            continue
        values = (value,) if isinstance(value, str) else value
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise PluginConfigError(
                f"{path}: [plugins] {key} must be a string or a list of strings, "
                f"got {value!r}"
            )
        if key == "disable":
            disable = tuple(values)
        elif key in CAPABILITIES:
            targets[key] = tuple(values)
        else:
            raise PluginConfigError(
                f"{path}: [plugins] has unknown key {key!r}. Known capability keys: "
                f"{', '.join(sorted(CAPABILITIES))}; also 'disable' (a list of plugin names) "
                f"and [plugins.<name>] tables for per-plugin settings."
            )
    return PluginsTable(targets=targets, disable=disable, settings=settings)


def load_config(
    root: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``.nuvom_plugins.toml`` under ``root`` (default: cwd) and ``NUVOM_*`` variables.

    :raises ConfigError: naming the variable or key and what it accepts.
    :raises PluginConfigError: for a file that is not valid TOML (with its line).
    """
    root = Path(root) if root is not None else Path.cwd()
    env = os.environ if environ is None else environ
    path = root / PLUGINS_FILE
    data = _read_toml(path) if path.is_file() else {}
    file_settings = data.get("settings", {})
    if not isinstance(file_settings, dict):
        raise PluginConfigError(f"{path}: [settings] must be a table")
    unknown = set(file_settings) - set(Settings.field_names())
    if unknown:
        raise PluginConfigError(
            f"{path}: [settings] has unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(Settings.field_names())}"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in attrs.fields(Settings):
        parse = field.metadata["parse"]
        var = field.metadata["env"]
        if var in env:
            raw, where = env[var], f"env {var}"
        elif field.name in file_settings:
            raw, where = file_settings[field.name], f"{path.name} [settings]"
        else:
            sources[field.name] = "default"
            continue
        try:
            values[field.name] = parse(field.name, raw)
        except ValueError as exc:
            raise ConfigError(
                f"{where} {field.name}={raw!r} is invalid: it {exc}."
                if where.endswith("]")
                else f"{var}={raw!r} is invalid: {field.name} {exc}."
            ) from None
        sources[field.name] = where
    plugins = _parse_plugins(path, data.get("plugins", {}))
    return Config(settings=Settings(**values), sources=sources, plugins=plugins,
                  path=path if path.is_file() else None, root=root)
