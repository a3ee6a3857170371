"""How a worker stops on signals: the first SIGINT/SIGTERM drains (running jobs finish within
the grace period), the second stops at once.

A signal can arrive while a plugin's ``nuvom_worker_startup``/``nuvom_worker_shutdown`` hook
holds the main thread, maybe forever; the handler then raises :class:`HookInterrupted` out
of that hook, or the worker could never reach its drain and the signal would change nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from nuvom_kernel import events
from nuvom_kernel.events import HookInterrupted

if TYPE_CHECKING:
    from nuvom_kernel.worker.pool import Worker

__all__ = ["StopSignals"]

log = logging.getLogger("nuvom.worker")

#: How long after the second signal the process ends even if a step of the stop still waits.
FORCED_EXIT_SECS = 10.0


class StopSignals:
    """The worker's SIGINT/SIGTERM handler and its lifecycle-hook emitter.

    The handler only counts the signal and wakes a thread of its own, which stops the worker:
    Python runs a handler in the main thread between any two bytecodes, inside whatever the
    main thread was doing, and inside the handler itself when a second signal follows the
    first at once (``kill -INT`` twice, a supervisor and a terminal both signalling). A
    handler that stopped the worker itself set the stop events, and an event's lock is not
    reentrant: a second signal landing in the first one's ``Event.set()`` waited for a lock
    its own thread held, and the worker hung for good, before the exit timer of the second
    signal was armed (seen once in CI, a double SIGINT to an idle process-pool worker). The
    thread takes the signals in order, one at a time, and waits for a lock like any thread.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.received = 0
        self._in_lifecycle_hook = False  # the main thread is inside startup/shutdown hooks
        self._exit_timer: threading.Timer | None = None
        self._wake: int | None = None  # the write end of the pipe the thread reads
        self._acted = 0
        self._pid = os.getpid()
        self._finished = False  # the stop is over (disarm): a late signal arms no timer
        self._timer_lock = threading.Lock()  # (never taken in the handler)
        self._thread: threading.Thread | None = None
        self._previous: dict[int, Any] = {}  # the handlers install() replaced

    def install(self) -> None:
        """The handlers first, then the thread that acts on them (the pipe keeps what
        arrives meanwhile): ``nuvom runworker`` ignores both signals until here."""
        self._pid = os.getpid()
        read, self._wake = os.pipe()
        os.set_blocking(self._wake, False)
        self._previous = {sig: signal.signal(sig, self.handle)
                          for sig in (signal.SIGINT, signal.SIGTERM)}
        self._thread = threading.Thread(target=self._watch, args=(read,),
                                        name="nuvom-signals", daemon=True)
        self._thread.start()

    def uninstall(self) -> None:
        """Put back the handlers found at :meth:`install`, and end the thread and its pipe.

        Why: a program that runs a worker for a while and goes on (a test suite, a service
        with a worker phase) kept this handler after ``Worker.run()`` returned, so its own
        Ctrl-C only counted towards a worker already gone, and every run left a thread
        and two file descriptors behind."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        wake, self._wake = self._wake, None
        if wake is not None:
            os.close(wake)  # the thread reads the end of the pipe, closes it and returns
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def handle(self, signum: int, frame: Any) -> None:
        """The installed handler: takes no lock (see the class). Called directly (a program
        or test that stops the worker as a signal would), it acts at once.

        In a process forked from the worker (a task's ``multiprocessing`` pool, an
        ``os.fork()``), which inherits this handler and the pipe, the signal gets Python's
        default handling instead: written to the pipe it reached the worker, and a Ctrl-C
        (to the whole process group) or a ``systemctl stop`` (to the whole cgroup) counted
        twice there, a forced stop where a drain was asked for."""
        if os.getpid() != self._pid:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received += 1
        if self._wake is None:
            self._act(signum)
        else:
            try:
                os.write(self._wake, bytes([signum]))
            except OSError:  # the pipe is full of signals not acted on yet: enough of them
                pass
        if self._in_lifecycle_hook and threading.current_thread() is threading.main_thread():
            raise HookInterrupted

    def _watch(self, read: int) -> None:
        try:
            while data := os.read(read, 64):
                for signum in data:
                    try:
                        self._act(signum)
                    except Exception:  # (a store's wake-up that failed): the next one acts
                        log.exception("stopping the worker on %s failed",
                                      signal.Signals(signum).name)
        finally:
            os.close(read)

    def _act(self, signum: int) -> None:
        self._acted += 1
        name = signal.Signals(signum).name
        if self._acted == 1:
            log.warning("received %s: finishing running jobs (up to %g s); signal again to "
                        "stop at once", name, self.worker.grace_period_secs)
            self.worker.stop(graceful=True)
            return
        log.warning("received %s again: stopping now", name)
        if self._acted == 2:  # armed first: a stop that hangs must not keep it unarmed
            self.arm_exit("the second signal")
        self.worker.stop(graceful=False)

    def arm_exit(self, after: str) -> None:
        """Arm :meth:`_exit_anyway` once, for a stop a signal asked for while these
        handlers are installed (never for a program that stopped its worker itself).
        ``after``: what made the stop one that does not wait, the second signal or the
        grace period running out (a host cut off from its store stopped 22 s after its
        3 s grace)."""
        with self._timer_lock:
            if not self._finished and self._exit_timer is None and self._wake is not None \
                    and self._acted:
                self._exit_anyway(after)

    def _exit_anyway(self, after: str) -> None:
        """End the process :data:`FORCED_EXIT_SECS` after a forced stop began if it has
        not ended: each step of a stop that talks to a store (settling what finished,
        leaving the worker list) waits out that store's timeouts when it does not answer,
        and "stop at once" must not mean minutes. The leases of what did not settle
        expire, and those jobs run again, as after any crash."""
        def exit_now() -> None:
            log.error("the worker had not stopped %g s after %s (a store that does not "
                      "answer?); exiting now, unsettled jobs run again when their leases "
                      "expire", FORCED_EXIT_SECS, after)
            logging.shutdown()
            os._exit(1)

        self._exit_timer = threading.Timer(FORCED_EXIT_SECS, exit_now)
        self._exit_timer.daemon = True
        self._exit_timer.start()

    def disarm(self) -> None:
        """The stop finished: the process goes on (an embedding program, atexit cleanup)
        and exits with the worker's status, not the timer's."""
        with self._timer_lock:
            self._finished = True
            if self._exit_timer is not None:
                self._exit_timer.cancel()

    def emit_lifecycle(self, hook_name: str) -> None:
        """Emit a worker lifecycle hook, which a signal may interrupt (see :meth:`handle`).

        A signal handled just before the hook began (the flag not yet set) could not
        interrupt it: a startup hook that hangs then held the main thread, and the drain
        the first SIGINT asked for never came (seen under load in the chaos suite). So the
        startup hooks are not run once a signal came, nor the shutdown hooks after a
        second one; the check follows the flag, so a signal after it interrupts as usual."""
        main = threading.current_thread() is threading.main_thread()
        try:
            self._in_lifecycle_hook = main
            if self.received > (hook_name == "nuvom_worker_shutdown"):
                skipped = [self.worker.kernel.pm.get_name(impl.plugin) for impl in
                           events.observers(self.worker.kernel.pm, hook_name)]
                if skipped:  # (every forced stop said so, with no such hook installed)
                    # a WARNING: a forced stop skips the shutdown hooks by design, and an
                    # ERROR at each one (the installed prometheus plugin's) cried wolf
                    log.warning("the worker was signalled to stop before its plugins' %s "
                                "hooks began; they were not run (plugins: %s)", hook_name,
                                ", ".join(map(str, skipped)))
                return
            events.emit(self.worker.kernel.pm, hook_name, worker=self.worker)
        except HookInterrupted as exc:
            log.error("the %s hook of %s was still running when the worker was signalled; "
                      "it was interrupted", hook_name,
                      "a plugin" if exc.plugin is None else f"plugin {exc.plugin!r}")
        finally:
            if main:
                self._in_lifecycle_hook = False
