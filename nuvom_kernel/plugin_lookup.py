"""Which plugin provides what: the backend lookups a kernel builds from, and the listing
``nuvom plugin list`` prints.

Kept apart from the load order (:mod:`nuvom_kernel.plugins`) because it runs long after
loading, whenever something needs a backend, and reads the registration hooks as they stand
then: two plugins sharing a backend name, a class without a usable ``name`` or a required
method, a backend nobody provides (with the ``pip install`` that would) are found and said
here. Everything it says about a failed or disabled plugin comes from
:class:`~nuvom_kernel.plugin_failures.PluginFailures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.config import CAPABILITIES, DISABLE_VAR, PLUGINS_FILE
from nuvom_kernel.discovery import Discoverer
from nuvom_kernel.errors import BackendNotFoundError, DuplicateBackendError, PluginLoadError
from nuvom_kernel.hints import did_you_mean, warn_once
from nuvom_kernel.plugin_failures import (
    KNOWN_DISCOVERERS,
    KNOWN_PROVIDERS,
    PluginFailures,
    install_hint,
)
from nuvom_kernel.serialization import Serializer

__all__ = ["REGISTERED_BASES", "BackendLookup", "PluginInfo"]

_BACKENDS = frozenset(KNOWN_PROVIDERS) - KNOWN_DISCOVERERS
#: Registration hook -> the names of :data:`KNOWN_PROVIDERS` it registers.
_OURS_BY_HOOK: dict[str, frozenset[str]] = {
    "nuvom_register_queue_backends": _BACKENDS,
    "nuvom_register_result_backends": _BACKENDS,
    "nuvom_register_discoverers": KNOWN_DISCOVERERS,
}

#: Registration hook -> the class every class it returns subclasses (checked at load, and
#: by ``nuvom plugin test``).
REGISTERED_BASES: dict[str, type] = {
    "nuvom_register_queue_backends": QueueBackend,
    "nuvom_register_result_backends": ResultBackend,
    "nuvom_register_discoverers": Discoverer,
    "nuvom_register_serializers": Serializer,
}


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


class BackendLookup(PluginFailures):
    """The registration hooks read by name (the base of
    :class:`~nuvom_kernel.plugins.NuvomPluginManager`)."""

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
        failed = self.failed_provides.get((hook_name, name))
        if failed in self.failures:  # registered by a plugin disabled since (it raised)
            raise BackendNotFoundError(f"the {what} {name!r} is provided by plugin "
                                       f"{failed!r}, which failed: {self.failures[failed]}.")
        # the names of our distributions this hook can provide: 'pickle', a serializer
        # no plugin has, was asked "did you mean 'file'?" (a backend), and 'redis' was told
        # to install the Redis plugin
        ours = _OURS_BY_HOOK.get(hook_name, frozenset())
        typo = did_you_mean(name, set(classes) | ours, repr)
        # autoload off: installed plugins are not loaded, so a missing one may be installed
        known = "installed" if self._autoload else "loaded"
        if typo and name not in ours:  # 'sqllite': no package to install
            raise BackendNotFoundError(
                f"no {known} plugin provides the {what} {name!r}{typo}. "
                f"{known.capitalize()}: {installed}. Choose one with {choose}."
                f"{self.loading_notes()}")
        choice = f"an {known} one with {choose}"
        advice = (f"{install_hint(name if name in ours else '')}, or choose {choice}"
                  if self._autoload
                  else f"Choose {choice}")  # (the note says why it may be installed)
        raise BackendNotFoundError(
            f"no {known} plugin provides the {what} {name!r}. {known.capitalize()}: "
            f"{installed}. {advice}.{self.loading_notes()}")

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


def registered_problem(plugin_name: str, hook_name: str, returned: Any) -> str | None:
    """What is wrong with what ``plugin_name``'s registration hook returned, or ``None``
    for a list of classes each with a non-empty string ``name``.

    Why checked when plugins load (where the plugin can be disabled and named): ``return
    MyQueue`` (the class, not a list of it) stopped every command, ``nuvom plugin list``
    and ``nuvom plugin test`` included, with ``TypeError: 'ABCMeta' object is not
    iterable``; a name in the list, or a class named ``""``, stopped every command that
    loaded backends, those selecting another backend too.
    """
    if returned is None:
        return None
    where = f"plugin {plugin_name!r}: {hook_name}"
    if not isinstance(returned, list | tuple):
        return (f"{where} returned {returned!r}, not a list of classes: return "
                f"[{getattr(returned, '__name__', 'TheClass')}]")
    base = REGISTERED_BASES.get(hook_name)
    for item in returned:
        if not isinstance(item, type):
            return (f"{where} returned {item!r} in its list, which is not a class: list the "
                    "classes themselves, not their names or instances")
        if base is not None and not issubclass(item, base):
            # it was listed as a backend, then failed at its first use with an
            # AttributeError blamed on the store ("check its storage")
            return (f"{where} returned {item!r}, which is not a {base.__module__}."
                    f"{base.__qualname__} subclass: {hook_name} lists "
                    f"{base.__qualname__} subclasses only")
        if (problem := _bad_name(plugin_name, item, hook_name)) is not None:
            return problem
    return None


def settings_problem(plugin_name: str, returned: Any) -> str | None:
    """What is wrong with what ``plugin_name``'s ``nuvom_plugin_settings`` returned, or
    ``None`` for ``None`` or a dict of table name -> class. Why: ``return [MySettings]``,
    ``return MySettings`` or an instance in the dict each stopped with Python's own words
    (``cannot convert dictionary update sequence element #0``, ``no attribute
    '__qualname__'``), not what to return."""
    if returned is None:
        return None
    fix = 'return {"<table name>": TheSettingsClass}, e.g. {"myqueue": MyQueueSettings}'
    where = f"plugin {plugin_name!r}: nuvom_plugin_settings"
    if not isinstance(returned, Mapping):
        return f"{where} returned {returned!r:.80}, not a dict of table name -> class: {fix}"
    for table, schema in returned.items():
        if not isinstance(table, str) or not table:
            return f"{where} returned the table name {table!r}, not a non-empty string: {fix}"
        if not isinstance(schema, type):
            return (f"{where} returned {schema!r:.80} for table {table!r}, not a class (the "
                    f"class itself, not an instance): {fix}")
    return None


def _bad_name(plugin_name: str, cls: Any, hook_name: str) -> str | None:
    """What is wrong with the ``name`` of ``cls``, registered by ``plugin_name`` through
    ``hook_name``, or ``None`` when it is a non-empty string (what configuration selects it by).

    Why one function: :meth:`BackendLookup.collect` refuses such a class and ``nuvom
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
