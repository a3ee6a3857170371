"""LISTEN/NOTIFY wake-ups: one dedicated connection per process and schema.

Why a hint and not a message: a notification only says "look again" (its payload is empty,
so the server collapses repeats within a transaction); the claim query decides what is
there. Losing one therefore costs latency, never a job, and the queue's polling fallback
(always on, at ``poll_interval_max``) bounds that latency while the listener is down.

Why its own connection, straight to the server: LISTEN belongs to a session, so it cannot
live in the pool (or behind a transaction-mode pooler). Why ``SELECT 1`` after each quiet
interval: a half-open socket looks alive until written to; the probe turns a dead session
into an error, and the loop reconnects, re-LISTENs and wakes every waiter to poll at once.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Protocol

import psycopg
from psycopg import sql

from nuvom_plugins_postgres.settings import connect_kwargs

__all__ = ["Listener", "listener_for"]

log = logging.getLogger("nuvom.postgres")

#: Seconds between liveness probes of an idle LISTEN connection.
PROBE_SECS = 2.0
#: Longest wait between reconnection attempts.
BACKOFF_MAX_SECS = 2.0


class _Wakeable(Protocol):
    def wake(self, hint: str) -> None: ...


class Listener:
    """A daemon thread LISTENing on the schema's channel, waking registered queues."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn, self.channel = dsn, channel
        self._waiters: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: Set while LISTEN is active; tests wait on it after killing the connection.
        self.listening = threading.Event()
        #: Server pid of the LISTEN session (for fault tests); ``None`` while down.
        self.backend_pid: int | None = None
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"nuvom-listen-{channel}",
                                        daemon=True)
        self._thread.start()

    def add(self, waiter: _Wakeable) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: _Wakeable) -> bool:
        """Forget ``waiter``; ``True`` when none is left (the listener then stops)."""
        with self._lock:
            self._waiters.discard(waiter)
            if len(self._waiters) == 0:
                self._stop.set()
                return True
            return False

    def _wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake("")

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True,
                                     **connect_kwargs(f"nuvom-listen {self.channel}")) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.backend_pid = conn.info.backend_pid
                    self.listening.set()
                    self._wake()  # whatever was pushed while we were down: look now
                    backoff = 0.05
                    while not self._stop.is_set():
                        woke = False
                        for _ in conn.notifies(timeout=PROBE_SECS, stop_after=1):
                            woke = True
                        if woke:
                            self._wake()
                        else:
                            conn.execute("SELECT 1")
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                self.listening.clear()
                self.backend_pid = None
                self.reconnects += 1
                log.warning("LISTEN connection on %r lost (%s); polling until it is back",
                            self.channel, " ".join(str(exc).split()))
                self._wake()
                self._stop.wait(backoff)  # reconnection backoff, not synchronisation
                backoff = min(backoff * 2, BACKOFF_MAX_SECS)
        self.listening.clear()


_listeners: dict[tuple[int, str, str], Listener] = {}
_lock = threading.Lock()


def listener_for(dsn: str, channel: str, waiter: _Wakeable) -> Listener:
    """The process's listener for ``channel``, started on first use, with ``waiter``
    registered on it."""
    key = (os.getpid(), dsn, channel)
    with _lock:
        listener = _listeners.get(key)
        if listener is None or listener._stop.is_set():
            listener = _listeners[key] = Listener(dsn, channel)
        listener.add(waiter)
        return listener


def stop_listening(listener: Listener, waiter: _Wakeable) -> None:
    with _lock:
        if listener.discard(waiter):
            for key, value in list(_listeners.items()):
                if value is listener:
                    del _listeners[key]
