"""A process-pool child: imports task modules and runs one function at a time.

Started by :mod:`.processes` as a new ``python`` running :func:`main` — a fresh interpreter
(what multiprocessing calls ``spawn``), never a ``fork`` of the parent: the parent runs
several threads (dispatcher, settler, monitor, executors) and a fork would copy their locks
in whatever state they were, and any open database connection with them. The child holds
no backend, no lease and no deadline of its own; the parent keeps all of those and only asks
"run this function with these arguments".

The protocol is length-prefixed JSON over two pipes that are not stdin/stdout, so a task
that prints cannot corrupt it. Arguments and results cross with the kernel's wire encoding
(:func:`~nuvom_kernel.serialization.to_wire`): data, never pickles.

Signals: SIGINT and SIGTERM are ignored (a Ctrl-C reaches the whole process group, but the
parent decides whether running jobs finish); SIGUSR1 is the parent's soft timeout, raised in
the task as :class:`~nuvom_kernel.errors.JobTimeoutError` so ``finally`` blocks run. The child
dies with its parent: ``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import os
import resource
import signal
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom_kernel.envelope import options_from_wire
from nuvom_kernel.errors import (
    JobTimeoutError,
    NoRetry,
    Retry,
    SerializationError,
    UnknownTaskError,
    encoding_error,
    error_text,
    qualname,
)
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobStatus
from nuvom_kernel.registry import REGISTRY
from nuvom_kernel.serialization import from_wire, to_wire
from nuvom_kernel.worker.current import bind_job, in_a_pool

if TYPE_CHECKING:
    import asyncio

__all__ = ["PARENT_PID", "read_frame", "write_frame"]

#: In a pool child: the worker process's pid (what a task that names "its worker", e.g. in
#: a log line, should report); ``None`` elsewhere.
PARENT_PID: int | None = None

_HEADER = struct.Struct("!I")


def write_frame(fd: int, data: dict[str, Any]) -> None:
    _write_all(fd, encode_frame(data))


def encode_frame(data: dict[str, Any]) -> bytes:
    """``data`` as one frame. Raises what JSON raises for what it cannot encode (an int
    past 4,300 digits, nesting past the recursion limit) and ``struct.error`` past 4 GiB."""
    payload = json.dumps(data, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload)) + payload


def _write_all(fd: int, frame: bytes) -> None:
    view = memoryview(frame)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> dict[str, Any] | None:
    """The next message, or ``None`` when the other side closed its end."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    payload = _read_exactly(fd, _HEADER.unpack(header)[0])
    if payload is None:
        return None
    return json.loads(payload)  # type: ignore[no-any-return]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Child:
    def __init__(self, requests: int, replies: int) -> None:
        self.requests = requests
        self.replies = replies
        self.running = False  # a synchronous task is inside its call (SIGUSR1 raises there)
        # one loop for every async task of this child, made by the first: asyncio is a
        # third of a child's imports, and a child starts anew every max_tasks_per_child
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main_task: asyncio.Task[Any] | None = None
        self.soft_timeout = False
        #: the running task's ``concurrency=`` as this child imported it, sent back with
        #: the reply: the worker imports no task module, so it learns limits from these
        self.limit: dict[str, int | None] = {}

    def on_soft_timeout(self, signum: int, frame: Any) -> None:
        self.soft_timeout = True
        if self.main_task is not None and self.loop is not None:  # a coroutine: cancel it
            # through the loop's self-pipe: a loop waiting in select() for a sleep or I/O
            # does not see a plain cancel() (the handler runs when select() is interrupted,
            # which Python then resumes with the same timeout) until it wakes on its own,
            # and by then the parent's SIGKILL has come and no finally block ran
            self.loop.call_soon_threadsafe(self.main_task.cancel)
        elif self.running:
            raise JobTimeoutError("the job exceeded its timeout (stopped by the worker)")

    def serve(self) -> None:
        try:
            write_frame(self.replies, {"ready": True, "pid": os.getpid()})
            while True:
                request = read_frame(self.requests)
                if request is None or request.get("exit"):
                    return
                _write_all(self.replies, self.run(request))
        except BrokenPipeError:  # the worker stopped listening (a forced stop): its
            return  # end of the job is already decided; a traceback here only alarmed

    def run(self, request: dict[str, Any]) -> bytes:
        """Run one job; its reply, encoded as a frame.

        The result is encoded here, inside a ``try``: a value JSON cannot carry (an int past
        4,300 digits, a list nested thousands deep) is a :class:`SerializationError` of
        that job, not retried, as in the thread pool. Encoded outside it, it killed the
        child (or came back as a plain error), and the job ran again per its ``retries``.
        """
        before = resource.getrusage(resource.RUSAGE_SELF)
        self.soft_timeout = False
        self.limit = {}
        try:
            result = self._call(request)
        except BaseException as exc:  # a task's failure is data
            aio = sys.modules.get("asyncio")  # not imported: no coroutine was cancelled
            if aio is not None and isinstance(exc, aio.CancelledError) and self.soft_timeout:
                exc = JobTimeoutError("the job exceeded its timeout (cancelled by the worker)")
            reply = _failure(exc, exc)
        else:
            try:
                wire = (to_wire(result, f"{request['task']}() return value")
                        if request.get("store_result", True) else None)
                return encode_frame(_usage({"ok": True, "result": wire, **self.limit},
                                           before))
            except Exception as exc:  # whatever encoding raised: RecursionError included
                reply = _failure(encoding_error(request["task"], exc), exc)
        return encode_frame(_usage(reply | self.limit, before))  # plain text: it encodes

    def _call(self, request: dict[str, Any]) -> Any:
        """Resolve the task and call it with the request's arguments; what it returns."""
        fn = REGISTRY.resolve(request["task"], request.get("module"))
        options = getattr(fn, "options", None)
        if options is not None:
            self.limit = {"concurrency": options.concurrency}
        func = getattr(fn, "fn", fn)
        args = from_wire(request["args"])
        kwargs = from_wire(request["kwargs"])
        get = request.get
        job = Job(id=request["id"], task=request["task"], args=tuple(args),
                  kwargs=kwargs, module=get("module"), attempts=request["attempts"],
                  run=request["run"], headers=get("headers") or {},
                  options=options_from_wire(get("opts") or {}),
                  created_at=get("created_at") or 0.0, enqueued_by=get("enqueued_by", ""),
                  trace_id=get("trace_id", ""), failures=get("failures", 0),
                  status=JobStatus.RUNNING)
        remaining = request.get("remaining")
        job.deadline = None if remaining is None else time.monotonic() + remaining
        with bind_job(job):
            if inspect.iscoroutinefunction(func):
                return self._await(func, args, kwargs)
            self.running = True
            try:
                return func(*args, **kwargs)
            finally:
                self.running = False

    def _await(self, func: Any, args: Any, kwargs: Any) -> Any:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
        self.main_task = self.loop.create_task(func(*args, **kwargs))
        if self.soft_timeout:  # it came while the loop was made: cancel at the first await
            self.main_task.cancel()
        try:
            return self.loop.run_until_complete(self.main_task)
        finally:
            self.main_task = None


def _failure(exc: BaseException, cause: BaseException) -> dict[str, Any]:
    """The reply for a failed job: ``exc`` as the parent records it, with ``cause``'s
    traceback (the encoding error behind a :class:`SerializationError`). Only text: it
    always encodes, whatever the task raised (:func:`error_text`: a ``__str__`` that
    raised here killed the child)."""
    return {"ok": False, "error_type": qualname(exc), "message": error_text(exc),
            "traceback": "".join(traceback.format_exception(cause)),
            "import_failed": exc.import_failed if isinstance(exc, UnknownTaskError) else True,
            "kind": _kind(exc), "delay_secs": exc.delay_secs if isinstance(exc, Retry) else None}


def _usage(reply: dict[str, Any], before: resource.struct_rusage) -> dict[str, Any]:
    """``reply`` with the job's CPU time and the child's peak RSS."""
    after = resource.getrusage(resource.RUSAGE_SELF)
    reply["cpu_secs"] = round((after.ru_utime + after.ru_stime)
                              - (before.ru_utime + before.ru_stime), 6)
    reply["max_rss_kb"] = after.ru_maxrss
    return reply


def _kind(exc: BaseException) -> str:
    if isinstance(exc, JobTimeoutError):
        return "timeout"
    if isinstance(exc, UnknownTaskError):
        return "unknown_task"
    if isinstance(exc, SerializationError):
        return "serialization"
    if isinstance(exc, NoRetry):  # rebuilt by the parent (a subclass too): the settler
        return "no_retry"  # reads them
    if isinstance(exc, Retry):
        return "retry"
    return "error"


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(Exception):  # Linux: the kernel kills us when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a second line): notice being re-parented
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="nuvom-child-watchdog", daemon=True).start()


def _configure(root: str) -> None:
    """This process's kernel, built now from the worker's project: every plugin is loaded
    and its ``nuvom_configure`` runs here as in the worker (an OpenTelemetry SDK set up
    there records the task's spans), before the task modules are imported. A job that
    enqueues uses this kernel. A failure is printed and the child serves on: the worker
    built the same configuration already, and a task that enqueues meets the error."""
    from nuvom_kernel.kernel import Kernel, set_kernel

    try:
        set_kernel(Kernel(root=root))
    except BaseException as exc:
        print(f"nuvom child {os.getpid()}: cannot load the plugins: {exc!r}", file=sys.stderr)


def _unheard(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM reach a child too (Ctrl-C to the process group, ``systemctl
    stop`` to the cgroup); its worker decides when it ends, so they do nothing here."""


_STOPS = {signal.SIGINT, signal.SIGTERM}
_FORKING = threading.local()  # the forking thread's signal mask, kept across the fork


def _held() -> None:  # (blocked across the fork: one sent at once is kept, not lost)
    _FORKING.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)


def _released() -> None:  # the mask the forking thread had, whatever it blocked itself
    signal.pthread_sigmask(signal.SIG_SETMASK, getattr(_FORKING, "mask", set()))


def _heard_again() -> None:
    """In a process a task forked: Python's own handling, unless the task set its own."""
    for signum, default in ((signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is _unheard:
            signal.signal(signum, default)
    _released()


def _deaf_to_stops() -> None:
    """Catch SIGINT and SIGTERM with :func:`_unheard`, never ignore them (``SIG_IGN``):
    an ignored signal stays ignored across ``exec`` and ``fork``, so every process a task
    started (``subprocess.Popen``, a ``multiprocessing`` pool) ignored SIGTERM too. Its
    ``terminate()`` did nothing, a pool's ``__exit__`` hung, and such processes outlived
    the worker. A handler is reset by ``exec``, and a fork hears them again at once."""
    for signum in _STOPS:
        signal.signal(signum, _unheard)
        signal.siginterrupt(signum, False)  # a task's system calls restart, as ignored
    os.register_at_fork(before=_held, after_in_parent=_released, after_in_child=_heard_again)


def main(argv: list[str]) -> None:
    global PARENT_PID
    requests, replies, parent = int(argv[0]), int(argv[1]), int(argv[2])
    # pass_fds made the pipe ends inheritable: a process a task starts without close_fds
    # (os.system("... &"), Popen(close_fds=False)) would hold them open after this child
    # died, and the parent, waiting for end of file, would not see it die until that
    # process ends. Close them on exec from the start (the parent also watches our pid).
    for fd in (requests, replies):
        os.set_inheritable(fd, False)
    PARENT_PID = parent
    in_a_pool()
    _die_with_parent(parent)
    _deaf_to_stops()
    child = _Child(requests, replies)
    signal.signal(signal.SIGUSR1, child.on_soft_timeout)
    hello = read_frame(requests)
    if hello is None:
        return
    # The parent's path, in its order, then what only this process has: inserting each
    # missing entry first put an import root the parent had appended (a src layout's)
    # ahead of the installed packages, so children imported other code than the parent.
    sys.path[:] = list(dict.fromkeys([*hello.get("sys_path", []), *sys.path]))
    if hello.get("failed_plugins"):  # before any kernel of this process loads them
        from nuvom_kernel.plugin_failures import inherit_failures

        inherit_failures(hello["failed_plugins"])
    if hello.get("root"):
        _configure(hello["root"])
    REGISTRY.load_manifest(Path(hello["data_dir"]))
    for module in hello.get("preload", []):
        try:  # said first: if importing it kills this process, the worker knows which
            write_frame(child.replies, {"importing": module})
        except OSError:  # the worker stopped listening (it stops): nothing to serve, and
            return  # no module to blame (each child said "cannot import" a sound one)
        try:
            REGISTRY.import_module(module)
        except BaseException as exc:  # its jobs fail with the import error (a module
            # calling sys.exit() or raising any BaseException at import included); the
            # child lives, or every child would die starting, and every job wait
            print(f"nuvom child {os.getpid()}: cannot import {module!r}: {exc!r}",
                  file=sys.stderr)
    child.serve()

