"""Where plugins come from: the kernel's internal plugins, the ``nuvom`` entry-point group,
the targets of ``.nuvom_plugins.toml``, and the names a user disabled.

Kept apart from the manager (:mod:`nuvom_kernel.plugins`: the load order;
:mod:`.plugin_failures`; :mod:`.plugin_lookup`) because none of this needs its state: each
function reads the installed distributions, imports one target or reads the settings, and
says precisely what is wrong with them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import traceback
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.config import DISABLE_VAR, PLUGINS_FILE, Config
from nuvom_kernel.errors import PluginConfigError

__all__ = ["DEFAULT_PLUGINS", "ESSENTIAL_PLUGINS", "disabled_plugins", "import_target",
           "make_importable", "normalized", "nuvom_entry_points"]

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


def missing_module(exc: BaseException, module: str) -> bool:
    """Whether ``exc`` says ``module`` itself (or a package above it) is not there, rather
    than that its code failed, or imported something missing, while it ran."""
    name = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    return bool(name) and (module == name or module.startswith(f"{name}."))


#: Frames that are never where a plugin's import went wrong: the import machinery's and
#: Nuvom's own (a plugin calling ``@task`` wrongly is at its own line, one frame out).
_NOT_THE_PLUGIN = ("<frozen ", os.path.join(Path(importlib.__file__).parent, ""),
                   os.path.join(Path(__file__).parent, ""))


def entry_point_typo(value: str, exc: BaseException) -> str | None:
    """The advice for an entry point whose value names a module (or attribute) its own
    installed package lacks, or ``None`` when the package itself is missing. Why:
    "Reinstall it" kept the typo (``nuvom_plugins_x.plugn``), which only the distribution's
    ``pyproject.toml`` can fix."""
    module, _, attr = (part.strip() for part in value.partition(":"))
    if isinstance(exc, AttributeError) and attr:
        return (f"its module {module} has no {attr!r}: fix the entry point's value in the "
                "distribution's pyproject.toml ([project.entry-points.nuvom]), then reinstall "
                "it")
    parent, _, leaf = module.rpartition(".")
    if not parent or not missing_module(exc, module):
        return None
    try:
        spec = importlib.util.find_spec(parent)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    siblings = [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
    close = difflib.get_close_matches(leaf, siblings, n=1)
    return (f"its package {parent} is installed but has no module {leaf!r}"
            + (f" (did you mean {parent}.{close[0]}?)" if close else "")
            + ": fix the entry point's value in the distribution's pyproject.toml "
            "([project.entry-points.nuvom]), then reinstall it")


def plugin_behind(plugins: Any, exc: BaseException) -> tuple[str, str] | None:
    """``(plugin name, "file:line in function")`` of the innermost frame of ``exc``'s
    traceback that lies in a registered plugin's own folder, or ``None``. Why: a backend
    method raising a plain ``OSError`` (a ``path`` naming a folder) ended ``nuvom status``
    and ``runworker`` in a traceback that named no plugin, though ``.delay()`` named it."""
    roots: list[tuple[str, str]] = []  # (plugin, its package's folder or its lone file)
    for name, plugin in plugins.list_name_plugin():
        module = plugin if isinstance(plugin, types.ModuleType) else \
            sys.modules.get(getattr(plugin, "__module__", None) or type(plugin).__module__)
        package = sys.modules.get(getattr(module, "__package__", None) or "")
        local = getattr(plugins, "sources", {}).get(name, ("",))[0] == PLUGINS_FILE
        if package is not None and getattr(package, "__path__", None) and not local:
            found = [os.path.join(path, "") for path in package.__path__]
        else:  # a module of its own (never its folder: site-packages holds everything),
            # or a .nuvom_plugins.toml target: its package is the user's project
            found = [getattr(module, "__file__", None) or ""]
        roots += [(name, root) for root in found
                  if root and not root.startswith(_NOT_THE_PLUGIN)]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        for name, root in roots:
            if frame.filename == root or (root.endswith(os.sep)
                                          and frame.filename.startswith(root)):
                return name, f"{frame.filename}:{frame.lineno} in {frame.name}"
    return None


def raised_at(exc: BaseException, module: str | None = None) -> str:
    """`` (raised at file:line)``: the plugin's own line that raised (a ``SyntaxError``'s
    file and line), or nothing where the traceback holds none of its lines (a module not
    installed, an entry point naming what its module lacks). Why: "failed to import:
    RuntimeError('boom')" named no file, and ``-v`` showed no more.

    With ``module`` (the plugin's module, by its import name), the line is the last one in
    that module's top-level package, and the innermost frame follows where it differs:
    ``json.loads`` raising at import was blamed on ``json/decoder.py:353``, not on the
    plugin's line that called it."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (raised at {exc.filename}:{exc.lineno})"
    frames = [(frame.f_code.co_filename, line, str(frame.f_globals.get("__name__", "")))
              for frame, line in traceback.walk_tb(exc.__traceback__)
              if not frame.f_code.co_filename.startswith(_NOT_THE_PLUGIN)]
    if not frames:
        return ""
    file, line, _ = frames[-1]
    top = (module or "").partition(".")[0]
    own = [f for f in frames if top and (f[2] == top or f[2].startswith(top + "."))]
    if own and own[-1] != frames[-1]:
        return f" (raised at {own[-1][0]}:{own[-1][1]}, in {file}:{line})"
    return f" (raised at {file}:{line})"


def import_target(target: str, where: str, root: Path) -> Any:
    """The plugin a ``.nuvom_plugins.toml`` target names (``module`` or ``module:attr``),
    ready to register (:func:`as_plugin`).

    :raises PluginConfigError: it cannot be imported, has no such attribute, or holds no
        hook implementation; ``where`` (file, table and key) starts the message.
    """
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # sys.exit() at import ended every command
        # with its status and not a word
        if isinstance(exc, SystemExit) or not missing_module(exc, module_name):
            what = (f"called sys.exit({exc.code!r}) while it was imported"
                    if isinstance(exc, SystemExit) else
                    f"failed while it was imported: {exc!r}{raised_at(exc, module_name)}")
            raise PluginConfigError(
                f"{where}: target {target!r} {what}. Fix that error in its code (or install "
                "what it imports)."
            ) from exc
        raise PluginConfigError(
            f"{where}: target {target!r} cannot be imported: {exc!r}. Check the module "
            f"path: it is imported from the project folder {root} (the folder "
            "holding .nuvom_plugins.toml) or from the installed packages."
        ) from exc
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            raise PluginConfigError(
                f"{where}: target {target!r}: module {module_name!r} has no attribute "
                f"{part!r}."
            )
        obj = getattr(obj, part)
    plugin = as_plugin(obj, target, where)
    if plugin is None:
        raise PluginConfigError(
            f"{where}: target {target!r} holds no Nuvom hook implementation. Mark "
            "functions with @nuvom_kernel.hookimpl (see docs/writing_plugins.md), or "
            "point at a QueueBackend/ResultBackend subclass."
        )
    return plugin


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


def disabled_plugins(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Plugin name -> what disables it: ``[plugins] disable`` in the file, the variable, or
    both (an error about a disabled plugin says which to change)."""
    found: dict[str, list[str]] = {}
    for name in config.plugins.disable:
        if name.strip():
            found.setdefault(name.strip(), []).append(
                f"[plugins] disable in {config.path or PLUGINS_FILE}")
    for name in env.get(DISABLE_VAR, "").split(","):
        if name.strip():
            found.setdefault(name.strip(), []).append(f"{DISABLE_VAR}={env[DISABLE_VAR]}")
    return {name: " and ".join(dict.fromkeys(by)) for name, by in found.items()}


def nuvom_entry_points() -> list[tuple[importlib.metadata.Distribution,
                                        importlib.metadata.EntryPoint]]:
    """Every entry point of the ``nuvom`` group, with its distribution, each distribution
    once (one can be listed twice on ``sys.path``)."""
    seen: set[str] = set()
    found = []
    for dist in importlib.metadata.distributions():
        if dist.metadata["name"] in seen:
            continue
        seen.add(dist.metadata["name"])
        found += [(dist, ep) for ep in dist.entry_points if ep.group == "nuvom"]
    return found


def normalized(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Nuvom_Plugins`` ->
    ``nuvom-plugins``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def as_plugin(obj: Any, target: str, where: str) -> Any:
    """What to register for a toml target: a module or object with hookimpls as is, a class
    with hookimpls instantiated, and a bare backend class wrapped in a registration plugin."""
    if inspect.isclass(obj):
        if issubclass(obj, QueueBackend | ResultBackend):
            hook = ("nuvom_register_queue_backends" if issubclass(obj, QueueBackend)
                    else "nuvom_register_result_backends")
            from nuvom_kernel import hookimpl

            def register() -> list[type]:
                return [obj]

            # its class's module: where plugin_behind looks for the plugin's own lines
            return types.SimpleNamespace(**{hook: hookimpl(register)},
                                         __module__=obj.__module__)
        if has_hookimpls(obj):
            try:
                return obj()
            except Exception as exc:  # its __init__'s own error too (a bare traceback)
                at = raised_at(exc, obj.__module__)
                raise PluginConfigError(
                    f"{where}: target {target!r} is a class "
                    + (f"that cannot be built without arguments: {exc}"
                       if isinstance(exc, TypeError) and not at else
                       f"whose __init__ raised {exc!r}{at}")
                    + ". Fix its __init__, or point at a module or an instance."
                ) from exc
        return None
    return obj if has_hookimpls(obj) else None


def has_hookimpls(obj: Any) -> bool:
    return any(
        name.startswith("nuvom_") and hasattr(getattr(obj, name, None), "nuvom_impl")
        for name in dir(obj)
    )
