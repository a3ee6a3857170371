"""Broken discoverers: each wraps a real discoverer handed to it and breaks one promise of
the discoverer contract from the outside.

The kernel holds no task scanner (the AST scanner lives only in ``nuvom-plugins``), so these
fakes own no discovery logic either. ``tests/test_contracts_meta.py`` wraps the installed
``ast`` discoverer; any correct discoverer will do, which is the point — the breakage is the
only thing a fake adds. They are apart from the backend fakes because they build on a
discoverer, not on the stubs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import attrs

from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef

__all__ = [
    "EXPECTED_FAILURES", "FragileDiscoverer", "ImportingDiscoverer", "NameBlindDiscoverer",
    "StaleCacheDiscoverer",
]


class _BrokenDiscoverer(Discoverer):
    """A real discoverer with one promise broken by the subclass.

    :param inner: the discoverer that does the actual finding (it must pass the contract,
        so that every failure of the wrapper is the wrapper's own).
    """

    def __init__(self, inner: Discoverer) -> None:
        self.inner = inner

    def discover(self, root: Path, **kwargs: Any) -> tuple[DiscoveryReport, dict[str, Any]]:
        return self.inner.discover(root, **kwargs)


class ImportingDiscoverer(_BrokenDiscoverer):
    """Imports every module under the root before scanning: the module-level side effects of
    the project run at discovery time, as with an ``import``-based discoverer (a module that
    raises or exits only stops its own import)."""

    name = "fake-importing"

    def discover(self, root: Path, **kwargs: Any) -> tuple[DiscoveryReport, dict[str, Any]]:
        for path in sorted(Path(root).rglob("*.py")):
            spec = importlib.util.spec_from_file_location(f"_nuvom_fake_{id(path)}", path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except BaseException:  # the fake must survive whatever the module does
                pass
            finally:
                sys.modules.pop(spec.name, None)
        return super().discover(root, **kwargs)


class NameBlindDiscoverer(_BrokenDiscoverer):
    """Ignores ``name=``: reports the function name, and leaves ``name`` among the options."""

    name = "fake-name-blind"

    def discover(self, root: Path, **kwargs: Any) -> tuple[DiscoveryReport, dict[str, Any]]:
        report, state = super().discover(root, **kwargs)
        report.tasks = [attrs.evolve(t, name=t.func_name,
                                     options={**t.options, "name": t.name})
                        if t.name != t.func_name else t for t in report.tasks]
        return report, state


class FragileDiscoverer(_BrokenDiscoverer):
    """Lets one broken file abort the whole scan: what the inner discoverer reports as an
    error (a file it could not parse) is raised instead, so the good files' tasks are lost."""

    name = "fake-fragile"

    def discover(self, root: Path, **kwargs: Any) -> tuple[DiscoveryReport, dict[str, Any]]:
        report, state = super().discover(root, **kwargs)
        if report.errors:
            raise SyntaxError(report.errors[0])
        return report, state


class StaleCacheDiscoverer(_BrokenDiscoverer):
    """Trusts its cache blindly: given a previous state it returns the tasks that state
    remembers without looking at the files, so edits and deletions go unnoticed."""

    name = "fake-stale-cache"

    def discover(self, root: Path, *, state: dict[str, Any] | None = None, **kwargs: Any
                 ) -> tuple[DiscoveryReport, dict[str, Any]]:
        if state:
            return DiscoveryReport(tasks=[TaskRef.from_dict(t) for t in state["tasks"]]), state
        report, inner_state = super().discover(root, **kwargs)
        return report, {"tasks": [t.to_dict() for t in report.tasks], "inner": inner_state}


#: Discoverer fake class name -> the contract tests it must fail (and no others).
EXPECTED_FAILURES: dict[str, set[str]] = {
    "ImportingDiscoverer": {"test_does_not_import_code"},
    "NameBlindDiscoverer": {"test_finds_tasks_with_their_location",
                            "test_custom_name_and_literal_options",
                            "test_async_tasks_are_flagged"},
    "FragileDiscoverer": {"test_unparsable_file_is_reported_not_fatal"},
    "StaleCacheDiscoverer": {"test_state_never_hides_a_change"},
}
