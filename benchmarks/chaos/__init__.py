"""Fault injection for Nuvom's "never lose a job" promise ("Delivery: at least once" in
``docs/workers.md``), on real processes.

This package is the one chaos engine: ``tests/test_chaos.py`` runs every scenario here at CI
size on each persistent backend, and the same code runs longer soaks from the repo root::

    python -m benchmarks.chaos --backend sqlite --jobs 20000
    python -m benchmarks.chaos --backend all --scenario storm --scenario crash -v

It prints one line per scenario and then, per backend, jobs submitted, completed, lost
(must be 0), duplicated (ran more than once) and the scenarios passed; exit status 1 if any
promise broke.

Why real processes and signals: the promise is about what survives ``kill -9``, a full disk
and a second Ctrl-C, which no in-process fake reproduces. Every scenario builds a fresh
project directory, starts ``python -m nuvom_kernel runworker`` subprocesses in it, hurts them,
and judges the outcome from two independent witnesses:

* the **result backend** (``get_job``/``JobRecord``): status, attempts, which worker recorded;
* the **execution log** ``chaos.log``: every task attempt appends ``start``/``end`` lines with
  its pid, one ``O_APPEND`` ``write(2)`` each, so lines from many processes never interleave
  and a killed process leaves only whole lines. Fault-injecting wrappers add ``ack`` and
  ``fault`` lines the same way.

A job that ran more than once is a duplicate; delivery is at least once, so duplicates are
allowed only when explained: every run but the last belongs to a worker the scenario killed
(or abandoned on purpose), or an injected backend fault hit that job. A record must count at
least as many attempts as the log shows runs. Waits are deadlines on observed state (log
lines, records, exit codes), never bare sleeps. A scenario returns an :class:`Outcome`; a
broken promise is a ``failures`` entry, so a soak reports every problem, not the first.

Scenarios (:data:`SCENARIOS`, one module per family under ``scenarios/``): ``crash``
(SIGKILL mid-job), ``storm`` (kill/restart at random points), ``graceful`` (SIGINT drain,
second SIGINT, expired grace), ``producer`` (SIGKILL inside ``.map()``), ``disk`` (full and
read-only data dir), ``corrupt`` (garbage entries, missing tasks, undecodable payloads, torn
records), ``plugins`` (raising and hanging hooks, a flaky queue backend), ``long-job`` (a
job outliving its lease three times over), ``paused`` (a worker frozen past its lease is
fenced out).

The engine: :mod:`.outcome` (deadlines, sizes, verdicts), :mod:`.execlog` (the execution
log), :mod:`.tasks` (the task module written into every project), :mod:`.project` (a project
directory, its worker processes, the judge); :mod:`.report` holds the per-backend table and
the command line.

A new backend joins by being installed (persistent and multiprocess-safe). What the engine
knows per backend beyond the SPI is one table, :data:`.backends.PROFILES`: its chaos
settings, whether ``push`` is all or none, whether its data lives under ``data_dir`` (then
a real tmpfs is filled, after its squeezer; other backends get ENOSPC from a wrapper), and
its own corruption (every backend gets the generic corruption through the SPI).
"""

from __future__ import annotations

from .backends import PROFILES, BackendProfile, persistent_backends
from .execlog import ExecLog
from .outcome import Outcome, Sizes
from .project import Project, WorkerProc
from .report import main, summary_table
from .scenarios import SCENARIOS, run_scenario

__all__ = [
    "PROFILES",
    "SCENARIOS",
    "BackendProfile",
    "ExecLog",
    "Outcome",
    "Project",
    "Sizes",
    "WorkerProc",
    "main",
    "persistent_backends",
    "run_scenario",
    "summary_table",
]
