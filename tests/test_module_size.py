"""Source modules stay under 500 lines, each with one clear job.

Why a test: modules grew past that one fix at a time (eighteen of them, the worker's pool,
the settler, the plugin manager, every queue backend, the contract suite), until reading
one meant holding several concerns at once. Splitting them by responsibility took a whole
change; this check names a module the day it crosses the line, when the piece to move out
is still the one just added. Tests are not counted: a test file is read one test at a time.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 500


def _sources() -> list[Path]:
    roots = [ROOT / "nuvom_kernel", *sorted(ROOT.glob("nuvom_plugins*/src"))]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def test_every_source_module_is_under_the_limit() -> None:
    sources = _sources()
    assert len(sources) > 100, f"found only {len(sources)} modules under {ROOT}"
    long = {str(p.relative_to(ROOT)): n for p in sources
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT}
    assert not long, (
        f"modules over {LIMIT} lines: {long}; split each by responsibility (a piece with a "
        "job of its own, in a module whose docstring says why it is separate), as "
        "nuvom_kernel/worker/dispatch.py is split from worker/pool.py")
