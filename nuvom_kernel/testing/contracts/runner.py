"""pytest plugin behind ``nuvom plugin test``: parametrizes ``run_installed.py`` by target.

Usable without the CLI too (``FILE`` being the path of ``run_installed.py``)::

    pytest FILE -p nuvom_kernel.testing.contracts.runner --nuvom-plugin=sqlite

Options: ``--nuvom-plugin NAME`` (repeatable: plugin name, backend name or ``module:attr``),
``--nuvom-all``, ``--nuvom-setting KEY=VALUE`` (handed to ``from_settings``: converted and
checked by the plugin's declared settings schema exactly as ``NUVOM_PLUGINS__<NAME>__<KEY>``
is; for a backend that declares none, a value parsed as JSON when it can be),
``--nuvom-report PATH`` (a JSON report the CLI turns into its table).
The kernel is built from the working directory's configuration, as the CLI builds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel.config import Config
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.testing.contracts.targets import Target, resolve

__all__ = ["TARGET_PARAMS", "split_settings", "target_settings"]

#: parametrized argument of run_installed.py -> target kind
TARGET_PARAMS = {"nuvom_queue_target": "queue", "nuvom_result_target": "result",
                 "nuvom_discoverer_target": "discoverer"}
_targets_key = pytest.StashKey[list[Target]]()
_settings_key = pytest.StashKey[dict[str, dict[str, Any]]]()  # target id -> settings
_configured_key = pytest.StashKey[dict[str, dict[str, Any]]]()
_results_key = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nuvom", "Nuvom contract runner")
    group.addoption("--nuvom-plugin", action="append", default=[], metavar="NAME",
                    help="plugin name, backend name or module:attr to test (repeatable)")
    group.addoption("--nuvom-all", action="store_true", help="test every installed plugin")
    group.addoption("--nuvom-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting handed to each backend's from_settings (repeatable)")
    group.addoption("--nuvom-report", default=None, metavar="PATH",
                    help="write a JSON report of every test outcome to PATH")


def split_settings(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs as key -> the value as written (a string, as in the environment).

    :raises pytest.UsageError: a pair that is not ``KEY=VALUE``.
    """
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"--nuvom-setting expects KEY=VALUE, got {pair!r}")
        settings[key.strip()] = raw
    return settings


def target_settings(config: Config, target: Target, raw: Mapping[str, str],
                    flag: str = "--nuvom-setting") -> dict[str, Any]:
    """The ``KEY=VALUE`` settings ``raw`` as the backend ``target`` receives them.

    Why through the schema: production builds a backend with ``config.plugin_settings(name)``,
    where the plugin's declared schema (:class:`~nuvom_kernel.plugin_settings.PluginSchema`)
    converts each value and refuses an unknown key. Handing raw values over instead tested
    something production never does (``verbose="no"``, a truthy string, where
    ``NUVOM_PLUGINS__<NAME>__VERBOSE=no`` gives ``False``). The values are strings, as in the
    environment, and go through the same :meth:`PluginSchema.convert` as those variables. A
    backend whose plugin declares no schema gets a value parsed as JSON when it can be.

    :param flag: the option the values came from, for the error message.
    :raises PluginConfigError: a key the schema does not declare, or a value it refuses;
        ``visibility_timeout_secs``, which the suite sets itself.
    """
    if "visibility_timeout_secs" in raw:  # it overrode the suite's leases, and the lease
        # tests then failed, blaming a from_settings that did right to let the setting win
        raise PluginConfigError(
            f"{flag} visibility_timeout_secs: the contract suite sets the visibility timeout "
            "itself (its lease tests build backends with leases of a fraction of a second, "
            "through BackendContext.visibility_timeout_secs); drop this setting")
    schema = config.schemas.get(target.name.lower())
    if schema is None:
        return {key: _json_or_text(value) for key, value in raw.items()}
    return {key: schema.convert(key, value, f"{flag} {key}={value}")
            for key, value in raw.items()}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def pytest_configure(config: pytest.Config) -> None:
    names = config.getoption("nuvom_plugin")
    all_ = config.getoption("nuvom_all")
    targets: list[Target] = []
    if names or all_:
        from nuvom_kernel.kernel import Kernel

        try:
            kernel = Kernel()
            targets, _ = resolve(kernel.pm, kernel.config, names, all_)
        except Exception as exc:  # a config or import error: say it as a usage error
            raise pytest.UsageError(f"nuvom: {exc}") from exc
    config.stash[_targets_key] = targets
    # A namespaced (server) backend runs on the project's configured server, isolated by the
    # fresh namespace each test's context carries; --nuvom-setting values override.
    # Less visibility_timeout_secs: the suite sets it (the lease tests build backends with
    # leases of a fraction of a second), and the project's (a documented key of the Redis
    # and PostgreSQL plugins) made those tests fail, blaming a sound from_settings.
    configured = {t.name: {k: v for k, v in kernel.config.plugin_settings(t.name).items()
                           if k != "visibility_timeout_secs"}
                  for t in targets if getattr(t.cls, "namespaced", False)} if targets else {}
    config.stash[_configured_key] = configured
    raw = split_settings(config.getoption("nuvom_setting"))
    try:
        config.stash[_settings_key] = {t.id: target_settings(kernel.config, t, raw)
                                       for t in targets}
    except PluginConfigError as exc:
        raise pytest.UsageError(f"nuvom: {exc}") from exc
    config.stash[_results_key] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for param, kind in TARGET_PARAMS.items():
        if param in metafunc.fixturenames:
            wanted = [t for t in metafunc.config.stash[_targets_key] if t.kind == kind]
            metafunc.parametrize(param, wanted, ids=[t.id for t in wanted])


@pytest.fixture
def nuvom_settings(request: pytest.FixtureRequest) -> Any:
    """``settings(target)``: what the contract fixtures in run_installed.py build a target's
    backend with — the project's ``[plugins.<name>]`` table for a namespaced backend, then
    the ``--nuvom-setting`` values."""
    stash = request.config.stash

    def settings(target: Target) -> dict[str, Any]:
        return stash[_configured_key].get(target.name, {}) | stash[_settings_key][target.id]

    return settings


def _target_of(item: pytest.Item) -> Target | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    for param in TARGET_PARAMS:
        if isinstance(value := params.get(param), Target):
            return value
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the placeholder items pytest makes for a kind with no targets."""
    keep = [i for i in items if _target_of(i) is not None]
    dropped = [i for i in items if _target_of(i) is None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _test_name(item: pytest.Item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {})
    extra = [str(v.value if hasattr(v, "value") else v)
             for k, v in params.items() if k not in TARGET_PARAMS]
    base = getattr(item, "originalname", item.name)
    return f"{base}[{'-'.join(extra)}]" if extra else base


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Any:
    report = yield
    target = _target_of(item)
    if target is None:
        return report
    results = item.config.stash[_results_key]
    entry = results.setdefault(item.nodeid, {"target": target.id, "kind": target.kind,
                                             "test": _test_name(item), "outcome": "passed",
                                             "message": ""})
    if report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["message"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        entry["message"] = message.strip().splitlines()[0][:300] if message.strip() else ""
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("nuvom_report")
    if not path:
        return
    targets = session.config.stash.get(_targets_key, [])
    payload = {
        "exitstatus": int(exitstatus),
        "targets": [t.to_dict() for t in targets],
        "tests": list(session.config.stash.get(_results_key, {}).values()),
    }
    Path(path).write_text(json.dumps(payload, indent=2))
