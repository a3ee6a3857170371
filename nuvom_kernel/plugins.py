"""The plugin manager: one fresh pluggy manager per kernel, loaded once in a documented order.

Load order (like pytest's): blocked names (``[plugins] disable`` and ``NUVOM_DISABLE_PLUGINS``;
in a process-pool child, the plugins its worker disabled too: :func:`.inherit_failures`)
→ internal plugins (:data:`DEFAULT_PLUGINS`) → entry points of the ``nuvom`` group (skipped
when ``NUVOM_DISABLE_PLUGIN_AUTOLOAD`` is set) → targets listed in ``.nuvom_plugins.toml`` →
``check_pending()`` → each plugin's registration and settings hooks, once (:data:`PROBED_HOOKS`)
→ the plugins' settings schemas → the historic ``nuvom_configure``. Built-in backends enter
through the entry points exactly like third-party ones. Pluggy calls the last registered
implementation first, so a user's plugin runs before the kernel's fallbacks.

One rule for a plugin that breaks while loading — its import fails, an installed one's hooks
do not match the specs (a misspelt hook, an argument its hook lacks), or its registration,
settings, configure or command hook (``nuvom_register_commands``) raises: it is disabled
for this process, logged once naming it, the hook and the error, with the fix
(``NUVOM_DISABLE_PLUGINS=<name>``), and kept in :attr:`NuvomPluginManager.failures`.
Every command that does not need it works (``nuvom plugin list`` lists it as failed); one
that asks for a backend no enabled plugin provides fails with an error that repeats those
failures.

The manager is one class in three layers, one module each: how a failing plugin is disabled
and named (:mod:`.plugin_failures`), which plugin provides what (:mod:`.plugin_lookup`), and
here the load order and registration itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from collections.abc import Mapping
from typing import Any, cast

import pluggy

from nuvom_kernel import hookspecs
from nuvom_kernel.config import AUTOLOAD_VAR, CAPABILITIES, DISABLE_VAR, Config
from nuvom_kernel.errors import PluginConfigError, PluginLoadError
from nuvom_kernel.hints import warn_once
from nuvom_kernel.plugin_lookup import (
    BackendLookup,
    PluginInfo,
    registered_problem,
    settings_problem,
)
from nuvom_kernel.plugin_settings import PluginSchema
from nuvom_kernel.plugin_sources import (
    DEFAULT_PLUGINS,
    ESSENTIAL_PLUGINS,
    disabled_plugins,
    entry_point_typo,
    import_target,
    make_importable,
    missing_module,
    nuvom_entry_points,
    raised_at,
)

__all__ = ["DEFAULT_PLUGINS", "ESSENTIAL_PLUGINS", "PROBED_HOOKS", "NuvomPluginManager",
           "PluginInfo", "make_importable"]

log = logging.getLogger("nuvom.plugins")

#: Hooks every plugin is asked once while loading: what it registers and its settings. One
#: that raises there is disabled for the process instead of breaking every command.
PROBED_HOOKS: tuple[str, ...] = (*(hook for hook in CAPABILITIES.values() if hook),
                                 "nuvom_plugin_settings")


def _warn_settings_elsewhere(plugin_name: str, tables: set[str], backends: set[str]) -> None:
    """Warn when a plugin registers backends but declares its settings under none of their
    names (nor its own): a typo in ``nuvom_plugin_settings`` that nothing else shows, since
    ``[plugins.<backend>]`` is then read without a schema (a misspelt key there is ignored,
    an environment value stays a string) and the declared table is claimed, so the
    unclaimed-table warning is silent too. Only for plugins that register a backend: a
    plugin of hooks alone has no name its tables must match."""
    if not tables or not backends or tables & (backends | {plugin_name.lower()}):
        return
    names = ", ".join(repr(name) for name in sorted(backends))
    warn_once(
        f"plugin {plugin_name!r} declares the settings of "
        f"{', '.join(f'[plugins.{t}]' for t in sorted(tables))}, but registers its "
        f"backends as {names}: [plugins.{min(backends)}] is read without its key checks. "
        f"The plugin's nuvom_plugin_settings should return {{{min(backends)!r}: ...}}.")


class NuvomPluginManager(BackendLookup):
    """pluggy's manager plus Nuvom's load order, provenance and actionable errors."""

    def __init__(self) -> None:
        super().__init__("nuvom")
        self.add_hookspecs(hookspecs)
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
        self.disabled = disabled_plugins(config, env)
        for name in sorted(set(self.disabled) - ESSENTIAL_PLUGINS):
            self.set_blocked(name)
        self._block_inherited()
        for module_name in DEFAULT_PLUGINS:
            if not self.is_blocked(module_name):
                self._register(importlib.import_module(module_name), module_name,
                               ("internal", "nuvom", None))
        self._autoload_value = env.get(AUTOLOAD_VAR) or ""
        self._autoload = not self._autoload_value
        if self._autoload:
            self._load_entry_points()
        else:  # known, not loaded: a disabled one is named, its settings table no typo
            self.entry_points = {ep.name: dist.metadata["name"]
                                 for dist, ep in nuvom_entry_points()}
        if config.plugins.targets:
            make_importable(config.root)
        for capability, targets in config.plugins.targets.items():
            for target in targets:
                self._load_target(capability, target, config)
        self._check_hook_names()
        self._warn_unknown_disabled(config)
        provided = self._probe()
        self._loaded = True
        config.declare_plugin_settings(self.plugin_settings_schemas())
        self._configure(config)
        installed = set(provided) | set(config.schemas) | {
            name for name in self.entry_points if name not in self.disabled}
        claimed = installed | set(self.entry_points) | set(self.disabled) | {
            name for name, plugin in self.list_name_plugin() if plugin is not None
        } | set(self.failures)
        config.warn_unclaimed_plugin_settings({name.lower() for name in claimed},
                                              sorted(installed))

    def _probe(self) -> set[str]:
        """Call every plugin's registration and settings hooks once (:data:`PROBED_HOOKS`);
        disable a plugin whose implementation raises. Returns the names registered.

        Why here: these hooks run when something needs a backend (``collect``), long after
        loading, and a raise there named no plugin and stopped every command, even
        ``nuvom plugin list`` that would show the culprit.
        """
        names: set[str] = set()
        registers: dict[str, set[str]] = {}  # plugin -> backend names
        declares: dict[str, set[str]] = {}  # plugin -> settings tables
        for hook_name in PROBED_HOOKS:
            for impl in list(getattr(self.hook, hook_name).get_hookimpls()):
                if self.get_plugin(impl.plugin_name) is None:  # disabled by an earlier hook
                    continue
                try:
                    returned = impl.function()
                except Exception as exc:
                    self.disable(impl.plugin_name, hook_name, exc)
                    continue
                if hook_name == "nuvom_plugin_settings":  # a schema the kernel cannot read
                    problem = settings_problem(impl.plugin_name, returned)  # stopped every
                    if problem is None:  # command
                        try:
                            for table, source in returned.items():
                                PluginSchema.from_class(table.lower(), source)
                        except Exception as exc:
                            self.disable(impl.plugin_name, hook_name, exc)
                            continue
                    else:
                        self._failed(impl.plugin_name, problem)
                        continue
                if hook_name == "nuvom_plugin_settings":
                    declares[impl.plugin_name] = {table.lower() for table in returned or {}}
                    continue
                problem = registered_problem(impl.plugin_name, hook_name, returned)
                if problem is not None:  # what collect() would refuse, stopping every
                    self._failed(impl.plugin_name, problem.rstrip("."))  # command
                    continue
                found = {cls.name.lower() for cls in returned or ()
                         if isinstance(getattr(cls, "name", None), str)}
                registers.setdefault(impl.plugin_name, set()).update(found)
                names |= found
        for plugin_name, tables in declares.items():
            _warn_settings_elsewhere(plugin_name, tables, registers.get(plugin_name, set()))
        return names

    def plugin_settings_schemas(self) -> dict[str, type]:
        """``nuvom_plugin_settings`` of every plugin, merged.

        :raises PluginLoadError: two plugins declare the same table (both named).
        """
        found: dict[str, tuple[type, str]] = {}
        for impl in reversed(self.hook.nuvom_plugin_settings.get_hookimpls()):
            declared: dict[str, type] = cast("dict[str, type]",
                                             self._call(impl, "nuvom_plugin_settings") or {})
            for declared_name, schema in declared.items():
                name = declared_name.lower()  # table names are case-insensitive
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
        for dist, ep in nuvom_entry_points():
            first = self.entry_points.setdefault(ep.name, dist.metadata["name"])
            if first != dist.metadata["name"]:  # one name, two installs: one hides the other
                warn_once(f"two installed distributions provide the plugin {ep.name!r}: "
                          f"{first} and {dist.metadata['name']}; only {first}'s is loaded. "
                          f"Uninstall the one you do not want (pip uninstall "
                          f"{dist.metadata['name']}), or rename its entry point.")
                continue
            if self.get_plugin(ep.name) or self.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # one broken install must not stop the others
                module = ep.value.partition(":")[0].strip()
                where = raised_at(exc, module)  # none: not installed, or a stale entry point
                broken = where and not missing_module(exc, module)
                typo = None if broken else entry_point_typo(ep.value, exc)
                advice = ("Fix that error in its code (or install what it imports), upgrade "
                          "it" if broken else
                          f"The entry point is wrong: {typo}" if typo else "Reinstall it")
                message = (
                    f"plugin {ep.name!r} (entry point {ep.value!r} of distribution "
                    f"{dist.metadata['name']}) failed to import: {exc!r}{where}. "
                    f"{advice}, or disable it with {DISABLE_VAR}={ep.name}"
                )
                log.error("%s", message)
                log.debug("plugin %r failed to import", ep.name, exc_info=exc)
                self.failures[ep.name] = message
                # kept for `nuvom plugin list`, which lists it as failed
                self.sources[ep.name] = ("entry point", dist.metadata["name"], dist.version)
                continue
            source = ("entry point", dist.metadata["name"], dist.version)
            try:
                self._register(plugin, ep.name, source)
            except PluginLoadError as exc:  # a hook of the wrong signature, or a wrapper
                self.sources[ep.name] = source  # for `nuvom plugin list` and the message
                why = " ".join(str(exc.__cause__).split())  # pluggy's words, on one line
                fix = (". Each hook's arguments are in docs/plugin_hooks.md: an "
                       "implementation may take fewer, never others"
                       if "not be found in the hookspec" in why else "")
                self._failed(ep.name, f"plugin {ep.name!r}{self.provenance(ep.name)} could "
                                      f"not be registered: {why}{fix}")

    def _load_target(self, capability: str, target: str, config: Config) -> None:
        if self.is_blocked(target):  # disabled: never imported, so not checked either
            return
        where = f"{config.path or '.nuvom_plugins.toml'} [plugins] {capability}"
        plugin = import_target(target, where, config.root)
        if self.get_plugin(target) is None:
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
            self.disable(impl.plugin_name, "nuvom_configure", exc)

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
