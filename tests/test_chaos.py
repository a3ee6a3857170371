"""The "never lose a job" fault-injection suite, at CI size, on every persistent backend.

Each test runs one scenario of :mod:`benchmarks.chaos` (the engine shared with the soak
runner ``python -m benchmarks.chaos``) against real ``runworker`` subprocesses, and fails
with the scenario's report: what was lost, which promise broke, the workers' last words.
A backend joins by appearing in ``PERSISTENT_BACKENDS`` (installing its plugin).

At the end of the module the per-backend table (submitted, completed, lost, duplicated,
scenarios passed) is written to the terminal, so a CI log shows the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.chaos import SCENARIOS, Outcome, Sizes, run_scenario, summary_table
from tests.helpers import PERSISTENT_BACKENDS

pytestmark = [
    pytest.mark.skipif(not PERSISTENT_BACKENDS, reason="no persistent backend installed"),
    pytest.mark.slow,
]

#: CI size: the whole module in a few minutes on 2 cores for sqlite + file together.
SIZES = Sizes()

_outcomes: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the per-backend table once every scenario has run (also when some failed)."""
    yield
    if not _outcomes:
        return
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None:  # pragma: no cover - terminal reporting disabled (-p no:terminal)
        return
    # Teardown output is captured at the fd level; write past the capture to the terminal.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_sep("-", "chaos: jobs per backend")
        reporter.write_line(summary_table(_outcomes))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS)
def test_never_lose_a_job(backend: str, scenario: str, project: Path) -> None:
    outcome = run_scenario(scenario, project, backend, SIZES)
    _outcomes.append(outcome)
    assert outcome.lost == 0, outcome.report()
    assert outcome.passed, outcome.report()


#: The process pool keeps the same promises: the same scenarios, its workers' jobs run in
#: child processes (a SIGKILLed worker takes its children with it).
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS, reason="needs the SQLite plugin")
def test_never_lose_a_job_process_pool(scenario: str, project: Path) -> None:
    outcome = run_scenario(scenario, project, "sqlite", SIZES, pool="process")
    _outcomes.append(outcome)
    assert outcome.lost == 0, outcome.report()
    assert outcome.passed, outcome.report()
