"""The parent's handle on one child process of the process pool: its pipes, one job's
run with the deadline, kill grace and memory limit enforced, and how it ended.

Apart from :mod:`.processes` (which children the pool keeps, and how a job's outcome is
built from a child's reply) because this is what one child does, watched from the parent:
what the child itself runs is :mod:`.child`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from nuvom_kernel.worker.child import read_frame, write_frame

__all__ = ["Child", "ended", "format_size"]

#: How often a busy child's RSS is read while a memory limit is set.
MEMORY_POLL_SECS = 0.2
#: A fresh interpreter that runs :func:`.child.main` (``-c``, like ``-m``, puts the working
#: directory on ``sys.path``; ``-m`` would import the module twice, once as ``__main__``).
_CHILD_MAIN = "import sys; from nuvom_kernel.worker.child import main; main(sys.argv[1:])"


def format_size(size: int) -> str:
    return f"{size / 2**20:.0f} MB"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class NoChildYet(Exception):
    """The worker stopped while the job waited for a pool child to start: the job never
    ran, so it goes back to its queue (recorded FAILED, or a retry spent, before)."""


def ended(reply: dict[str, Any]) -> str:
    """How a dead child ended, from :meth:`Child.reap`'s reply."""
    code = reply.get("exit_code", 0)
    return (f"killed by signal {-code} ({_signal_name(-code)})" if code < 0
            else f"exited with code {code}")  # (after "pool child pid N")


class Child:
    """One child process and its two pipes."""

    def __init__(self, hello: dict[str, Any]) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN, str(req_r), str(rep_w), str(os.getpid())],
            pass_fds=(req_r, rep_w), close_fds=True)
        os.close(req_r)
        os.close(rep_w)
        self.requests, self.replies = req_w, rep_r
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.tasks = 0
        self.ready = False
        #: the module the child was importing when it last said (``None``: none, or done):
        #: one that kills the child at import is named, and preloaded no more
        self.importing: str | None = None
        self.busy = False  # inside run(): only its executor thread may close its pipes
        self._reaped: dict[str, Any] | None = None
        self._send({**hello})

    def _send(self, data: dict[str, Any]) -> bool:
        try:
            write_frame(self.requests, data)
            return True
        except OSError:  # it died: the caller learns how from reap()
            return False

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the child's hello; ``False`` if it died (or stayed silent) first.

        Checked every second by process state too, not only by end of file: a module that
        forks at import (without exec) and then kills the child leaves the pipe held open,
        and the executor would wait the whole ``timeout`` for a child long dead.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.replies], [], [], min(left, 1.0))
            if ready:
                hello = read_frame(self.replies)
                if hello and "importing" in hello:  # preloading: one frame per module
                    self.importing = hello["importing"]
                    continue
                self.ready = bool(hello and hello.get("ready"))
                break
            if self.exited():
                break
        return self.ready

    def rss(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def run(self, request: dict[str, Any], deadline: float | None, grace: float,
            max_memory: int | None) -> dict[str, Any]:
        """Run one job; the child's reply, or how it died (``died`` set)."""
        self.busy = True
        try:
            return self._run(request, deadline, grace, max_memory)
        finally:
            self.busy = False

    def _run(self, request: dict[str, Any], deadline: float | None, grace: float,
             max_memory: int | None) -> dict[str, Any]:
        # An idle child killed between jobs (the OOM killer, kill -9) is found by its
        # process state, not by EPIPE alone: a process its last task left behind may hold
        # the request pipe's read end, and the job would then wait in a pipe nobody reads.
        # One wait4(WNOHANG) per job, no other cost.
        if self.exited() or not self._send(request):  # the job never reached it:
            return {**self.reap("it was gone before the job reached it"),  # call() retries
                    "unsent": True}
        kill_at: float | None = None
        reason = ""
        while True:
            now = time.monotonic()
            wait = MEMORY_POLL_SECS if max_memory else 1.0
            for at in (deadline if kill_at is None else None, kill_at):
                if at is not None:
                    wait = min(wait, max(0.0, at - now))
            ready, _, _ = select.select([self.replies], [], [], wait)
            if ready:
                reply = read_frame(self.replies)
                if reply is None:
                    return self.reap(reason)
                self.tasks += 1
                return reply
            if self.exited():  # dead, its reply pipe held open by a process it left behind
                if select.select([self.replies], [], [], 0)[0]:  # it replied, then exited:
                    continue  # the reply is read, not mistaken for a death
                return self.reap(reason)
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                reason = (f"it did not stop within kill_grace_secs={grace:g} after the soft "
                          "timeout")
                self.kill()
                return self.reap(reason, timed_out=True)
            if kill_at is None and deadline is not None and now >= deadline:
                self.signal(signal.SIGUSR1)  # raised in the task: its finally blocks run
                kill_at = now + grace
            rss = self.rss() if max_memory else None
            if max_memory and rss and rss > max_memory:
                self.kill()
                return self.reap(f"its RSS ({format_size(rss)}) passed max_memory_per_child "
                                 f"({format_size(max_memory)})")

    def signal(self, number: int) -> None:
        if self._reaped is not None:  # its pid may already be another process's
            return
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def reap(self, reason: str = "", timed_out: bool = False) -> dict[str, Any]:
        """Wait for the dead child; how it ended, with its resource usage."""
        ended = self._reaped or self._wait(0) or {"exit_code": -9}  # wait(0): never None
        self._close_pipes()
        return {**ended, "died": True, "reason": reason, "timed_out": timed_out}

    def exited(self) -> bool:
        """Whether the child's process has ended (then reaped, for :meth:`reap`).

        End of file on the reply pipe (EPIPE on the request pipe) is not enough to see a
        child die: a process that a task left behind and that got the pipe ends (a fork
        without exec: a multiprocessing ``fork`` child) keeps them open after the child is
        gone, and the job would read RUNNING, its lease extended, until that process ends.
        """
        return self._reaped is not None or self._wait(os.WNOHANG) is not None

    def _wait(self, options: int) -> dict[str, Any] | None:
        """``wait4`` the child with ``options``: how it ended (kept for :meth:`reap`), or
        ``None`` while it runs (``WNOHANG``)."""
        try:
            pid, status, usage = os.wait4(self.pid, options)
        except ChildProcessError:  # reaped elsewhere (Popen.wait)
            code = self.proc.returncode if self.proc.returncode is not None else -9
            self._reaped = {"exit_code": code}
        else:
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(status)
            self._reaped = {"exit_code": code, "max_rss_kb": usage.ru_maxrss,
                            "cpu_secs": round(usage.ru_utime + usage.ru_stime, 6)}
        self.proc.returncode = code
        return self._reaped

    def close(self) -> None:
        """Ask an idle child to exit; it is reaped in the background."""
        self._send({"exit": True})
        self._close_pipes()
        threading.Thread(target=self.proc.wait, name="nuvom-child-reaper", daemon=True).start()

    def _close_pipes(self) -> None:
        for fd in (self.requests, self.replies):
            if fd == -1:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.requests = self.replies = -1
