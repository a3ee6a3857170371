"""The kernel's import shape: a light package face and no import loops.

A plugin imports ``hookimpl`` at its top; that must not load the worker (threads, asyncio,
signal handling). And the kernel's modules form layers: a runtime import (at module level
or inside a function) from a lower module back up to a higher one is a loop that makes the
load order fragile and hides a wrong dependency. Type-checking-only imports do not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nuvom_kernel

KERNEL = Path(nuvom_kernel.__file__).parent


def test_importing_hookimpl_loads_no_worker() -> None:
    code = ("import sys\nfrom nuvom_kernel import hookimpl\n"
            "print(sorted(m for m in sys.modules if m.startswith(('nuvom', 'asyncio'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['nuvom_kernel', 'nuvom_kernel.markers']", out


def test_the_task_decorator_survives_an_import_of_its_module() -> None:
    """``nuvom_kernel.task`` is a submodule and the decorator: importing the submodule first
    (a plugin's ``from nuvom_kernel.task import Task``) must not make ``@task`` the module."""
    code = ("import nuvom_kernel.task\nfrom nuvom_kernel import task\n"
            "import nuvom_kernel.task as module\n"
            "@task\ndef add(x, y):\n    return x + y\n"
            "@task(retries=2)\ndef sub(x, y):\n    return x - y\n"
            "@nuvom_kernel.task.task\ndef mul(x, y):\n    return x * y\n"
            "print(all(type(t) is module.Task for t in (add, sub, mul)), add.name,"
            " sub.options.retries)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True add 2", out.stdout


def test_a_pool_child_starts_without_the_worker() -> None:
    """A process-pool child is started anew for every ``--max-tasks-per-child`` jobs: with
    a task module loaded, it must not import the pool, the settler or the monitor (they
    doubled its start-up), nor asyncio before an ``async def`` task runs."""
    code = ("import sys\nimport nuvom_kernel.worker.child\nfrom nuvom_kernel import task\n"
            "@task\ndef add(x, y):\n    return x + y\n"
            "print(sorted(m for m in sys.modules if m.startswith('nuvom_kernel.worker')),"
            " 'asyncio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ("['nuvom_kernel.worker', 'nuvom_kernel.worker.child', "
                           "'nuvom_kernel.worker.current'] False"), out


def test_every_public_name_resolves() -> None:
    for name in nuvom_kernel.__all__:
        assert getattr(nuvom_kernel, name) is not None, name


def _runtime_imports(path: Path) -> set[str]:
    """``nuvom_kernel.*`` modules ``path`` imports outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "nuvom_kernel":
                found.update(f"nuvom_kernel.{a.name}" for a in node.names)
            elif node.module.startswith("nuvom_kernel."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nuvom_kernel."))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(KERNEL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_runtime_import_loops_in_the_kernel() -> None:
    graph: dict[str, set[str]] = {}
    for path in KERNEL.rglob("*.py"):
        name = _module_name(path)
        if name == "nuvom_kernel":  # the package face re-exports lazily; not a layer
            continue
        graph[name] = {m for m in _runtime_imports(path) if m != name}
    assert graph.get("nuvom_kernel.worker"), "no graph read"

    loops: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                loops.append([*stack[stack.index(nxt):], nxt])
            elif nxt in graph and not state.get(nxt):
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    assert not loops, "runtime import loops: " + "; ".join(" -> ".join(c) for c in loops)


def test_the_kernel_holds_no_task_scanner() -> None:
    """The AST task scanner lives in nuvom-plugins only (one scanner, not two)."""
    scanning = [str(p.relative_to(KERNEL)) for p in KERNEL.rglob("*.py")
                if "ast" in {n.split(".")[0] for n in _imported_names(p)}]
    assert not scanning, f"kernel modules importing ast: {scanning}"


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
