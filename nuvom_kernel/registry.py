"""Thread-safe task registry: name → task, filled lazily from the manifest and job metadata.

A worker does not import the project up front: ``.nuvom/manifest.json`` says which module
holds which task, and the module is imported when the first job for it arrives. A job also
carries its task's module path, so a worker started in the project directory runs it even
before any manifest exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from nuvom_kernel.discovery import import_roots, read_manifest
from nuvom_kernel.errors import TaskRegistrationError, UnknownTaskError

__all__ = ["REGISTRY", "TaskRegistry"]

log = logging.getLogger("nuvom.registry")


class TaskRegistry:
    """Name → callable, with the original Nuvom's ``register(name, fn, force, silent)``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, Any] = {}
        self._modules: dict[str, str] = {}  # from the manifest: name -> module
        #: (name, the job's module) -> the task found elsewhere: a task moved since its
        #: jobs were enqueued, or enqueued by a script the worker knows by another name
        self._found: dict[tuple[str, str | None], Any] = {}
        self._read_at: dict[str, float | None] = {}  # module -> its file's mtime at import

    def register(self, name: str, fn: Any, *, force: bool = False, silent: bool = False
                 ) -> None:
        """Add ``fn`` under ``name``.

        A second registration of the same name is an error unless ``force`` (replace) or
        ``silent`` (keep the first). Re-registering the same function (a module imported
        twice) is not a duplicate.
        """
        with self._lock:
            existing = self._tasks.get(name)
            if existing is None or force or _same_function(existing, fn):
                if existing is not None and not force and _one_factory(existing, fn):
                    log.warning(
                        "task %r is defined again by %s: jobs of that name now run the "
                        "newest definition. Tasks a factory makes need a name each "
                        "(@task(name=...)), or the last one made runs every job", name,
                        _where(fn))
                self._tasks[name] = fn
                return
            if silent:
                return
            raise TaskRegistrationError(
                f"task name {name!r} is already registered by {_where(existing)}; "
                f"{_where(fn)} cannot use it too. Give one of them another name with "
                f"@task(name=...)."
            )

    def get(self, name: str) -> Any | None:
        # No lock: one dict read is atomic, and the worker reads here once per job (the
        # lock, contended by the executor threads, cost more than the lookup).
        return self._tasks.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._tasks) | set(self._modules))

    def modules(self) -> list[str]:
        """Modules the manifest names (a process pool's children import them at start)."""
        with self._lock:
            return sorted(set(self._modules.values()))

    def clear(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._modules.clear()
            self._found.clear()
            self._read_at.clear()

    def load_manifest(self, data_dir: Path, project: Path | None = None) -> int:
        """Remember where each task of the manifest lives; imports nothing. Returns count.

        With ``project`` (the folder discovery ran in), the folders its modules import from
        go on ``sys.path`` too, after what is there: discovery names ``src/shop/tasks.py``
        ``shop.tasks``, and a worker of a src-layout project not installed into its
        environment could not import what its own manifest named (``No module named
        'shop'``). An installed copy still comes first."""
        try:
            manifest = read_manifest(data_dir)
        except ValueError as exc:
            log.warning("ignoring manifest: %s", exc)
            return 0
        if manifest is None:
            return 0
        with self._lock:
            for entry in manifest.get("tasks", []):
                self._modules[entry["name"]] = entry["module"]
        if project is not None:
            cwd = Path.cwd().absolute() if "" in sys.path else None  # "" is the cwd
            for root in import_roots(manifest, Path(project).absolute()):
                if str(root) not in sys.path and root != cwd and root.is_dir():
                    sys.path.append(str(root))
        return len(manifest.get("tasks", []))

    def resolve(self, name: str, module: str | None = None) -> Any:
        """The task for ``name`` whose job was enqueued from ``module``, importing the job's
        module first, then the one the manifest names (a task moved since the job was
        enqueued).

        A task registered under ``name`` by *another* module is not this job's: two
        modules can each define a task of one name (``alerts.tasks.send`` and
        ``billing.tasks.send``), and a worker that had imported one used to run it for the
        other's jobs. Such a job imports its own module, whose registration then fails
        naming both, and the job fails with that.

        :raises UnknownTaskError: with what was tried and how to fix it.
        """
        fn = self._tasks.get(name)  # known()'s first test, inline: this runs once per job
        if fn is not None and (module is None or getattr(fn, "module", module) == module):
            return fn
        fn = self._found.get((name, module))
        if fn is not None:
            return fn
        registered = self._tasks.get(name)
        if registered is not None and module is not None and _same_file(registered, module):
            with self._lock:  # one file imported under two names (src.app.tasks, app.tasks):
                self._found[(name, module)] = registered  # importing it again would clash
            return registered
        tried: list[str] = []
        import_failed = False
        changed = ""  # a module's file, edited after this process imported it
        broken = ""  # a module found, but raising as it is imported: its code's fault
        for candidate in dict.fromkeys(m for m in (module, self._modules.get(name)) if m):
            loaded = candidate in sys.modules  # imported before: the import changes nothing
            try:
                self.import_module(candidate)
            except TaskRegistrationError as exc:  # another module's task has this name
                what = f"task {name!r} of module {candidate!r} cannot run in this worker: {exc}"
                raise UnknownTaskError(what, import_failed=True, tried=what) from exc
            # SystemExit too: a module calling sys.exit() at import is a broken task module
            # like one raising ImportError, and must fail the job naming it, not leave the
            # job recorded as a bare "SystemExit: 2". KeyboardInterrupt still stops us.
            except (Exception, SystemExit) as exc:
                what = (f"called sys.exit({exc.code!r}) while being imported"
                        if isinstance(exc, SystemExit) else f"failed: {exc!r}")
                tried.append(f"importing {candidate!r} {what}")
                import_failed = True
                if not (isinstance(exc, ModuleNotFoundError) and exc.name is not None
                        and (candidate + ".").startswith(exc.name + ".")):
                    broken = broken or candidate
                continue
            fn = self._tasks.get(name)
            owner = getattr(fn, "module", candidate)
            if fn is not None and owner in (candidate, module):  # (a task its module's
                # import wraps from another: task(name=...)(helpers.ping) in apptasks)
                with self._lock:
                    self._found[(name, module)] = fn
                return fn
            tried.append(f"module {candidate!r} has no task named {name!r}"
                         + (f" (the task of that name is {owner!r}'s)" if fn else ""))
            if loaded:
                changed = changed or self._changed_since_import(candidate)
        detail = "; ".join(tried) or "no manifest entry and no module recorded in the job"
        advice = (f"{changed} changed after this process imported it, and a running worker "
                  "does not import a module again: restart the worker to run the new code."
                  if changed else
                  f"Fix the error module {broken!r} raises as it is imported, then restart "
                  "the worker (`nuvom retry failed` runs the jobs it failed again)."
                  if broken else
                  f"Run the worker from the project directory (cwd: {Path.cwd()}, on "
                  f"sys.path: {'' in sys.path or str(Path.cwd()) in sys.path}) and run "
                  "`nuvom discover tasks` to refresh .nuvom/manifest.json.")
        raise UnknownTaskError(f"unknown task {name!r} ({detail}). {advice}",
                               import_failed=import_failed or not tried, tried="; ".join(tried))

    def known(self, name: str, module: str | None = None) -> Any | None:
        """:meth:`resolve`'s answer if it needs no import (``None`` otherwise): the asyncio
        pool imports a task's module off its event loop, and asks here first."""
        fn = self._tasks.get(name)
        if fn is not None and (module is None or getattr(fn, "module", module) == module):
            return fn
        return self._found.get((name, module))

    def _changed_since_import(self, module: str) -> str:
        """The file of ``module`` if it was written after this registry imported it: a
        task added to it while a worker ran is unknown to that worker until it restarts,
        and "run `nuvom discover tasks`" sent the user the wrong way."""
        read_at, now = self._read_at.get(module), _mtime(module)
        if read_at is None or now is None or now <= read_at:
            return ""
        return str(getattr(sys.modules[module], "__file__", module))

    def import_module(self, module: str) -> None:
        """Import ``module``; if it raises, forget the tasks it registered before it did.

        Why: ``@task`` registers as the module runs, so a module that failed half-way left
        its first tasks registered, and their jobs ran against a module whose globals
        were never all set (and the process pool's children, which import ahead, ran them
        all). A module that failed is not in ``sys.modules``; its tasks must not be here.
        """
        before = dict(self._tasks)
        fresh = module not in sys.modules
        try:
            importlib.import_module(module)
            if fresh:  # the file as this process read it
                self._read_at[module] = _mtime(module)
        except BaseException:
            with self._lock:  # (and a task module it imported that failed with it)
                for name, fn in list(self._tasks.items()):
                    if before.get(name) is not fn and \
                            getattr(fn, "module", None) not in sys.modules:
                        del self._tasks[name]
            raise


def _mtime(module: str) -> float | None:
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _same_file(fn: Any, module: str) -> bool:
    """Whether ``module`` is the file that defines ``fn`` (found, not imported: only its
    parent packages are): the same task reached under another module name."""
    code = getattr(getattr(fn, "fn", fn), "__code__", None)
    try:
        spec = importlib.util.find_spec(module)
    except (Exception, SystemExit):  # a parent package that cannot be imported
        return False
    origin = getattr(spec, "origin", None)
    return (code is not None and isinstance(origin, str)
            and os.path.realpath(origin) == os.path.realpath(code.co_filename))


def _same_function(a: Any, b: Any) -> bool:
    """Whether ``b`` is ``a`` defined again, which replaces it: the same module's source run
    again (reloaded, a notebook cell re-run, a test defining a task in its body run twice,
    a module run as ``__main__`` and imported: tasks compare by the module a worker imports).
    Two lambdas cannot get here: a lambda's task needs ``name=`` (see ``task``)."""
    fa, fb = getattr(a, "fn", a), getattr(b, "fn", b)
    return fa is fb or (
        getattr(a, "module", getattr(fa, "__module__", None))
        == getattr(b, "module", getattr(fb, "__module__", None))
        and getattr(fa, "__qualname__", None) == getattr(fb, "__qualname__", None)
    )


def _one_factory(a: Any, b: Any) -> bool:
    """Two closures of one ``def`` run twice: a factory making several tasks (``make(10)``,
    ``make(100)``), which silently share one name, or a test defining a task in its body."""
    fa, fb = getattr(a, "fn", a), getattr(b, "fn", b)
    code = getattr(fa, "__code__", None)
    return fa is not fb and code is not None and code is getattr(fb, "__code__", None)


def _where(fn: Any) -> str:
    fn = getattr(fn, "fn", fn)
    code = getattr(fn, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}{line}"


#: The process-wide registry ``@task`` fills when a module defining tasks is imported.
REGISTRY = TaskRegistry()
