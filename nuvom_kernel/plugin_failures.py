"""A plugin that breaks: disabling it for the process, and the messages that name it.

Kept apart from the load order (:mod:`nuvom_kernel.plugins`) and the backend lookups
(:mod:`.plugin_lookup`) because both end here whenever a plugin is at fault: whatever broke —
an import, a misspelt hook, a registration, settings, configure or command hook that raised
— the plugin is disabled the same way (:meth:`PluginFailures.disable`), logged once with its
name, its distribution and the way out (``NUVOM_DISABLE_PLUGINS=<name>``), and kept in
:attr:`PluginFailures.failures`, which every later error about a missing backend repeats
(:meth:`PluginFailures.loading_notes`). One place, so every such message says the same.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pluggy

from nuvom_kernel.config import (
    AUTOLOAD_VAR,
    CAPABILITIES,
    DISABLE_VAR,
    PLUGINS_FILE,
    Config,
)
from nuvom_kernel.errors import PluginConfigError, PluginLoadError
from nuvom_kernel.hints import did_you_mean, warn_once
from nuvom_kernel.plugin_sources import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS, plugin_behind

__all__ = ["KNOWN_DISCOVERERS", "KNOWN_PLUGINS", "KNOWN_PROVIDERS", "PluginFailures",
           "clone_install", "inherit_failures", "install_hint"]

log = logging.getLogger("nuvom.plugins")

#: Which distribution provides each well-known backend name (for "pip install" hints).
KNOWN_PROVIDERS: dict[str, str] = {
    "memory": "nuvom-plugins",
    "file": "nuvom-plugins",
    "ast": "nuvom-plugins",
    "sqlite": "nuvom-plugins-sqlite",
    "redis": "nuvom-plugins-redis",
    "postgres": "nuvom-plugins-postgres",
}

#: The names of :data:`KNOWN_PROVIDERS` that are discoverers; each other one is both a queue
#: and a result backend.
KNOWN_DISCOVERERS: frozenset[str] = frozenset({"ast"})

#: The plugin (entry point) of that distribution that registers each of them: disabling
#: ``file`` leaves the ``ast`` discoverer, which is plugin ``discovery``'s.
KNOWN_PLUGINS: dict[str, str] = {"ast": "discovery"}


def clone_install(dist: str) -> str:
    """How to install our distribution ``dist``: from a clone's folder, since ours are not
    on the public index, where a look-alike name could be anyone's (the README says so)."""
    return f"from a clone of Nuvom, `pip install ./{dist.replace('-', '_')}`"


def install_hint(name: str) -> str:
    """How to install the plugin providing the backend ``name``, as a sentence without its
    full stop; for a name we do not know no package is guessed at all."""
    dist = KNOWN_PROVIDERS.get(name)
    if dist is None:
        return ("Install the plugin that provides it (its documentation names the "
                "distribution)")
    return f"Install the plugin that provides it: {clone_install(dist)} (the distribution {dist})"

#: Plugins this process's worker disabled -> why (:func:`inherit_failures`); empty but in a
#: process-pool child.
_inherited: dict[str, str] = {}


def inherit_failures(failures: Mapping[str, str]) -> None:
    """Disable the plugins of ``failures`` (name -> the worker's message) in every manager
    this process loads from now on: never imported, listed as failed with that message.

    Why: a process-pool child loads the plugins without building the CLI, so a plugin its
    worker disabled after loading (its ``nuvom_register_commands`` raised) kept its other
    hooks — ``nuvom_configure``, the observers of the jobs a task enqueues — running where
    the tasks run. The child calls this before it builds a kernel; nothing is logged again
    (the worker said it once).
    """
    _inherited.update(failures)


class PluginFailures(pluggy.PluginManager):
    """pluggy's manager plus what it knows of plugins that failed or were disabled, and the
    messages that name them (the base of :class:`~nuvom_kernel.plugins.NuvomPluginManager`)."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        #: plugin name -> (source, distribution, version): where each came from.
        self.sources: dict[str, tuple[str, str | None, str | None]] = {}
        #: plugin name -> why it is disabled for this process (it failed).
        self.failures: dict[str, str] = {}
        #: (registration hook, class name) -> the failed plugin that registered it, so the
        #: lookup of a backend names its plugin's failure, not a missing install.
        self.failed_provides: dict[tuple[str, str], str] = {}
        #: disabled plugin name -> what disabled it (the variable, the toml setting, both).
        self.disabled: dict[str, str] = {}
        #: every entry point of the ``nuvom`` group -> its distribution, loaded or not (read
        #: when autoloading, or when names are disabled: to tell a typo from a plugin).
        self.entry_points: dict[str, str] = {}
        self._autoload = True
        #: the value of NUVOM_DISABLE_PLUGIN_AUTOLOAD that turned autoloading off, if one did
        self._autoload_value = ""

    def autoload_off(self) -> str:
        """Why installed plugins are not loaded, with the value that did it: ``=0`` and
        ``=false`` turn autoloading off too (pytest's rule: any non-empty value), and the
        messages said only "is set" beside "Installed: none"."""
        return (f"{AUTOLOAD_VAR}={self._autoload_value!r} is set (any non-empty value, 0 and "
                f"false too, turns autoloading off: unset it to load installed plugins)")

    def _block_inherited(self) -> None:
        """Block the plugins :func:`inherit_failures` named, keeping the worker's message."""
        for name, message in sorted(_inherited.items()):
            self.set_blocked(name)
            self.failures.setdefault(name, message)

    def _check_hook_names(self) -> None:
        """pluggy's ``check_pending``: every marked ``nuvom_*`` function is a known hook.

        An installed plugin with a misspelt hook is disabled for this process, as one that
        fails to import is (its fault must not stop every command, ``nuvom plugin list``
        that shows it included); one listed in ``.nuvom_plugins.toml`` or internal stops
        loading.

        :raises PluginLoadError: naming the plugin, the unknown hook and the fix
            (``PluginConfigError`` for a ``.nuvom_plugins.toml`` target: exit status 2).
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
                source = self.sources.get(name, ("internal",))[0]
                if source == PLUGINS_FILE:  # a configuration error, as its other ones are
                    raise PluginConfigError(f"{message} (listed in {PLUGINS_FILE}).") from exc
                if source != "entry point":
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
        self._remember_provides(name)
        self.unregister(name=name)

    def _remember_provides(self, name: str) -> None:
        """Keep the class names the registered plugin ``name`` provides, as it is disabled
        (one whose ``nuvom_configure`` raised had registered its backends): asking for one
        was answered "no installed plugin provides it ... install the plugin", though the
        plugin was installed and had failed."""
        plugin = self.get_plugin(name)
        if plugin is None:  # it never registered (its import failed)
            return
        for hook_name in filter(None, CAPABILITIES.values()):
            register = getattr(plugin, hook_name, None)
            if not callable(register):
                continue
            try:
                classes = list(register() or ())
            except Exception:  # said already, or will be where it is called
                continue
            for cls in classes:
                if isinstance(getattr(cls, "name", None), str):
                    self.failed_provides.setdefault((hook_name, cls.name), name)

    def disable(self, name: str, hook_name: str, exc: Exception) -> None:
        """Disable plugin ``name`` for this process because its ``hook_name`` raised ``exc``,
        as a plugin that fails to import is: logged once, kept in :attr:`failures` (the
        CLI calls it for ``nuvom_register_commands``, which runs after loading).

        :raises PluginLoadError: for an essential internal plugin.
        """
        behind = plugin_behind(self, exc)  # its own line: the error may be a library's
        at = f" (raised at {behind[1]})" if behind and behind[0] == name else ""
        self._failed(name, f"plugin {name!r}{self.provenance(name)} failed in {hook_name}: "
                           f"{exc!r}{at}", exc)

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
                f" ({self.autoload_off()}; only internal plugins and {PLUGINS_FILE} targets "
                "load)")
            warn_once(
                f"{by} names plugin {name!r}, but no installed plugin is called that"
                f"{did_you_mean(name, listed, repr)}, so it disables nothing. Installed "
                f"plugins: {', '.join(sorted(listed)) or 'none'}{unloaded}.")

    def _call(self, impl: Any, hook_name: str) -> Any:
        """A registration or settings hook implementation's return value.

        Loading called each one already
        (:meth:`~nuvom_kernel.plugins.NuvomPluginManager._probe`) and disabled those that
        raised; this names the plugin for one registered after loading that raises.

        :raises PluginLoadError: naming the plugin, the hook, the error and the fix.
        """
        try:
            return impl.function()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {impl.plugin_name!r}{self.provenance(impl.plugin_name)} failed in "
                f"{hook_name}: {exc!r}. {self.disable_hint(impl.plugin_name, sentence=True)}."
            ) from exc

    def disabled_note(self, name: str) -> str | None:
        """What disables the installed plugin that would provide the backend ``name``, or
        ``None`` if it is not disabled: ``plugin 'sqlite' (nuvom-plugins-sqlite), disabled
        by NUVOM_DISABLE_PLUGINS=sqlite``. The plugin is the one of that name, or the one
        known to provide it (:data:`KNOWN_PLUGINS`), not imported to find out: disabling it
        means never loading it. Not every disabled plugin of the distribution: disabling
        ``file`` named it as the provider of the ``ast`` discoverer, which removing it did
        not bring back."""
        plugin = KNOWN_PLUGINS.get(name, name)
        if plugin not in self.disabled or plugin not in self.entry_points:
            return None
        return (f"plugin {plugin!r} ({self.entry_points[plugin]}), disabled by "
                f"{self.disabled[plugin]}")

    def why_not_loaded(self, plugin: str, dist: str) -> str:
        """Why our plugin ``plugin`` (of the distribution ``dist``) is not loaded, to end a
        sentence: it failed, is disabled, autoload is off, or it is not installed. Only
        the last is answered with an install."""
        if plugin in self.failures:
            return f"failed to load: {self.failures[plugin]}"
        if plugin in self.disabled:
            return f"disabled by {self.disabled[plugin]}: remove it from there to use it"
        if not self._autoload:
            return f"not loaded: {self.autoload_off()}"
        return f"not installed: {clone_install(dist)}"

    def loading_notes(self) -> str:
        """Why a backend may be missing besides not being installed, for an error: plugins
        that failed to load, disabled ones, skipped entry points. Empty if none applies."""
        notes = [f" Note: {message}." for message in self.failures.values()]
        if self.disabled:
            notes.append(" Note: disabled plugins: " + "; ".join(
                f"{name!r} (by {by})" for name, by in sorted(self.disabled.items())) + ".")
        if not self._autoload:
            notes.append(f" Note: no installed distribution's plugin is loaded: "
                         f"{self.autoload_off()}.")
        return "".join(notes)
