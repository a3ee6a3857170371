"""The plugin manager: one fresh pluggy manager per kernel, loaded once in a documented order.

Load order (like pytest's): blocked names (``[plugins] disable`` and ``NUVOM_DISABLE_PLUGINS``)
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
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import attrs
import pluggy

from nuvom_kernel import hookspecs
from nuvom_kernel.config import (
    AUTOLOAD_VAR,
    CAPABILITIES,
    DISABLE_VAR,
    PLUGINS_FILE,
    Config,
    did_you_mean,
    warn_once,
)
from nuvom_kernel.errors import (
    BackendNotFoundError,
    DuplicateBackendError,
    PluginConfigError,
    PluginLoadError,
)
from nuvom_kernel.plugin_settings import PluginSchema
from nuvom_kernel.plugin_sources import (
    disabled_plugins,
    import_target,
    make_importable,
    normalized,
    nuvom_entry_points,
)

__all__ = ["DEFAULT_PLUGINS", "ESSENTIAL_PLUGINS", "PROBED_HOOKS", "NuvomPluginManager",
           "PluginInfo", "make_importable"]

log = logging.getLogger("nuvom.plugins")

#: Internal plugins, registered by module name exactly as an entry point would be.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "nuvom_kernel.builtin",
    "nuvom_kernel.cli.core",
    "nuvom_kernel.cli.jobs",
    "nuvom_kernel.cli.call",
    "nuvom_kernel.cli.queued",
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

#: Hooks every plugin is asked once while loading: what it registers and its settings. One
#: that raises there is disabled for the process instead of breaking every command.
PROBED_HOOKS: tuple[str, ...] = (*(hook for hook in CAPABILITIES.values() if hook),
                                 "nuvom_plugin_settings")

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
    failure: str | None = None  # why it is disabled for this process (failed to load)


class NuvomPluginManager(pluggy.PluginManager):
    """pluggy's manager plus Nuvom's load order, provenance and actionable errors."""

    def __init__(self) -> None:
        super().__init__("nuvom")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str, str | None, str | None]] = {}
        self.failures: dict[str, str] = {}
        #: disabled plugin name -> what disabled it (the variable, the toml setting, both).
        self.disabled: dict[str, str] = {}
        #: every entry point of the ``nuvom`` group -> its distribution, loaded or not (read
        #: when autoloading, or when names are disabled: to tell a typo from a plugin).
        self.entry_points: dict[str, str] = {}
        self._autoload = True
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
        for module_name in DEFAULT_PLUGINS:
            if not self.is_blocked(module_name):
                self._register(importlib.import_module(module_name), module_name,
                               ("internal", "nuvom", None))
        self._autoload = not env.get(AUTOLOAD_VAR)
        if self._autoload:
            self._load_entry_points()
        elif self.disabled:
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

    def _check_hook_names(self) -> None:
        """pluggy's ``check_pending``: every marked ``nuvom_*`` function is a known hook.

        An installed plugin with a misspelt hook is disabled for this process, as one that
        fails to import is (its fault must not stop every command, ``nuvom plugin list``
        that shows it included); one listed in ``.nuvom_plugins.toml`` or internal stops
        loading.

        :raises PluginLoadError: naming the plugin, the unknown hook and the fix.
        """
        while True:
            try:
                self.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.get_name(exc.plugin) or repr(exc.plugin)
                hooks = [hook for hook, caller in vars(self.hook).items()
                         if hook.startswith("nuvom_") and caller.spec is not None]
                unknown = [caller.name for caller in self.get_hookcallers(exc.plugin) or ()
                           if caller.spec is None]
                hint = "".join(did_you_mean(hook, hooks, repr) for hook in unknown)
                message = (f"plugin {name!r}{self.provenance(name)} does not match the hook "
                           f"specs: {exc.args[0]}{hint}. Check the hook name for typos "
                           "against docs/plugin_hooks.md (every hook starts with 'nuvom_')")
                if self.sources.get(name, ("internal",))[0] != "entry point":
                    raise PluginLoadError(f"{message}.") from exc
                self._failed(name, message)

    def _failed(self, name: str, message: str, exc: Exception | None = None) -> None:
        """Disable plugin ``name`` for this process: ``message`` (what is wrong with it) is
        logged once with the way out and kept in :attr:`failures`.

        :raises PluginLoadError: for an essential internal plugin (the kernel's own bug:
            there is nothing to run without it).
        """
        message = f"{message}. It is disabled for this process: {self.disable_hint(name)}"
        if name in ESSENTIAL_PLUGINS:
            raise PluginLoadError(message) from exc
        log.error("%s", message)
        if exc is not None:
            log.debug("plugin %s failed", name, exc_info=exc)
        self.failures[name] = message
        self.unregister(name=name)

    def _probe(self) -> set[str]:
        """Call every plugin's registration and settings hooks once (:data:`PROBED_HOOKS`);
        disable a plugin whose implementation raises. Returns the names registered.

        Why here: these hooks run when something needs a backend (``collect``), long after
        loading, and a raise there named no plugin and stopped every command, even
        ``nuvom plugin list`` that would show the culprit.
        """
        names: set[str] = set()
        for hook_name in PROBED_HOOKS:
            for impl in list(getattr(self.hook, hook_name).get_hookimpls()):
                if self.get_plugin(impl.plugin_name) is None:  # disabled by an earlier hook
                    continue
                try:
                    returned = impl.function()
                    if hook_name == "nuvom_plugin_settings":  # a schema the kernel cannot
                        for table, source in dict(returned or {}).items():  # read stopped
                            PluginSchema.from_class(table.lower(), source)  # every command
                except Exception as exc:
                    self.disable(impl.plugin_name, hook_name, exc)
                    continue
                if hook_name != "nuvom_plugin_settings":
                    names |= {cls.name.lower() for cls in returned or ()
                              if isinstance(getattr(cls, "name", None), str)}
        return names

    def disable(self, name: str, hook_name: str, exc: Exception) -> None:
        """Disable plugin ``name`` for this process because its ``hook_name`` raised ``exc``,
        as a plugin that fails to import is: logged once, kept in :attr:`failures` (the
        CLI calls it for ``nuvom_register_commands``, which runs after loading).

        :raises PluginLoadError: for an essential internal plugin.
        """
        self._failed(name, f"plugin {name!r}{self.provenance(name)} failed in {hook_name}: "
                           f"{exc!r}", exc)

    def provenance(self, name: str) -> str:
        """`` (distribution D 1.0)`` for an installed plugin, else nothing."""
        _, dist, version = self.sources.get(name, ("internal", None, None))
        if dist is None or dist == "nuvom":
            return ""
        return f" (distribution {dist}{f' {version}' if version else ''})"

    def disable_hint(self, name: str, sentence: bool = False) -> str:
        """How a user stops plugin ``name`` from loading (until it is fixed); ``sentence``:
        capitalized, for a message's own sentence."""
        source = self.sources.get(name, ("entry point",))[0]
        if source == ".nuvom_plugins.toml":
            hint = (f"fix it, or disable it with {DISABLE_VAR}={name} (or remove it from "
                    f"[plugins] in {PLUGINS_FILE})")
        elif source == "embedded":
            hint = "fix it, or stop passing it to Kernel(plugins=...)"
        else:
            hint = f"fix or upgrade it, or disable it with {DISABLE_VAR}={name}"
        return hint[0].upper() + hint[1:] if sentence else hint

    def _warn_unknown_disabled(self, config: Config) -> None:
        """Warn once per process about a disabled name that matches no plugin: a typo there
        (``sqllite``) disabled nothing, silently."""
        targets = {t for found in config.plugins.targets.values() for t in found}
        listed = set(self.entry_points) | targets
        known = listed | set(DEFAULT_PLUGINS) | set(self.failures) | {
            name for name, plugin in self.list_name_plugin() if plugin is not None}
        for name, by in sorted(self.disabled.items()):
            if name in ESSENTIAL_PLUGINS:
                warn_once(f"{by} names plugin {name!r}, which cannot be disabled: the kernel "
                          f"needs it. Remove it from there.")
                continue
            if name in known:
                continue
            unloaded = "" if self._autoload else (
                f" ({AUTOLOAD_VAR} is set: only internal plugins and {PLUGINS_FILE} targets "
                "load)")
            warn_once(
                f"{by} names plugin {name!r}, but no installed plugin is called that"
                f"{did_you_mean(name, listed, repr)}, so it disables nothing. Installed "
                f"plugins: {', '.join(sorted(listed)) or 'none'}{unloaded}.")

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

    def _call(self, impl: Any, hook_name: str) -> Any:
        """A registration or settings hook implementation's return value.

        Loading called each one already (:meth:`_probe`) and disabled those that raised;
        this names the plugin for one registered after loading that raises.

        :raises PluginLoadError: naming the plugin, the hook, the error and the fix.
        """
        try:
            return impl.function()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {impl.plugin_name!r}{self.provenance(impl.plugin_name)} failed in "
                f"{hook_name}: {exc!r}. {self.disable_hint(impl.plugin_name, sentence=True)}."
            ) from exc

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
                message = (
                    f"plugin {ep.name!r} (entry point {ep.value!r} of distribution "
                    f"{dist.metadata['name']}) failed to import: {exc!r}. Reinstall it, "
                    f"or disable it with {DISABLE_VAR}={ep.name}"
                )
                log.error("%s", message)
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

    # --- registration hooks -------------------------------------------------------------

    def provider(self, hook_name: str, name: str) -> str | None:
        """The plugin whose ``hook_name`` registers the backend ``name``; ``None`` when
        none does, or the registrations cannot be read (for a message naming it)."""
        try:
            return self.collect(hook_name, name).get(name, (None, None))[1]
        except Exception:  # a broken registration: the message stays general
            return None

    def collect(self, hook_name: str, wanted: str | None = None
                ) -> dict[str, tuple[type, str]]:
        """Classes returned by a ``nuvom_register_*`` hook, keyed by ``name``, with provider.

        Two classes sharing a name are an error only for ``wanted``, the one name the
        caller builds; any other clash is a warning and the first class is kept (a clash
        between two plugins nobody selected stopped every command, the default backend's
        too, and the listings that would show it). :meth:`clashes` lists them all.

        :raises DuplicateBackendError: two classes share the name ``wanted`` (both providers
            named).
        """
        found, clashes = self._collected(hook_name)
        for name, message in clashes:
            if name == wanted:
                raise DuplicateBackendError(f"{message}.")
            warn_once(f"{message}; until then it cannot be selected.")
        return found

    def clashes(self, hook_name: str) -> list[str]:
        """What :meth:`collect` warns about: one message per backend name two plugins share
        (for ``nuvom plugin test``'s "unique names" check)."""
        return [message for _, message in self._collected(hook_name)[1]]

    def _collected(self, hook_name: str
                   ) -> tuple[dict[str, tuple[type, str]], list[tuple[str, str]]]:
        found: dict[str, tuple[type, str]] = {}
        clashes: list[tuple[str, str]] = []
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            for cls in self._call(impl, hook_name) or ():
                problem = _bad_name(impl.plugin_name, cls, hook_name)
                if problem is not None:
                    raise PluginLoadError(problem)
                name = cls.name
                if name in found and found[name][0] is not cls:
                    clashes.append((name, (
                        f"two plugins register {hook_name[15:].rstrip('s')} {name!r}: "
                        f"{found[name][1]!r} ({_qual(found[name][0])}) and "
                        f"{impl.plugin_name!r} ({_qual(cls)}). Disable one with "
                        f"{DISABLE_VAR}={impl.plugin_name} (or [plugins] disable = "
                        f"[\"{impl.plugin_name}\"] in {PLUGINS_FILE}), or rename its backend")))
                    continue
                found[name] = (cls, impl.plugin_name)
        return found, clashes

    def lookup(self, hook_name: str, name: str, what: str) -> type:
        """One registered class by name, or an error listing installed names and a fix.

        :raises PluginLoadError: the class leaves a required method unwritten (instantiating
            it would fail with a ``TypeError`` that names neither the plugin nor the fix).
        """
        classes = self.collect(hook_name, name)
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
        choose = f"NUVOM_{what.upper().replace(' ', '_')}=<name>"
        disabled = self.disabled_note(name)
        if disabled is not None:
            raise BackendNotFoundError(
                f"the {what} {name!r} is provided by a disabled plugin: {disabled}. Remove "
                f"it from there to use it, or choose an enabled {what} with {choose} "
                f"(enabled: {installed}).")
        if name in self.failures:  # the plugin of that name failed to load
            raise BackendNotFoundError(f"the {what} {name!r} is not available: "
                                       f"{self.failures[name]}.")
        dist = KNOWN_PROVIDERS.get(name, f"nuvom-plugins-{name}")
        # ours are installed from a clone of the repository (README): its folder too
        clone = (f" (from a clone of Nuvom: `pip install ./{dist.replace('-', '_')}`)"
                 if name in KNOWN_PROVIDERS else "")
        raise BackendNotFoundError(
            f"no installed plugin provides the {what} {name!r}. Installed: {installed}. "
            f"Install the plugin that provides it, e.g. `pip install {dist}`{clone}, or "
            f"choose an installed one with {choose}.{self.loading_notes()}"
        )

    def disabled_providers(self, name: str) -> list[str]:
        """Disabled, installed plugins that would provide the backend ``name``: the one of
        that name, else those of the distribution known to provide it (the plugin is not
        imported to find out: disabling it means never loading it)."""
        installed = {plugin: dist for plugin, dist in self.entry_points.items()
                     if plugin in self.disabled}
        if name in installed:
            return [name]
        known = KNOWN_PROVIDERS.get(name)
        return sorted(plugin for plugin, dist in installed.items()
                      if known is not None and normalized(dist) == known)

    def disabled_note(self, name: str) -> str | None:
        """What disables the provider(s) of the backend ``name``, or ``None`` if none is
        disabled: ``plugin 'sqlite' (nuvom-plugins-sqlite), disabled by
        NUVOM_DISABLE_PLUGINS=sqlite``."""
        plugins = self.disabled_providers(name)
        if not plugins:
            return None
        return "; ".join(f"plugin {plugin!r} ({self.entry_points[plugin]}), disabled by "
                         f"{self.disabled[plugin]}" for plugin in plugins)

    def loading_notes(self) -> str:
        """Why a backend may be missing besides not being installed, for an error: plugins
        that failed to load, disabled ones, skipped entry points. Empty if none applies."""
        notes = [f" Note: {message}." for message in self.failures.values()]
        if self.disabled:
            notes.append(" Note: disabled plugins: " + "; ".join(
                f"{name!r} (by {by})" for name, by in sorted(self.disabled.items())) + ".")
        if not self._autoload:
            notes.append(f" Note: {AUTOLOAD_VAR} is set, so no installed distribution's "
                         "plugin is loaded.")
        return "".join(notes)

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin, loaded or failed (``failure`` says why), for ``nuvom plugin list``;
        one whose registration hook raises is listed as failed, never stops the listing."""
        provided: dict[str, dict[str, list[str]]] = {}
        failed = {name: message for name, message in self.failures.items()
                  if self.get_plugin(name) is None}
        for capability, hook_name in CAPABILITIES.items():
            if hook_name is None:
                continue
            for impl in getattr(self.hook, hook_name).get_hookimpls():
                try:
                    classes = list(impl.function() or ())
                except Exception as exc:
                    failed.setdefault(impl.plugin_name, f"plugin {impl.plugin_name!r} failed "
                                                        f"in {hook_name}: {exc!r}")
                    continue
                problems = [p for c in classes
                            if (p := _bad_name(impl.plugin_name, c, hook_name)) is not None]
                if problems:  # what collect() refuses: list it as failed, with the same error
                    failed.setdefault(impl.plugin_name, problems[0])
                    continue
                names = [c.name for c in classes]
                provided.setdefault(impl.plugin_name, {})[capability] = names
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            source, dist, version = self.sources.get(name, ("internal", None, None))
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or ()))
            provides = {k: tuple(v) for k, v in provided.get(name, {}).items() if v}
            infos.append(PluginInfo(name, source, dist, version, hooks, provides,
                                    failed.pop(name, None)))
        for name, message in failed.items():  # disabled while loading: no longer registered
            source, dist, version = self.sources.get(name, ("entry point", None, None))
            infos.append(PluginInfo(name, source, dist, version, (), {}, message))
        return sorted(infos, key=lambda i: (i.source != "entry point", i.name))


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _bad_name(plugin_name: str, cls: Any, hook_name: str) -> str | None:
    """What is wrong with the ``name`` of ``cls``, registered by ``plugin_name`` through
    ``hook_name``, or ``None`` when it is a non-empty string (what configuration selects it by).

    Why one function: :meth:`NuvomPluginManager.collect` refuses such a class and ``nuvom
    plugin list`` lists its plugin as failed; both say the same, and say whether the name is
    missing or has the wrong value (``name = 5`` was reported as "has no 'name'").
    """
    where = f"plugin {plugin_name!r}: {cls!r} from {hook_name}"
    fix = ("Set it to a non-empty string, the name configuration selects it by (e.g. "
           "name = \"myqueue\").")
    if not hasattr(cls, "name"):
        return f"{where} has no 'name' class attribute. {fix}"
    name = cls.name
    if not isinstance(name, str):
        return (f"{where} has a 'name' class attribute that is not a string: "
                f"{name!r} ({type(name).__name__}). {fix}")
    if not name:
        return f"{where} has an empty 'name' class attribute. {fix}"
    return None
