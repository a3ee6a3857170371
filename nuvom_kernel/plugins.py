"""The plugin manager: one fresh pluggy manager per kernel, loaded once in a documented order.

Load order (like pytest's): blocked names (``[plugins] disable`` and ``NUVOM_DISABLE_PLUGINS``)
→ internal plugins (:data:`DEFAULT_PLUGINS`) → entry points of the ``nuvom`` group (skipped
when ``NUVOM_DISABLE_PLUGIN_AUTOLOAD`` is set) → targets listed in ``.nuvom_plugins.toml`` →
``check_pending()`` → the historic ``nuvom_configure``. Built-in backends enter through the
entry points exactly like third-party ones. Pluggy calls the last registered implementation
first, so a user's plugin runs before the kernel's fallbacks.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import sys
import traceback
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import pluggy

from nuvom_kernel import hookspecs
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.config import CAPABILITIES, Config
from nuvom_kernel.errors import (
    BackendNotFoundError,
    DuplicateBackendError,
    PluginConfigError,
    PluginLoadError,
)

__all__ = ["DEFAULT_PLUGINS", "ESSENTIAL_PLUGINS", "NuvomPluginManager", "PluginInfo",
           "make_importable"]

log = logging.getLogger("nuvom.plugins")

#: Internal plugins, registered by module name exactly as an entry point would be.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "nuvom_kernel.builtin",
    "nuvom_kernel.cli.core",
    "nuvom_kernel.cli.jobs",
    "nuvom_kernel.cli.plugin_dev",
    "nuvom_kernel.cli.discover",
    "nuvom_kernel.cli.schedule",
    "nuvom_kernel.cli.workflow",
)
#: Internal plugins that ``disable`` cannot remove.
ESSENTIAL_PLUGINS: frozenset[str] = frozenset({"nuvom_kernel.builtin", "nuvom_kernel.cli.core"})

#: Which distribution provides each well-known backend name (for "pip install" hints).
KNOWN_PROVIDERS: dict[str, str] = {
    "memory": "nuvom-plugins",
    "file": "nuvom-plugins",
    "ast": "nuvom-plugins",
    "sqlite": "nuvom-plugins-sqlite",
    "redis": "nuvom-plugins-redis",
    "postgres": "nuvom-plugins-postgres",
}

T = TypeVar("T")


@attrs.frozen
class PluginInfo:
    """One registered plugin, for ``nuvom plugin list``."""

    name: str
    source: str  # "internal", "entry point" or ".nuvom_plugins.toml"
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    provides: dict[str, tuple[str, ...]]  # capability -> backend names


class NuvomPluginManager(pluggy.PluginManager):
    """pluggy's manager plus Nuvom's load order, provenance and actionable errors."""

    def __init__(self) -> None:
        super().__init__("nuvom")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str, str | None, str | None]] = {}
        self.failures: dict[str, str] = {}
        self._config: Config | None = None
        self._loaded = False
        #: :func:`nuvom_kernel.events.observers` per hook, emptied whenever the plugins
        #: change; ``observer_generation`` counts the changes (before and after each), so a
        #: lookup that raced one is not kept.
        self.observer_cache: dict[str, list[Any]] = {}
        self.observer_generation = 0

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        # Only prefixed, marked attributes are hooks: skips every other attribute cheaply.
        if not name.startswith("nuvom_"):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    # --- loading ----------------------------------------------------------------------

    def load(self, config: Config, environ: Mapping[str, str] | None = None) -> None:
        """Load every plugin once, in the documented order; idempotent."""
        if self._loaded:
            return
        env = os.environ if environ is None else environ
        blocked = set(config.plugins.disable)
        blocked |= {n.strip() for n in env.get("NUVOM_DISABLE_PLUGINS", "").split(",")
                    if n.strip()}
        for name in sorted(blocked - ESSENTIAL_PLUGINS):
            self.set_blocked(name)
        for module_name in DEFAULT_PLUGINS:
            if not self.is_blocked(module_name):
                self._register(importlib.import_module(module_name), module_name,
                               ("internal", "nuvom", None))
        if not env.get("NUVOM_DISABLE_PLUGIN_AUTOLOAD"):
            self._load_entry_points()
        if config.plugins.targets:
            make_importable(config.root)
        for capability, targets in config.plugins.targets.items():
            for target in targets:
                self._load_target(capability, target, config)
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginLoadError(
                f"plugin {name!r} does not match the hook specs: {exc.args[0]}. "
                "Check the hook name for typos against docs/plugin_hooks.md "
                "(every hook starts with 'nuvom_')."
            ) from exc
        self._loaded = True
        config.declare_plugin_settings(self.plugin_settings_schemas())
        self._configure(config)

    def plugin_settings_schemas(self) -> dict[str, type]:
        """``nuvom_plugin_settings`` of every plugin, merged.

        :raises PluginLoadError: two plugins declare the same table (both named).
        """
        found: dict[str, tuple[type, str]] = {}
        for impl in reversed(self.hook.nuvom_plugin_settings.get_hookimpls()):
            declared: dict[str, type] = cast("dict[str, type]", impl.function() or {})
            for name, schema in declared.items():
                if name in found and found[name][0] is not schema:
                    raise PluginLoadError(
                        f"plugins {found[name][1]!r} and {impl.plugin_name!r} both declare the "
                        f"settings of [plugins.{name}]; disable one with [plugins] disable = "
                        f"[...] in .nuvom_plugins.toml.")
                found[name] = (schema, impl.plugin_name)
        return {name: schema for name, (schema, _) in found.items()}

    def _register(self, plugin: Any, name: str, source: tuple[str, str | None, str | None]
                  ) -> None:
        try:
            self.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginLoadError(f"plugin {name!r} could not be registered: {exc}") from exc
        self.sources[name] = source

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            if dist.metadata["name"] in seen:  # a dist can be listed twice on sys.path
                continue
            seen.add(dist.metadata["name"])
            for ep in dist.entry_points:
                if ep.group != "nuvom" or self.get_plugin(ep.name) or self.is_blocked(ep.name):
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:  # one broken install must not stop the others
                    message = (
                        f"plugin {ep.name!r} (entry point {ep.value!r} of distribution "
                        f"{dist.metadata['name']}) failed to import: {exc!r}. Reinstall it, "
                        f"or disable it with NUVOM_DISABLE_PLUGINS={ep.name}"
                    )
                    log.error("%s", message)
                    self.failures[ep.name] = message
                    continue
                self._register(plugin, ep.name,
                               ("entry point", dist.metadata["name"], dist.version))

    def _load_target(self, capability: str, target: str, config: Config) -> None:
        where = f"{config.path or '.nuvom_plugins.toml'} [plugins] {capability}"
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginConfigError(
                f"{where}: target {target!r} cannot be imported: {exc!r}. Check the module "
                f"path: it is imported from the project folder {config.root} (the folder "
                "holding .nuvom_plugins.toml) or from the installed packages."
            ) from exc
        for part in filter(None, attr.split(".")):
            if not hasattr(obj, part):
                raise PluginConfigError(
                    f"{where}: target {target!r}: module {module_name!r} has no attribute "
                    f"{part!r}."
                )
            obj = getattr(obj, part)
        plugin = _as_plugin(obj, target)
        if plugin is None:
            raise PluginConfigError(
                f"{where}: target {target!r} holds no Nuvom hook implementation. Mark "
                "functions with @nuvom_kernel.hookimpl (see docs/writing_plugins.md), or "
                "point at a QueueBackend/ResultBackend subclass."
            )
        if self.get_plugin(target) is None and not self.is_blocked(target):
            self._register(plugin, target, (".nuvom_plugins.toml", None, None))
        hook_name = CAPABILITIES[capability]
        if hook_name is not None and not self._implements(target, hook_name):
            provided = [key for key, hook in CAPABILITIES.items()
                        if hook is not None and self._implements(target, hook)]
            fix = (f"It provides {' and '.join(provided)}: list it under that key instead, "
                   f"e.g. {provided[0]} = [\"{target}\"]" if provided else
                   "It registers no backend, discoverer or serializer: list it under hooks "
                   f"instead (hooks = [\"{target}\"]) if it only observes jobs or adds commands")
            raise PluginConfigError(
                f"{where}: target {target!r} is listed as a {capability} but does not "
                f"implement {hook_name}(). {fix}."
            )

    def _implements(self, plugin_name: str, hook_name: str) -> bool:
        return any(impl.plugin_name == plugin_name
                   for impl in getattr(self.hook, hook_name).get_hookimpls())

    def raised_by(self, hook_name: str, exc: BaseException) -> str | None:
        """The plugin whose implementation of ``hook_name`` raised ``exc`` (the innermost
        frame of its traceback that runs one), or ``None``: pluggy re-raises a plugin's
        exception as it is, naming no plugin."""
        codes = {getattr(impl.function, "__code__", None): impl.plugin_name
                 for impl in getattr(self.hook, hook_name).get_hookimpls()}
        found = None
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            found = codes.get(frame.f_code, found)
        return found

    def _configure(self, config: Config) -> None:
        """Historic configure: every plugin now, and (see :meth:`register`) any later one.

        A plugin that raises is unregistered and logged with its name; the others stay
        loaded, so one broken observer cannot stop a worker. Its error is kept in
        :attr:`failures` and repeated if its backend is asked for.
        """
        self._config = config
        for impl in list(self.hook.nuvom_configure.get_hookimpls()):
            self._configure_impl(impl)

    def _configure_impl(self, impl: Any) -> None:
        try:
            impl.function(**{a: self._config for a in impl.argnames})
        except Exception as exc:
            message = f"plugin {impl.plugin_name!r} failed in nuvom_configure: {exc!r}"
            log.error("%s; it is disabled for this process", message)
            self.failures[impl.plugin_name] = message
            self.unregister(name=impl.plugin_name)

    def _plugins_changing(self) -> None:
        self.observer_generation += 1
        self.observer_cache.clear()

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._plugins_changing()
        try:
            return super().unregister(plugin, name)
        finally:
            self._plugins_changing()

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """pluggy's ``register``, refusing hook wrappers where they would wrap nothing.

        :raises pluggy.PluginValidationError: a hook other than ``nuvom_worker_prepare`` is
            marked ``wrapper=True`` or ``hookwrapper=True`` (nothing is registered).
        """
        self._plugins_changing()
        try:
            registered = super().register(plugin, name)
            if registered is not None:
                self._refuse_wrappers(plugin)
        finally:
            self._plugins_changing()
        if registered is not None and self._config is not None:
            for impl in self.hook.nuvom_configure.get_hookimpls():
                if impl.plugin is plugin:
                    self._configure_impl(impl)
        return registered

    def _refuse_wrappers(self, plugin: Any) -> None:
        """The kernel calls each implementation of every other hook itself (to isolate and
        name one that raises; registration hooks must return classes), so a wrapper there
        would be called as a plain function: a generator where classes were expected."""
        for caller in self.get_hookcallers(plugin) or ():
            if caller.name == "nuvom_worker_prepare":
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    super().unregister(plugin)
                    raise pluggy.PluginValidationError(plugin, (
                        f"{caller.name} is marked as a hook wrapper "
                        f"(wrapper=True or hookwrapper=True), but the kernel calls each "
                        f"implementation of {caller.name} itself, so it would wrap nothing; "
                        f"mark it with a plain @hookimpl (only nuvom_worker_prepare honours "
                        f"hook wrappers)"))

    # --- registration hooks -------------------------------------------------------------

    def collect(self, hook_name: str) -> dict[str, tuple[type, str]]:
        """Classes returned by a ``nuvom_register_*`` hook, keyed by ``name``, with provider.

        :raises DuplicateBackendError: two classes share a name (both providers named).
        """
        found: dict[str, tuple[type, str]] = {}
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            for cls in impl.function() or ():
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginLoadError(
                        f"plugin {impl.plugin_name!r}: {cls!r} from {hook_name} has no "
                        "'name' class attribute"
                    )
                if name in found and found[name][0] is not cls:
                    raise DuplicateBackendError(
                        f"two plugins register {hook_name[15:].rstrip('s')} {name!r}: "
                        f"{found[name][1]!r} ({_qual(found[name][0])}) and "
                        f"{impl.plugin_name!r} ({_qual(cls)}). Disable one with "
                        f"[plugins] disable = [...] in .nuvom_plugins.toml."
                    )
                found[name] = (cls, impl.plugin_name)
        return found

    def lookup(self, hook_name: str, name: str, what: str) -> type:
        """One registered class by name, or an error listing installed names and a fix.

        :raises PluginLoadError: the class leaves a required method unwritten (instantiating
            it would fail with a ``TypeError`` that names neither the plugin nor the fix).
        """
        classes = self.collect(hook_name)
        if name in classes:
            cls, plugin = classes[name]
            missing = sorted(getattr(cls, "__abstractmethods__", ()))
            if missing:
                raise PluginLoadError(
                    f"plugin {plugin!r}: its {what} {name!r} ({_qual(cls)}) does not "
                    f"implement: {', '.join(missing)}. Write those methods "
                    f"(docs/writing_plugins.md); `nuvom plugin test {plugin}` checks them.")
            return cls
        installed = ", ".join(sorted(classes)) or "none"
        dist = KNOWN_PROVIDERS.get(name, f"nuvom-plugins-{name}")
        failed = "".join(f" Note: {m}." for m in self.failures.values())
        raise BackendNotFoundError(
            f"no installed plugin provides the {what} {name!r}. Installed: {installed}. "
            f"Install the plugin that provides it, e.g. `pip install {dist}`, or choose an "
            f"installed one with NUVOM_{what.upper().replace(' ', '_')}=<name>.{failed}"
        )

    def plugin_infos(self) -> list[PluginInfo]:
        provided: dict[str, dict[str, list[str]]] = {}
        for capability, hook_name in CAPABILITIES.items():
            if hook_name is None:
                continue
            for impl in getattr(self.hook, hook_name).get_hookimpls():
                names = [c.name for c in impl.function() or ()]
                provided.setdefault(impl.plugin_name, {})[capability] = names
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            source, dist, version = self.sources.get(name, ("internal", None, None))
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or ()))
            provides = {k: tuple(v) for k, v in provided.get(name, {}).items() if v}
            infos.append(PluginInfo(name, source, dist, version, hooks, provides))
        return sorted(infos, key=lambda i: (i.source != "entry point", i.name))


def make_importable(folder: Path) -> None:
    """Put the project folder first on ``sys.path``, as ``python script.py`` does for the
    script's folder.

    Why: the ``nuvom`` console script starts with its own folder (the environment's ``bin/``)
    as ``sys.path[0]``, not the working directory, so the project's modules — the targets of
    ``.nuvom_plugins.toml``, the tasks — would not import unless the user set PYTHONPATH.
    """
    path = str(Path(folder).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _as_plugin(obj: Any, target: str) -> Any:
    """What to register for a toml target: a module or object with hookimpls as is, a class
    with hookimpls instantiated, and a bare backend class wrapped in a registration plugin."""
    if inspect.isclass(obj):
        if issubclass(obj, QueueBackend | ResultBackend):
            hook = ("nuvom_register_queue_backends" if issubclass(obj, QueueBackend)
                    else "nuvom_register_result_backends")
            from nuvom_kernel import hookimpl

            def register() -> list[type]:
                return [obj]

            return types.SimpleNamespace(**{hook: hookimpl(register)})
        if _has_hookimpls(obj):
            try:
                return obj()
            except TypeError as exc:
                raise PluginConfigError(
                    f"target {target!r} is a class that cannot be built without arguments: "
                    f"{exc}"
                ) from exc
        return None
    return obj if _has_hookimpls(obj) else None


def _has_hookimpls(obj: Any) -> bool:
    return any(
        name.startswith("nuvom_") and hasattr(getattr(obj, name, None), "nuvom_impl")
        for name in dir(obj)
    )
