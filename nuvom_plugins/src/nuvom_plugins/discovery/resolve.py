"""Find Nuvom tasks in one module's AST by resolving each decorator through the imports.

Matching the bare name ``task`` (what the original did) picks up Celery's ``@app.task`` and
any local helper called ``task``, and misses ``from nuvom_kernel import task as job``. Here a
decorator counts only if its dotted name, followed through the module's own import and
assignment bindings *in source order*, ends at Nuvom's decorator (``nuvom_kernel.task``);
where alternative branches bind a name differently (``try: from nuvom_kernel import task``
with a fallback in ``except ImportError``), the branch binding Nuvom's wins.
Options are read from literals only; any other value is warned about, and a task whose
``name=`` is not a literal is left out rather than recorded under a wrong name.
Nothing is imported or executed; a literal ``schedule=`` is built into the kernel's
``Schedule`` (plain data) to warn about one the workers would refuse.
"""

from __future__ import annotations

import ast
from collections import ChainMap
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import attrs

from nuvom_kernel.models import TaskOptions
from nuvom_kernel.schedules import ScheduleError, every, from_manifest
from nuvom_kernel.task import checked_options

__all__ = ["DEFAULT_DECORATORS", "ModuleScan", "scan_module"]

#: Fully qualified names of Nuvom's task decorator (the function, wherever it is exported).
DEFAULT_DECORATORS: frozenset[str] = frozenset({"nuvom_kernel.task", "nuvom_kernel.task.task"})

_TRY: tuple[type[Any], ...] = (ast.Try, *([ast.TryStar] if hasattr(ast, "TryStar") else []))
_Bindings = MutableMapping[str, "str | None"]  # local name -> dotted origin (None: local)


@attrs.define
class FoundTask:
    """A decorated function before it becomes a TaskRef (module/file are added later)."""

    name: str
    func_name: str
    line: int
    options: dict[str, Any]
    description: str | None
    is_async: bool
    unread: tuple[str, ...] = ()  # options given, but not as literals (warned about)


@attrs.define
class ModuleScan:
    tasks: list[FoundTask] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)  # "line: message" (file added later)


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _resolve(node: ast.expr, bindings: _Bindings) -> str | None:
    """The fully qualified name ``node`` refers to, or ``None`` if it is local/unknown."""
    parts = _dotted(node)
    if not parts:
        return None
    origin = bindings.get(parts[0])
    if origin is None:
        return None
    return ".".join([origin, *parts[1:]])


def _jsonable(value: Any) -> tuple[bool, Any]:
    """Literal values the manifest can carry as JSON (tuples/sets become lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        converted = [_jsonable(v) for v in items]
        return all(ok for ok, _ in converted), [v for _, v in converted]
    if isinstance(value, dict):
        converted_d = {k: _jsonable(v) for k, v in value.items()}
        ok = all(isinstance(k, str) for k in value) and all(o for o, _ in converted_d.values())
        return ok, {k: v for k, (_, v) in converted_d.items()}
    return False, None


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return _jsonable(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


def _schedule_call(call: ast.Call, bindings: _Bindings) -> dict[str, Any] | None:
    """``cron("0 9 * * *", tz="Europe/Paris")`` or ``every(minutes=5)`` with literal
    arguments, as the manifest stores a schedule; ``None`` for anything else.

    :raises ScheduleError: ``every()`` refuses its literal arguments."""
    target = _resolve(call.func, bindings) or ""
    kind = target.rsplit(".", 1)[-1]
    if not target.startswith("nuvom_kernel") or kind not in ("cron", "every"):
        return None
    values: dict[str, Any] = {}
    names = ("expr", "tz", "args", "kwargs") if kind == "cron" else ()
    if len(call.args) > len(names):
        return None
    for key, node in [*zip(names, call.args, strict=False),
                      *((kw.arg, kw.value) for kw in call.keywords)]:
        ok, value = _literal(node)
        if not ok or key is None:
            return None
        values[key] = value
    spec: dict[str, Any] = {"args": values.pop("args", []), "kwargs": values.pop("kwargs", {})}
    if kind == "cron":
        if "expr" not in values:
            return None
        spec.update(cron=values.pop("expr"), tz=values.pop("tz", "UTC"))
    else:
        # Built by the kernel's every(), so a value it refuses ("5") is refused here too,
        # with its message, rather than turned into a number import would not accept.
        spec["every"] = every(**{unit: values.pop(unit) for unit in _UNITS
                                 if unit in values}).interval
    return None if values else spec


def _schedule_problem(task: str, options: dict[str, Any]) -> str | None:
    """What a worker would refuse in a task's recorded schedule, or ``None``: the schedule is
    built from the literal exactly as a worker builds it from the manifest (and as
    ``@task(schedule=...)`` does on import), so ``"61 * * * *"``, an unknown zone, a
    negative interval or ``schedule=30`` are reported here rather than dropped later."""
    try:
        from_manifest(task, options)
    except ScheduleError as exc:
        return str(exc)
    except Exception as exc:  # a policy of the wrong type: the kernel refuses it as well
        return f"task {task!r}: schedule= cannot be built: {type(exc).__name__}: {exc}"
    return None


def _options_problem(options: dict[str, Any]) -> str | None:
    """What ``@task`` would refuse in a task's recorded options (a misspelt ``retry=3``, a
    ``backoff="exp"``), checked as the decorator checks them, or ``None``."""
    try:
        TaskOptions(**checked_options(options))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


class _Scanner:
    def __init__(self, decorators: frozenset[str]) -> None:
        self.decorators = decorators
        self.packages = frozenset(d.split(".")[0] for d in decorators)  # "nuvom_kernel"
        self.bindings: _Bindings = {}
        self.result = ModuleScan()

    # --- bindings, in source order -------------------------------------------------------

    def bind_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.bindings[alias.asname] = alias.name
                else:  # `import a.b.c` binds `a`
                    top = alias.name.split(".")[0]
                    self.bindings[top] = top
            return
        base = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                if node.level == 0 and any(d.rsplit(".", 1)[0] == base
                                           for d in self.decorators):
                    self.bindings["task"] = f"{base}.task"
                continue
            self.bindings[alias.asname or alias.name] = f"{base}.{alias.name}"

    def bind_targets(self, targets: Iterable[ast.expr], value: ast.expr | None) -> None:
        origin = _resolve(value, self.bindings) if value is not None else None
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    self.bindings[name.id] = origin if isinstance(target, ast.Name) else None

    # --- decorators ----------------------------------------------------------------------

    def task_decorator(self, node: ast.FunctionDef | ast.AsyncFunctionDef
                       ) -> ast.expr | None:
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            if _resolve(target, self.bindings) in self.decorators:
                return deco
        return None

    def record(self, node: ast.FunctionDef | ast.AsyncFunctionDef, deco: ast.expr) -> None:
        read = self.read_options(node.name, deco) if isinstance(deco, ast.Call) else ({}, [])
        if read is None:
            return
        options, unread = read
        doc = ast.get_docstring(node)
        description = options.get("description")
        if not isinstance(description, str):
            description = doc.strip().splitlines()[0].strip() if doc and doc.strip() else None
        name = options.pop("name", None)  # the registry name, not an option
        task_name = name if isinstance(name, str) and name else node.name
        if name is not None and task_name is node.name:  # as @task refuses it
            self.warn(deco.lineno, f"task {node.name!r}: @task(name=...) takes a non-empty "
                                   f"string, got {name!r}. Importing the module raises this "
                                   "error: fix it and run `nuvom discover tasks` again")
        problem = (_schedule_problem(task_name, options)
                   if options.get("schedule") is not None else None)
        if problem is not None:
            # Still recorded: the worker logs the same refusal, a second place to see it.
            self.warn(deco.lineno, f"{problem.rstrip('.')}. Workers will not fire this "
                                   "schedule (and importing the module raises this error): "
                                   "fix it and run `nuvom discover tasks` again")
        problem = _options_problem(options)
        if problem is not None:  # recorded too, as above: importing the module says it
            self.warn(deco.lineno, f"task {task_name!r}: {problem.rstrip('.')}. Importing "
                                   "the module raises this error: fix it and run `nuvom "
                                   "discover tasks` again")
        self.result.tasks.append(FoundTask(
            name=task_name,
            func_name=node.name, line=node.lineno, options=options,
            description=description, is_async=isinstance(node, ast.AsyncFunctionDef),
            unread=tuple(unread)))

    def read_options(self, func: str, deco: ast.Call
                     ) -> tuple[dict[str, Any], list[str]] | None:
        """The decorator's options the manifest can record, and the names of those it cannot
        (not literals); each one it cannot is warned
        about (workers would apply it only after importing the module, so the manifest would
        be silently wrong until then). ``None``, with a warning, when the task's name is not
        a literal: recorded under the function's name instead, the manifest would point
        workers (and schedules) at a task that is not registered."""
        name = next((kw.value for kw in deco.keywords if kw.arg == "name"), None)
        if name is not None and not _literal(name)[0]:
            self.warn(deco.lineno, f"task {func!r}: name= is not a string literal, so the "
                                   "task's name cannot be read without importing the module "
                                   "and it is left out of the manifest: jobs sent to it still "
                                   "run, but workers learn its schedule and options only "
                                   "once they import the module. Write the name as a string "
                                   "literal: name=\"...\"")
            return None
        options: dict[str, Any] = {}
        unread: list[str] = []
        for kw in deco.keywords:
            if kw.arg is None:  # any option may hide there, a schedule too
                unread.append("**")
                self.warn(deco.lineno, f"task {func!r}: **options in the decorator "
                                       f"cannot be read statically; they are ignored "
                                       f"in the manifest")
            elif kw.arg == "schedule":
                if not self.record_schedule(func, deco.lineno, kw.value, options):
                    unread.append("schedule")
            elif (literal := _literal(kw.value))[0]:
                options[kw.arg] = literal[1]
            else:
                unread.append(kw.arg)
                self.warn(deco.lineno, f"task {func!r}: {kw.arg}= is not a literal, so the "
                                       "manifest leaves it out and workers apply it only once "
                                       "they import the module. Write it as a literal "
                                       "(a number, string, bool, list or dict)")
        if deco.args:
            self.warn(deco.lineno, f"task {func!r}: positional decorator arguments "
                                   f"are ignored; pass options by keyword")
        return options, unread

    def record_schedule(self, task: str, line: int, value: ast.expr,
                        options: dict[str, Any]) -> bool:
        """A literal schedule goes into ``options``; anything else is warned about, a
        schedule held in a variable included: workers learn it only by importing. Whether
        the manifest says what the schedule is (``False``: listed as unread, so a worker
        keeps the imported task's; an invalid one is said, and refused on import too)."""
        try:
            spec = (_schedule_call(value, self.bindings) if isinstance(value, ast.Call)
                    else None)
        except ScheduleError as exc:
            self.warn(line, f"task {task!r}: {exc}. Workers will not fire this schedule "
                            "(and importing the module raises this error): fix it and run "
                            "`nuvom discover tasks` again")
            return True
        if spec is None and not isinstance(value, ast.Call):
            ok, literal = _literal(value)  # a cron string, or a mistake checked below
            if ok:
                options["schedule"] = literal
                return True
        if spec is None:
            self.warn(line, f"task {task!r}: schedule= is not a cron(...)/every(...) call "
                            "with literal arguments; workers find it only once the module "
                            "is imported")
            return False
        options["schedule"] = spec
        return True

    def warn(self, line: int, message: str) -> None:
        self.result.warnings.append(f"{line}: {message}")

    # --- walking -------------------------------------------------------------------------

    def module(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            self.bind_import(stmt)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            deco = self.task_decorator(stmt)  # decorators run before the name is bound
            if deco is not None:
                self.record(stmt, deco)
            self.bindings[stmt.name] = None
            self.nested(stmt.body, f"function {stmt.name!r}")
        elif isinstance(stmt, ast.ClassDef):
            self.nested(stmt.body, f"class {stmt.name!r}", methods=True)
            self.bindings[stmt.name] = None
        elif isinstance(stmt, ast.Assign):
            self.bind_targets(stmt.targets, stmt.value)
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            self.bind_targets([stmt.target], getattr(stmt, "value", None)
                              if isinstance(stmt, ast.AnnAssign) else None)
        elif isinstance(stmt, ast.If):
            self.alternatives([stmt.body, stmt.orelse])
        elif isinstance(stmt, ast.For | ast.AsyncFor | ast.While | ast.With | ast.AsyncWith):
            self.module(stmt.body)
            self.module(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Match):
            self.alternatives([*(case.body for case in stmt.cases), []])  # []: no case
        elif isinstance(stmt, _TRY):
            self.module(stmt.body)
            self.alternatives([stmt.orelse, *(h.body for h in stmt.handlers)])
            self.module(stmt.finalbody)

    def alternatives(self, blocks: list[list[ast.stmt]]) -> None:
        """Walk blocks of which one runs (``if``/``else``, ``try``'s ``else`` and handlers,
        ``match`` cases), each from the bindings before them, then merge what they bound
        (:func:`_merge`). Walked one after the other, the last block's binding won: the
        fallback ``def task`` of ``except ImportError`` hid every task of the module."""
        before = self.bindings
        changes: list[dict[str, str | None]] = []
        for block in blocks:  # a layer per block: no copy of a module's many names per `if`
            changes.append({})
            self.bindings = ChainMap(changes[-1], before)
            self.module(block)
        self.bindings = before
        for name in dict.fromkeys(n for changed in changes for n in changed):
            before[name] = _merge([changed.get(name, before.get(name)) for changed in changes],
                                  self.packages)

    def nested(self, body: list[ast.stmt], where: str, methods: bool = False) -> None:
        """Decorated functions that are not importable by module path: warn, never record."""
        for node, direct in _defs(body):
            if self.task_decorator(node) is None:
                continue
            if methods and direct:
                why = (f"method {node.name!r} of {where} is decorated with @task; methods "
                       f"cannot be tasks (a worker has no instance to call them on). "
                       f"Move it to module level")
            else:
                why = (f"{node.name!r} inside {where} is decorated with @task but is not "
                       f"at module level, so workers cannot import it; it is skipped")
            self.warn(node.lineno, why)


def _merge(origins: list[str | None], packages: frozenset[str]) -> str | None:
    """The binding of a name after alternative branches bound it to ``origins``: one to
    something of Nuvom's package (``packages``) if any branch makes one, else a known one
    rather than a local/unknown one. The fallbacks of optional-dependency code (``except
    ImportError: def task(...)``, ``else: task = lambda fn: fn``) are what runs when Nuvom
    is absent; where discovery runs, Nuvom is installed and its decorator is the one bound.
    """
    known = [origin for origin in origins if origin is not None]
    nuvom = [origin for origin in known if origin.split(".")[0] in packages]
    return (nuvom or known)[-1] if known else None


def _defs(body: list[ast.stmt]) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef,
                                                  bool]]:
    """Every ``def`` among ``body``'s statements, at any depth, and whether it is *direct*
    (not inside another def or class). Only statement lists are followed, never expressions,
    which is most of a tree's nodes: ``ast.walk`` here cost more than parsing."""
    stack: list[tuple[Any, bool]] = [(stmt, True) for stmt in reversed(body)]
    while stack:
        node, direct = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, direct
        inner = direct and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                          | ast.ClassDef)
        for field in ("cases", "handlers", "finalbody", "orelse", "body"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stack.extend((child, inner) for child in reversed(children)
                             if isinstance(child, ast.stmt | ast.excepthandler
                                           | ast.match_case))


def scan_module(tree: ast.Module, decorators: frozenset[str] = DEFAULT_DECORATORS
                ) -> ModuleScan:
    """Tasks and warnings of one parsed module."""
    scanner = _Scanner(decorators)
    scanner.module(tree.body)
    return scanner.result

