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

A ``[plugins.<name>] <key>`` is overridden by ``NUVOM_PLUGINS__<NAME>__<KEY>`` (the 12-factor
way to hand a worker its DSN without writing it into a file). Environment values are strings;
a plugin that declares its settings (hook ``nuvom_plugin_settings``) has them converted to the
declared types and checked, so ``NUVOM_PLUGINS__SQLITE__BUSY_TIMEOUT_SECS=5`` reaches the
backend as ``5.0`` and a typo in a key fails at startup instead of being ignored.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from nuvom_kernel import values
from nuvom_kernel.errors import ConfigError, PluginConfigError
from nuvom_kernel.hints import did_you_mean, warn_once
from nuvom_kernel.plugin_settings import (
    PLUGIN_ENV_PREFIX,
    PluginSchema,
    PluginSetting,
    mask_secret,
    plugin_env,
    plugin_env_var,
    plugin_variable_hint,
)
from nuvom_kernel.values import to_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "AUTOLOAD_VAR",
    "CAPABILITIES",
    "DISABLE_VAR",
    "KERNEL_VARIABLES",
    "PLUGIN_ENV_PREFIX",
    "TEST_VARIABLE_PREFIX",
    "Config",
    "PluginSchema",
    "PluginsTable",
    "Settings",
    "load_config",
    "mask_secret",
    "unknown_variables",
    "warn_once",  # (now in hints: still importable from here)
]

log = logging.getLogger("nuvom.config")

PLUGINS_FILE = ".nuvom_plugins.toml"

#: The top-level tables of ``.nuvom_plugins.toml`` and what each holds; any other is refused
#: (a ``[setting]`` typo would otherwise be ignored, its values silently the defaults).
TABLES: dict[str, str] = {
    "settings": "core settings",
    "plugins": "plugin targets, disable, and [plugins.<name>] per-plugin settings",
}

#: The most jobs one worker runs at once, and leases in one claim or ahead of its free
#: slots: far above any host's useful concurrency, and below what makes a typo (a digit too
#: many) start threads until the host refuses them.
MAX_WORKERS = 10_000
MAX_BATCH_SIZE = 10_000
MAX_PREFETCH = 100_000

#: Plugin names never to load (adds to ``[plugins] disable``); read by the plugin manager.
DISABLE_VAR = "NUVOM_DISABLE_PLUGINS"
#: When set (non-empty), installed distributions' entry points are not loaded.
AUTOLOAD_VAR = "NUVOM_DISABLE_PLUGIN_AUTOLOAD"
#: ``NUVOM_*`` variables the kernel reads besides the settings and ``NUVOM_PLUGINS__*``.
KERNEL_VARIABLES: frozenset[str] = frozenset({DISABLE_VAR, AUTOLOAD_VAR})
#: ``NUVOM_TEST_*`` variables configure Nuvom's own test suites and benchmarks (the server
#: URLs they use), never Nuvom itself: not warned about.
TEST_VARIABLE_PREFIX = "NUVOM_TEST_"

#: ``[plugins]`` keys that name a capability, and the registration hook a target listed under
#: that key must implement (``None``: any hook will do).
CAPABILITIES: dict[str, str | None] = {
    "queue_backend": "nuvom_register_queue_backends",
    "result_backend": "nuvom_register_result_backends",
    "discoverer": "nuvom_register_discoverers",
    "serializer": "nuvom_register_serializers",
    "hooks": None,
}


def _setting(default: Any, env: str, parse: Callable[[Any], Any], doc: str) -> Any:
    return attrs.field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@attrs.frozen
class Settings:
    """Core settings. ``docs/configuration.md`` documents each one (a test keeps them equal)."""

    queue_backend: str = _setting("sqlite", "NUVOM_QUEUE_BACKEND", values.backend_name,
                                  "Name of the queue backend plugin to use.")
    result_backend: str = _setting("sqlite", "NUVOM_RESULT_BACKEND", values.backend_name,
                                   "Name of the result backend plugin to use.")
    max_workers: int = _setting(4, "NUVOM_MAX_WORKERS", values.whole(1, maximum=MAX_WORKERS),
                                "Worker threads in `nuvom runworker`.")
    batch_size: int = _setting(32, "NUVOM_BATCH_SIZE", values.whole(1, maximum=MAX_BATCH_SIZE),
                               "Most jobs leased in one `pop_batch`.")
    prefetch: int = _setting(64, "NUVOM_PREFETCH", values.whole(0, maximum=MAX_PREFETCH),
                             "Most jobs a worker claims ahead of its free threads, while jobs "
                             "are short (0: claim only for free threads).")
    job_timeout_secs: float | None = _setting(
        None, "NUVOM_JOB_TIMEOUT_SECS", values.seconds(zero_ok=False, none_ok=True),
        "Default per-job timeout for tasks that set none; unset means no timeout.")
    retry_delay_secs: float = _setting(5.0, "NUVOM_RETRY_DELAY_SECS", values.seconds(zero_ok=True),
                                       "Default delay before a failed job's next attempt.")
    visibility_timeout_secs: float = _setting(
        30.0, "NUVOM_VISIBILITY_TIMEOUT_SECS", values.seconds(zero_ok=False),
        "How long a leased job stays invisible to other workers without a lease extension.")
    grace_period_secs: float = _setting(
        30.0, "NUVOM_GRACE_PERIOD_SECS", values.seconds(zero_ok=True),
        "How long the first SIGINT/SIGTERM waits for running jobs before stopping.")
    max_deliveries: int = _setting(
        20, "NUVOM_MAX_DELIVERIES", values.whole(1),
        "A job delivered this many times without an outcome (its worker crashed or was "
        "killed each time) is failed; attempts that raised or timed out do not count.")
    max_abandoned_threads: int | None = _setting(
        None, "NUVOM_MAX_ABANDONED_THREADS", values.whole(0, none_ok=True),
        "Most threads a worker leaves behind in timed-out tasks before it stops leasing "
        "until one returns; unset means as many as worker threads.")
    pool: str = _setting("thread", "NUVOM_POOL", values.choice("thread", "process", "asyncio"),
                         "What runs a job's function in `nuvom runworker`: `thread`, "
                         "`process` (hard timeouts, recycling) or `asyncio`.")
    kill_grace_secs: float = _setting(
        5.0, "NUVOM_KILL_GRACE_SECS", values.seconds(zero_ok=True),
        "Process pool: how long a timed-out job's child has to stop after the soft timeout "
        "before it is killed with SIGKILL. Asyncio pool: how long a cancelled coroutine has "
        "to end before its attempt is recorded as timed out and the task given up.")
    max_tasks_per_child: int | None = _setting(
        None, "NUVOM_MAX_TASKS_PER_CHILD", values.whole(1, none_ok=True),
        "Process pool: replace a child after this many jobs; unset means never.")
    max_memory_per_child: int | None = _setting(
        None, "NUVOM_MAX_MEMORY_PER_CHILD", values.parse_size,
        "Process pool: a child whose RSS passes this (`512MB`, `2GB`; a bare number means "
        "MB) is killed while it runs a job, or replaced after one; unset means no limit.")
    max_child_age_secs: float | None = _setting(
        None, "NUVOM_MAX_CHILD_AGE_SECS", values.seconds(zero_ok=False, none_ok=True),
        "Process pool: replace a child after its job once it is this old; unset means never.")
    unknown_task_grace_secs: float = _setting(
        0.0, "NUVOM_UNKNOWN_TASK_GRACE_SECS", values.seconds(zero_ok=True),
        "How long after enqueue a job whose task this worker's module lacks is handed back "
        "for a newer worker (a rolling deploy); 0 fails such a job at once.")
    heartbeat_secs: float = _setting(
        5.0, "NUVOM_HEARTBEAT_SECS", values.seconds(zero_ok=False),
        "How often a worker records its heartbeat in the result backend; `nuvom status` "
        "drops a worker that missed three.")
    data_dir: Path = _setting(Path(".nuvom"), "NUVOM_DATA_DIR", to_path,
                              "Where built-in backends keep their files; relative to the "
                              "working directory.")
    namespace: str = _setting(
        "", "NUVOM_NAMESPACE", lambda value: values.to_str(value).strip(),
        "Added to the name of every key or schema a server backend creates (Redis: "
        "`<key_prefix>:<namespace>:…`; PostgreSQL: schema `<schema>_<namespace>`), so apps or "
        "test runs sharing one server never see each other's jobs (PostgreSQL refuses a "
        "second namespace that folds to the same schema name); empty: none.")
    serializer: str = _setting("json", "NUVOM_SERIALIZER", values.backend_name,
                               "Codec for job payloads (a serializer plugin name).")
    log_level: str = _setting("INFO", "NUVOM_LOG_LEVEL", values.log_level,
                              "Logging level of the `nuvom` CLI and workers.")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in attrs.fields(cls)]


@attrs.frozen
class PluginsTable:
    """The ``[plugins]`` table: targets per capability, disabled names, per-plugin settings.

    :param settings: the ``[plugins.<name>]`` tables as written in the file.
    :param env: ``NUVOM_PLUGINS__<NAME>__<KEY>`` overrides: name -> key -> (variable, value).
    """

    targets: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    disable: tuple[str, ...] = ()
    settings: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    env: dict[str, dict[str, tuple[str, str]]] = attrs.field(factory=dict)


@attrs.frozen
class Config:
    """Effective configuration: settings, where each came from, and the plugins table.

    ``schemas`` starts empty: plugins declare their settings when they are loaded, after
    the file and the environment were read, and the plugin manager adds them with
    :meth:`declare_plugin_settings` (the same Config object is already shared with the
    kernel, so it is filled in place, once, before any backend is built).
    """

    settings: Settings
    sources: dict[str, str]
    plugins: PluginsTable
    path: Path | None  # the .nuvom_plugins.toml read, if any
    root: Path
    schemas: dict[str, PluginSchema] = attrs.field(factory=dict, eq=False)

    def _raw_plugin_settings(self, name: str) -> dict[str, tuple[Any, str, str]]:
        """key -> (value, env variable, source): the file's table, then the environment."""
        name = name.lower()
        table = f"{self.path or PLUGINS_FILE} [plugins.{name}]"
        merged = {key: (value, plugin_env_var(name, key), table)
                  for key, value in self.plugins.settings.get(name, {}).items()}
        for key, (var, value) in self.plugins.env.get(name, {}).items():
            if value.strip():  # empty is unset, as for the core settings
                merged[key] = (value, var, f"env {var}")
        return merged

    def plugin_setting_sources(self, name: str) -> dict[str, str]:
        """Each key of :meth:`plugin_settings` ``(name)`` -> where it was set (``in
        <file>`` or ``from NUVOM_PLUGINS__<NAME>__<KEY>``), never its value (it may be a
        secret): for an error that names what a plugin was given."""
        return {key: f"from {var}" if where.startswith("env ")
                else f"in {self.path or PLUGINS_FILE}"
                for key, (_, var, where) in self._raw_plugin_settings(name).items()}

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table with ``NUVOM_PLUGINS__<NAME>__*`` overrides (empty
        if neither is set); converted to the declared types when the plugin has a schema.
        ``name`` is case-insensitive, as backend names and the variables are.

        :raises PluginConfigError: a key or value its schema refuses.
        """
        schema = self.schemas.get(name.lower())
        if schema is not None:  # an empty variable of a key that does not exist is a typo
            for key, (var, value) in self.plugins.env.get(name.lower(), {}).items():
                if not value.strip():
                    schema.check_key(key, f"env {var}")
        return {key: value if schema is None else schema.convert(key, value, where)
                for key, (value, _, where) in self._raw_plugin_settings(name).items()}

    def declare_plugin_settings(self, schemas: Mapping[str, type]) -> None:
        """Add plugins' settings schemas and check every table and variable against them.

        :raises PluginConfigError: naming the table or variable, the key and the valid keys.
        """
        for name, source in schemas.items():
            self.schemas[name.lower()] = PluginSchema.from_class(name.lower(), source)
        for name in schemas:
            self.plugin_settings(name)

    def warn_unclaimed_plugin_settings(self, claimed: Collection[str],
                                       installed: Collection[str]) -> None:
        """Warn (once per process) about each ``[plugins.<name>]`` table and
        ``NUVOM_PLUGINS__<NAME>__*`` variable whose name no plugin of this process claims.

        A warning, not an error: one shared configuration may name a plugin that is only
        installed on some hosts (the workers of one queue, not the web servers). Without it
        a misspelt table (``[plugins.sqllite]``) was ignored without a word.

        :param claimed: lower-case names a plugin claims: those it declares settings for,
            registers a backend under, or is itself named (a disabled one included).
        :param installed: the names to list as what is installed.
        """
        listed = ", ".join(sorted(installed)) or "none"
        for name in sorted(set(self.plugins.settings) - set(claimed)):
            warn_once(
                f"{self.path or PLUGINS_FILE} [plugins.{name}]: no installed plugin is named "
                f"{name!r}{did_you_mean(name, installed, lambda n: f'[plugins.{n}]')}, so "
                f"this table is not used here. Installed plugins and backends: {listed}.")
        for name in sorted(set(self.plugins.env) - set(claimed)):
            found = self.plugins.env[name]  # key -> (variable, value)
            variables = sorted(var for var, _ in found.values())
            suggestion = did_you_mean(name, installed,
                                       functools.partial(plugin_env_var, key=min(found)))
            warn_once(
                f"{', '.join(variables)}: no installed plugin is named {name!r}{suggestion}, "
                f"so {'this variable is' if len(variables) == 1 else 'these variables are'} "
                f"not used here. Installed plugins and backends: {listed}.")

    def plugin_setting_rows(self) -> list[PluginSetting]:
        """Every plugin setting that is set, and every declared one that is not (source
        ``default``: the plugin chooses), with secrets masked for printing."""
        rows = []
        for name in sorted(set(self.plugins.settings) | set(self.plugins.env)
                           | set(self.schemas)):
            raw = self._raw_plugin_settings(name)
            typed = self.plugin_settings(name)
            schema = self.schemas.get(name)
            for key in sorted(set(raw) | set(schema.fields if schema else ())):
                if key in raw:
                    _, var, source = raw[key]
                    rows.append(PluginSetting(name, key, mask_secret(key, typed[key]), var,
                                              source))
                else:
                    var = plugin_env_var(name, key)
                    empty = key in self.plugins.env.get(name, {})
                    rows.append(PluginSetting(name, key, None, var, "default (env empty)"
                                              if empty else "default"))
        return rows


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:  # unreadable (permissions): a config error, not a traceback
        raise PluginConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:  # TOML is UTF-8: a file saved as Latin-1, say
        line = data[:exc.start].count(b"\n") + 1
        raise PluginConfigError(
            f"{path}: not valid TOML: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}"
            f"). Save the file as UTF-8; the format is described in docs/configuration.md."
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PluginConfigError(
            f"{path}: not valid TOML: {exc}. Fix the line named above; "
            f"the format is described in docs/configuration.md."
        ) from exc


def _parse_plugins(path: Path, table: Any) -> PluginsTable:
    if not isinstance(table, dict):
        raise PluginConfigError(f"{path}: [plugins] must be a table, got {table!r}: write "
                                "`[plugins]` on a line of its own, its keys below it "
                                "(docs/configuration.md)")
    targets: dict[str, tuple[str, ...]] = {}
    settings: dict[str, dict[str, Any]] = {}
    disable: tuple[str, ...] = ()
    spelt: dict[str, str] = {}  # plugin name -> its table's name as written
    for key, value in table.items():
        if isinstance(value, dict):
            # Plugin names are case-insensitive (backend names and the variables are), so
            # [plugins.SQLite] is sqlite's table, not one nothing reads.
            name = key.lower()
            if name in settings:
                raise PluginConfigError(
                    f"{path}: [plugins.{spelt[name]}] and [plugins.{key}] both set plugin "
                    f"{name!r}'s settings (plugin names are case-insensitive); merge them "
                    f"into one [plugins.{name}] table.")
            settings[name] = value
            spelt[name] = key
            continue
        if key != "disable" and key not in CAPABILITIES:  # (before its value's type:
            # `sqlite = 5`, meant as a setting, was told "must be a list of strings")
            raise PluginConfigError(
                f"{path}: [plugins] has unknown key {key!r}. Known capability keys: "
                f"{', '.join(sorted(CAPABILITIES))}; also 'disable' (a list of plugin names) "
                f"and [plugins.<name>] tables for per-plugin settings."
            )
        values = (value,) if isinstance(value, str) else value
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise PluginConfigError(
                f"{path}: [plugins] {key} must be a string or a list of strings, "
                f"got {value!r}"
            )
        if key == "disable":
            disable = tuple(values)
        else:
            targets[key] = tuple(values)
    return PluginsTable(targets=targets, disable=disable, settings=settings)


def _check_tables(path: Path, data: Mapping[str, Any]) -> None:
    """Refuse a top-level table or key other than ``[settings]`` and ``[plugins]``.

    :raises PluginConfigError: naming it, the closest known table, and the known ones.
    """
    for key, value in data.items():
        if key in TABLES:
            continue
        known = "; ".join(f"[{name}] ({what})" for name, what in TABLES.items())
        if not isinstance(value, dict):
            where = ("put it under [settings]" if key in Settings.field_names()
                     else "Nuvom reads keys only inside its tables")
            raise PluginConfigError(
                f"{path}: unknown top-level key {key!r}: {where}. The file's tables: "
                f"{known}; see docs/configuration.md.")
        raise PluginConfigError(
            f"{path}: unknown table [{key}]{did_you_mean(key, TABLES, lambda n: f'[{n}]')}. "
            f"The file's tables: {known}; see docs/configuration.md.")


def _check_environment(env: Mapping[str, str]) -> None:
    """Warn (once per process) about each ``NUVOM_*`` variable that Nuvom does not read.

    Why: a misspelt variable (``NUVOM_MAX_WORKER=8``) was silently ignored and the setting
    kept its default. ``NUVOM_PLUGINS__*`` is checked once the plugins are loaded
    (:meth:`Config.warn_unclaimed_plugin_settings`); ``NUVOM_TEST_*`` belongs to the test
    suites.
    """
    for var, hint in unknown_variables(env).items():
        warn_once(f"environment variable {var} is not a Nuvom setting{hint}, so it is not "
                  f"used. `nuvom config` lists the settings and their variables "
                  f"(docs/configuration.md).")


def unknown_variables(env: Mapping[str, str]) -> dict[str, str]:
    """Each ``NUVOM_*`` name in ``env`` that Nuvom does not read, with a hint (`` (did you
    mean X?)``, or empty); the pytest plugin refuses these in ``nuvom_environ``."""
    known = {field.metadata["env"] for field in attrs.fields(Settings)} | KERNEL_VARIABLES
    return {var: plugin_variable_hint(var) or did_you_mean(var.upper(), known)
            for var in sorted(env)
            if var.startswith("NUVOM_") and var not in known
            and not var.upper().startswith(PLUGIN_ENV_PREFIX)
            and not var.startswith(TEST_VARIABLE_PREFIX)}


def load_config(
    root: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``.nuvom_plugins.toml`` under ``root`` (default: cwd) and ``NUVOM_*`` variables.

    Plugin settings (``[plugins.<name>]`` and ``NUVOM_PLUGINS__<NAME>__<KEY>``) are only
    collected here; they are typed and checked when the plugins that declare them are loaded
    (:meth:`Config.declare_plugin_settings`).

    A ``NUVOM_*`` variable that is no setting is warned about (once per process: see
    :func:`warn_once`), not refused: it may be meant for another version of Nuvom.

    :raises ConfigError: naming the variable or key and what it accepts.
    :raises PluginConfigError: for a file that is not valid TOML (with its line), has an
        unknown top-level table or key, or a ``NUVOM_PLUGINS__`` variable that does not have
        the ``<NAME>__<KEY>`` form.
    """
    root = Path(root) if root is not None else Path.cwd()
    env = os.environ if environ is None else environ
    path = root / PLUGINS_FILE
    data = _read_toml(path) if path.is_file() else {}
    _check_tables(path, data)
    _check_environment(env)
    file_settings = data.get("settings", {})
    if not isinstance(file_settings, dict):
        raise PluginConfigError(f"{path}: [settings] must be a table, got "
                                f"{file_settings!r}: write `[settings]` on a line of its "
                                "own, its keys below it (docs/configuration.md)")
    unknown = sorted(set(file_settings) - set(Settings.field_names()))
    if unknown:
        raise PluginConfigError(
            f"{path}: [settings] has unknown key(s) "
            f"{', '.join(k + did_you_mean(k, Settings.field_names()) for k in unknown)}; "
            f"known: {', '.join(Settings.field_names())}"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in attrs.fields(Settings):
        parse = field.metadata["parse"]
        var = field.metadata["env"]
        if var in env and env[var].strip():  # empty is unset (an unfilled ${VAR})
            raw, where = env[var], f"env {var}"
        elif field.name in file_settings:
            raw, where = file_settings[field.name], f"{path.name} [settings]"
        else:
            sources[field.name] = "default (env empty)" if var in env else "default"
            continue
        try:
            values[field.name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{where} {field.name}={raw!r} is invalid: it {exc}."
                if where.endswith("]")
                else f"{var}={raw!r} is invalid: {field.name} {exc}."
            ) from None
        sources[field.name] = where
    plugins = attrs.evolve(_parse_plugins(path, data.get("plugins", {})),
                           env=plugin_env(env))
    return Config(settings=Settings(**values), sources=sources, plugins=plugins,
                  path=path if path.is_file() else None, root=root)
