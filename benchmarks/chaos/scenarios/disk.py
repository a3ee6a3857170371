"""Storage faults (``disk``): a full disk, then a read-only data dir.

Where the backend keeps its data under ``data_dir`` (:attr:`BackendProfile.local_disk`) and
this process may mount, the faults are real: a 16 MB tmpfs filled to the last byte, then a
read-only bind mount. Otherwise a wrapper of the installed backend raises ENOSPC
(``CHAOS_DISK=hook`` forces that variant).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nuvom_kernel.kernel import Kernel, use_kernel

from ..backends import profile
from ..outcome import Outcome, Sizes, wait_for
from ..project import Project, WorkerProc, backend_classes, project_for, stop_all

__all__ = ["backend_named", "scenario_disk"]

#: The storage full: returns the function that frees it again.
Fill = Callable[[], Callable[[], None]]


def _fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte; returns the filler."""
    path = directory / "chaos-filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def _mounted(*command: str, target: Path) -> Iterator[bool]:
    """Run a ``mount`` command; yields whether it worked, unmounts (lazily) after."""
    done = subprocess.run(["mount", *command, str(target)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


_STORAGE_WORDS = ("no space", "disk is full", "read-only", "readonly", "unable to open",
                  "permission", "injected")


def _check_enqueue_refused(out: Outcome, project: Project, kernel: Kernel, label: str,
                           before: int | None) -> None:
    """``.delay()`` and ``.map()`` must raise a clear NuvomError and store nothing (counted
    here unless ``before`` is ``None``: the caller counts once the storage is readable)."""
    from nuvom_kernel.errors import NuvomError

    tasks = project.tasks()
    for what, call in (("delay", lambda: tasks.work.delay(1, 0.0)),
                       ("map", lambda: tasks.work.map([(i, 0.0) for i in range(200)]))):
        with use_kernel(kernel):
            try:
                call()
            except Exception as exc:
                text = f"{exc} {exc.__cause__ or ''}".lower()
                out.check(isinstance(exc, NuvomError) and backend_named(exc, project)
                          and any(w in text for w in _STORAGE_WORDS),
                          f"{label}: .{what}() raised {type(exc).__module__}."
                          f"{type(exc).__name__}: {exc} -- expected a NuvomError naming the "
                          "backend and the storage problem")
            else:
                out.check(False, f"{label}: .{what}() succeeded")
    if before is not None:
        after = _visible(project)
        out.check(after == before, f"{label}: {after - before} job(s) of refused calls were "
                                   "stored")


def _held_line(worker: WorkerProc) -> str:
    """The worker's log line saying the store refused outcomes it keeps trying, if any."""
    return next((line for line in worker.output().splitlines()
                 if "storing" in line and "failed" in line and "holds their leases" in line),
                "")


def backend_named(exc: Exception, project: Project) -> bool:
    """Whether ``exc`` names the project's queue or result backend."""
    return repr(project.queue_backend) in str(exc) or repr(project.backend) in str(exc)


def _visible(project: Project) -> int:
    """Jobs waiting, counted by a fresh kernel (a full disk may have broken the old one's
    view, and the count must come from what is stored)."""
    return project.reopen().queue.qsize()


def _outcome_while_full(project: Project, ids: list[str], fill: Fill
                        ) -> tuple[WorkerProc, str, int]:
    """A worker whose result cannot be written: the gated job is running when the storage
    fills and finishes while it is full; the worker holds its outcome (unacked, its lease
    kept) past several visibility timeouts and stores it once there is room, so the job
    never runs again. Returns the worker, the gated job, and how many runs of it the
    execution log showed just before the room came back."""
    gated = project.enqueue("gated", [(0, "gate-disk")])[0]
    worker = project.start_worker(2)
    project.wait_succeeded(len(ids), 60, settled=False)
    wait_for(lambda: project.log.refresh().executions(gated) == 1, 30,
             "the gated job to start")
    free = fill()
    (project.root / "gate-disk").touch()
    wait_for(lambda: _held_line(worker), 30,
             "the worker to say it keeps the outcome the store refused")
    full_since = time.monotonic()  # the point is time passing: leases expire meanwhile
    wait_for(lambda: time.monotonic() > full_since + 3 * project.visibility, 60,
             "three visibility timeouts with the storage full")
    runs = project.log.refresh().executions(gated)
    free()
    project.wait_succeeded(len(ids) + 1, 60, "the held outcome to be stored")
    return worker, gated, runs


def scenario_disk(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A full disk and a read-only data dir: ``.delay()`` raises a clear error and stores
    nothing; a worker that cannot record an outcome does not ack, holds it (and its lease)
    until there is room, and logs why: the job runs once. Real tmpfs and read-only bind
    mounts where the backend keeps its data locally and we may mount; a fault-injecting
    backend wrapper otherwise."""
    if profile(backend).local_disk and _can_mount() and os.environ.get("CHAOS_DISK") != "hook":
        return _disk_for_real(base, backend, sizes)
    return _disk_by_hook(base, backend, sizes)


def _disk_for_real(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("disk", backend)
    root = base / f"{backend}-disk"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    squeeze = profile(backend).squeeze or (lambda path: None)

    def fill() -> Callable[[], None]:
        squeeze(data)
        return _fill(data).unlink

    with _mounted("-t", "tmpfs", "-o", "size=16m", "tmpfs", target=data) as ok:
        if not ok:
            return _disk_by_hook(base, backend, sizes)
        out.notes.append("real faults: a 16 MB tmpfs filled to the last byte, then a "
                         "read-only bind mount")
        project = Project(root, backend, data_dir=data)
        try:
            ids = project.enqueue("work", [(i, 0.0) for i in range(30)])
            before = _visible(project)
            free = fill()
            _check_enqueue_refused(out, project, project.kernel(), "disk full", before)
            free()
            worker, gated, runs = _outcome_while_full(project, ids, fill)
            out.check(runs == 1, "the job ran again while its outcome waited for room")
            records = project.judge(out, [*ids, gated])
            record = records[gated]
            out.check(record is not None and record.attempts == 1
                      and project.log.executions(gated) == 1,
                      f"the job whose outcome waited for room shows attempts="
                      f"{getattr(record, 'attempts', None)}, runs="
                      f"{project.log.executions(gated)}; expected one run, stored late")
            line = _held_line(worker)
            out.check(any(w in line.lower() for w in _STORAGE_WORDS),
                      f"the worker's log does not say why the outcome waits: {line!r}")
            stop_all(project, out)
            out.check(not project.kernel().queue.stats().quarantined,
                      "a half-written entry was quarantined after the disk filled")
            # Read-only data dir: bind it onto itself read-only.
            before = _visible(project)
            project.close()
            with _mounted("--bind", str(data), target=data) as bound:
                ro = bound and subprocess.run(
                    ["mount", "-o", "remount,bind,ro", str(data)], capture_output=True
                ).returncode == 0
                if ro:
                    _check_enqueue_refused(out, project, project.kernel(), "read-only",
                                           None)
                    project.close()
                else:
                    out.notes.append("read-only bind mount refused here; not tested")
            out.check(_visible(project) == before, "the read-only phase changed the queue")
        finally:
            project.close()
    return out


FAULTY_SOURCE = '''\
"""Chaos storage faults: the real {backend} backends, failing with ENOSPC while the flag
file exists (for backends whose storage a local tmpfs cannot fill)."""

import errno
import os

from {qmodule} import {qname} as _Queue
from {rmodule} import {rname} as _Results

FLAG = os.environ.get("CHAOS_DISK_FLAG", "disk-full")


def _full(what):
    if os.path.exists(FLAG):
        raise OSError(errno.ENOSPC, f"No space left on device (injected into {{what}})")


class FaultyQueue(_Queue):
    name = "faulty_{backend}"

    def push(self, messages):
        _full("push")
        return super().push(messages)

    def settle_many(self, settlements, results):  # records written with the acks
        _full("settle_many")
        return super().settle_many(settlements, results)


class FaultyResults(_Results):
    name = "faulty_{backend}"

    def put(self, record):
        _full("put")
        return super().put(record)

    def put_many(self, records):  # a backend's batch path need not call put
        _full("put_many")
        return super().put_many(records)
'''


def _disk_by_hook(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("disk", backend)
    out.notes.append("simulated faults: backend wrappers raising ENOSPC (no tmpfs here)")
    qcls, rcls = backend_classes(base, backend, "probe-disk")
    faulty = f"faulty_{backend}"
    root = base / f"{backend}-disk-hook"
    flag = root / "disk-full"

    def fill() -> Callable[[], None]:
        flag.touch()
        return flag.unlink

    with project_for(base, backend, "disk-hook", queue_backend=faulty,
                     targets={"queue_backend": ["chaos_faulty:FaultyQueue"],
                              "result_backend": ["chaos_faulty:FaultyResults"]},
                     env={"NUVOM_RESULT_BACKEND": faulty,
                          "CHAOS_DISK_FLAG": str(flag)}) as project:
        project.write("chaos_faulty.py", FAULTY_SOURCE.format(
            backend=backend, qmodule=qcls.__module__, qname=qcls.__qualname__,
            rmodule=rcls.__module__, rname=rcls.__qualname__))
        os.environ["CHAOS_DISK_FLAG"] = str(flag)  # the in-process producer's wrapper too
        try:
            ids = project.enqueue("work", [(i, 0.0) for i in range(30)])
            producer = Kernel(root=project.root, environ=project.env)
            try:
                free = fill()
                _check_enqueue_refused(out, project, producer, "ENOSPC", len(ids))
                free()
            finally:
                producer.close()
            _, gated, runs = _outcome_while_full(project, ids, fill)
            records = project.judge(out, [*ids, gated])
            out.check(runs == 1 and getattr(records[gated], "attempts", 0) == 1,
                      f"the job whose outcome waited for room ran {runs} time(s), attempts="
                      f"{getattr(records[gated], 'attempts', None)}; expected once")
            stop_all(project, out)
        finally:
            os.environ.pop("CHAOS_DISK_FLAG", None)
    return out
