"""What ``nuvom plugin test`` tests: resolving names to backend classes, checking registration.

Shared by the CLI (which resolves up front, to report registration problems and fail fast on
a typo) and the pytest runner plugin (which resolves again in its own process and
parametrizes the contract classes), so both always agree on what a name means.

A target is named in one of three ways:

* a plugin name (``memory``, ``sqlite``, an entry point name, or a ``module:attr`` that
  ``.nuvom_plugins.toml`` registered under that name) — every backend it registers;
* a backend name (``sqlite``) — the queue, result backend or discoverer of that name;
* ``module:attr`` — a backend class, or a plugin object/module with hook implementations;
  a bare importable ``module`` (no ``:attr``) is the module itself, as in the toml.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Iterable, Sequence
from typing import Any, cast

import attrs
import pluggy

from nuvom_kernel import hookspecs
from nuvom_kernel.config import CAPABILITIES, Config
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.plugin_lookup import REGISTERED_BASES
from nuvom_kernel.plugins import NuvomPluginManager

__all__ = ["KINDS", "Check", "Target", "TargetError", "resolve"]

#: kind -> (registration hook, base class: the one the kernel checks at load)
KINDS: dict[str, tuple[str, type[Any]]] = {
    kind: (hook, REGISTERED_BASES[hook]) for kind, hook in (
        ("queue", "nuvom_register_queue_backends"),
        ("result", "nuvom_register_result_backends"),
        ("discoverer", "nuvom_register_discoverers"))}
_SPECS = {name for name in dir(hookspecs) if name.startswith("nuvom_")}


class TargetError(NuvomError):
    """A name that matches no installed plugin, backend or importable ``module:attr``."""


@attrs.frozen
class Target:
    """One class to run a contract against.

    :param provider: the plugin (or ``module:attr``) it came from, for the report.
    """

    kind: str
    name: str
    cls: type
    provider: str

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.kind}/{self.name}"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "provider": self.provider,
                "class": f"{self.cls.__module__}.{self.cls.__qualname__}"}


@attrs.frozen
class Check:
    """One registration check of one plugin: ``ok`` or what is wrong and how to fix it."""

    plugin: str
    check: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _load_failure(plugin: str, message: str) -> Check:
    """The failed check of a plugin that loading disabled: "import" when its module did not
    import, else "register" (a hook that raised or does not match its spec, once labelled
    "import" too, which sent authors looking for an import error that was not there)."""
    return Check(plugin, "import" if " failed to import: " in message else "register", False,
                 message)


def resolve(pm: NuvomPluginManager, config: Config, names: Sequence[str], all_: bool
            ) -> tuple[list[Target], list[Check]]:
    """The targets ``names`` (or every installed plugin, with ``all_``) stand for, and the
    registration checks of the plugins involved.

    :raises TargetError: a name matches nothing; the message lists what is installed.
    """
    targets: list[Target] = []
    checks: list[Check] = []
    plugins: list[str] = []
    if all_:
        plugins = [n for n, p in pm.list_name_plugin()
                   if p is not None and pm.sources.get(n, ("internal",))[0] != "internal"]
        checks += [_load_failure(n, m) for n, m in sorted(pm.failures.items())]
    for name in names:
        if name in pm.failures:
            checks.append(_load_failure(name, pm.failures[name]))
        elif pm.get_plugin(name) is not None:
            plugins.append(name)
        elif ":" not in name and (by_name := _by_backend_name(pm, name)):
            # A class its provider's checks refuse (a primitive missing) is not run: each
            # contract test failed on building it, as it is not when named by module:attr.
            targets += [t for t in by_name if not _class_problem(t.cls, KINDS[t.kind][1],
                                                                  KINDS[t.kind][0])]
            plugins += [t.provider for t in by_name]  # its provider's registration checks
        elif ":" in name or _importable(name):
            found, found_checks = _from_target(name, config)
            targets += found
            checks += found_checks
        else:
            raise TargetError(
                f"no installed plugin or backend is named {name!r} ({_installed(pm)}). Give a "
                "plugin name, a backend name, or module:attr of a backend class or plugin.")
    for plugin in dict.fromkeys(plugins):
        found, plugin_checks = _from_plugin(pm, plugin, config)
        targets += found
        checks += plugin_checks
    unique = {(t.kind, t.cls): t for t in targets}
    return list(unique.values()), checks


def _installed(pm: NuvomPluginManager) -> str:
    names = sorted(n for n, p in pm.list_name_plugin()
                   if p is not None and pm.sources.get(n, ("internal",))[0] != "internal")
    backends = sorted({f"{k} {b}" for k, (hook, _) in KINDS.items()
                       for b in _safe_collect(pm, hook)})
    return (f"installed plugins: {', '.join(names) or 'none'}; "
            f"backends: {', '.join(backends) or 'none'}")


def _safe_collect(pm: NuvomPluginManager, hook: str) -> dict[str, tuple[type, str]]:
    try:
        return pm.collect(hook)
    except NuvomError:
        return {}


def _by_backend_name(pm: NuvomPluginManager, name: str) -> list[Target]:
    return [Target(kind, name, classes[name][0], classes[name][1])
            for kind, (hook, _) in KINDS.items()
            if name in (classes := _safe_collect(pm, hook))]


def _importable(module_name: str) -> bool:
    """A bare module name (a plugin module with hookimpls, as .nuvom_plugins.toml allows)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def _from_plugin(pm: NuvomPluginManager, plugin_name: str, config: Config
                 ) -> tuple[list[Target], list[Check]]:
    plugin = pm.get_plugin(plugin_name)
    checks = [_check_hook_names(plugin_name, plugin)]
    targets: list[Target] = []
    problems: list[str] = []
    provided: dict[str, list[str]] = {}
    for kind, (hook, base) in KINDS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            for cls in impl.function() or ():
                problem = _class_problem(cls, base, hook)
                if problem:
                    problems.append(problem)
                    continue
                provided.setdefault(kind, []).append(cls.name)
                targets.append(Target(kind, cls.name, cls, plugin_name))
    duplicates = [message for hook, _ in KINDS.values() for message in _clashes(pm, hook)
                  if repr(plugin_name) in message]
    detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in provided.items()) or "hooks only"
    checks.append(Check(plugin_name, "backend classes", not problems, "; ".join(problems)
                        or detail))
    checks.append(Check(plugin_name, "unique names", not duplicates, "; ".join(duplicates)))
    checks += _toml_checks(pm, plugin_name, config)
    return targets, checks


def _clashes(pm: NuvomPluginManager, hook: str) -> list[str]:
    try:
        return pm.clashes(hook)
    except NuvomError:  # a bad class: the "backend classes" check says so
        return []


def _from_target(target: str, config: Config) -> tuple[list[Target], list[Check]]:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # sys.exit() at import: said, not obeyed
        raise TargetError(f"cannot import {target!r}: {exc!r}. Check the module path and run "
                          "from the directory that holds it.") from exc
    if inspect.isclass(obj):
        for kind, (hook, base) in KINDS.items():
            if issubclass(obj, base):
                problem = _class_problem(obj, base, hook)
                name = cast(Any, obj).name  # a backend's or discoverer's registry name
                check = Check(target, "backend classes", not problem,
                              problem or f"{kind}: {name}")
                return ([] if problem else [Target(kind, name, obj, target)]), [check]
    # A plugin object: validate it in a manager of its own, as the kernel would load it.
    pm = NuvomPluginManager()
    checks = [_check_hook_names(target, obj)]
    if inspect.isclass(obj):  # built as the kernel builds it: its __init__ may raise
        try:
            obj = obj()
        except Exception as exc:
            checks.append(Check(target, "plugin class built", False,
                                f"building it without arguments raised {exc!r}"))
            return [], checks
    try:
        pm.register(obj, name=target)
        pm.check_pending()
    except (ValueError, TypeError, pluggy.PluginValidationError) as exc:
        checks.append(Check(target, "pluggy validation", False, str(exc)))
        return [], checks
    targets, more = _from_plugin(pm, target, config)
    return targets, checks + [c for c in more if c.check != "hooks match specs"]


def _check_hook_names(plugin_name: str, plugin: Any) -> Check:
    """Every ``nuvom_*`` attribute is a marked implementation of a known hook."""
    problems = []
    for attr in sorted(dir(plugin)):
        if not attr.startswith("nuvom_"):
            continue
        value = getattr(plugin, attr, None)
        marked = hasattr(value, "nuvom_impl")
        if attr not in _SPECS and marked:
            problems.append(f"{attr} is not a Nuvom hook (typo? see docs/plugin_hooks.md)")
        elif attr in _SPECS and callable(value) and not marked:
            problems.append(f"{attr} is not marked @nuvom_kernel.hookimpl, so it is ignored")
    return Check(plugin_name, "hooks match specs", not problems, "; ".join(problems))


def _class_problem(cls: Any, base: type, hook: str) -> str:
    if not inspect.isclass(cls) or not issubclass(cls, base):
        return f"{hook} returned {cls!r}, which is not a {base.__name__} subclass"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"{cls.__qualname__} has no 'name' class attribute (the name config uses)"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"{cls.__qualname__} does not implement: {missing}"
    return ""


def _toml_checks(pm: NuvomPluginManager, plugin_name: str, config: Config) -> Iterable[Check]:
    """For a plugin listed in ``.nuvom_plugins.toml``: its capability key matches a hook it
    implements (the kernel refuses to load otherwise; shown here so the table says why)."""
    for capability, targets in config.plugins.targets.items():
        if plugin_name not in targets:
            continue
        hook = CAPABILITIES[capability]
        ok = hook is None or any(i.plugin_name == plugin_name
                                 for i in getattr(pm.hook, hook).get_hookimpls())
        yield Check(plugin_name, f"toml key {capability!r}", ok,
                    "" if ok else f"listed under {capability} but does not implement {hook}")
