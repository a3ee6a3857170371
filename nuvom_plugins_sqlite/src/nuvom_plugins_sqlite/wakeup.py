"""Cross-process wake-ups for idle workers: SQLite's missing LISTEN/NOTIFY.

Why: an idle worker must notice a job pushed by another process within a millisecond or two,
yet cost almost no CPU. Polling cannot do both: every timed sleep costs ~0.1 ms of CPU on a
VM, so polling every 4 ms already burns 2-4 % of a core. Instead each waiting thread binds a
Unix datagram socket and registers it as an empty file in ``<database>-wake/``; whoever makes
a message available sends one byte to every registered socket, and the waiter blocks in
``select()`` until a byte arrives (or its timeout passes). Idle cost: nothing but the
caller's own timeouts.

Details that keep it safe:

* sockets live in Linux's *abstract* namespace (no file to clean up, no path-length limit,
  gone when the process dies); the registry file only names them. A send that finds no
  socket (a killed process) deletes the stale registry file.
* abstract sockets are per *network namespace*: a producer in another container (or
  ``unshare -n``) sharing the database's folder cannot reach a waiter, and would take it for
  dead. So a registry file is named ``<netns>-<token>`` (``<netns>``: the inode of
  ``/proc/self/ns/net``), and a process sends to, and prunes, only the entries of its own
  namespace. Waiters in another namespace are not woken by its pushes; they find its jobs
  with their timed claims (an idle worker claims at least every ``poll_interval_max``,
  0.1 s). Entries of the old form ``<token>`` are treated as of this namespace, as before.
* a waiter whose registry file vanished (removed by a process of an older version in another
  namespace, or by hand) registers it again on its next timeout: one ``stat()`` per idle
  timeout, nothing on the hot path.
* a lost wake-up costs latency, never a job: callers still claim after every timeout.
* elsewhere (macOS, Windows, a read-only directory) :attr:`Waker.enabled` is ``False`` and
  the queue falls back to polling ``PRAGMA data_version``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
import sys
import threading
import time
from pathlib import Path

__all__ = ["WAKEUPS_SUPPORTED", "Waker"]

log = logging.getLogger("nuvom.sqlite")

_PREFIX = b"\0nuvom-wake-"
# How long a producer trusts its cached list of waiters before it stat()s the directory again:
# a waiter registered meanwhile is found by its own timed claims (<= 0.1 s) until then.
_RELIST_SECS = 0.25

#: How often an idle waiter refreshes its registry entry's time, and after how long without
#: one another namespace's registration deletes it (see ``Waker._prune_foreign``).
_REFRESH_SECS = 300.0
_STALE_SECS = 3 * _REFRESH_SECS

#: Abstract-namespace Unix sockets are a Linux feature.
WAKEUPS_SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


def network_namespace() -> str:
    """This process's network namespace as a registry-name prefix: the inode of
    ``/proc/self/ns/net``, or ``"0"`` where it cannot be read (no ``/proc``), which every
    such process then shares."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


class Waker:
    """Wake-up registry for the database at ``db_path`` (one per backend instance)."""

    def __init__(self, db_path: Path) -> None:
        self.dir = Path(f"{db_path}-wake")
        self.enabled = WAKEUPS_SUPPORTED
        self._local = threading.local()
        self._lock = threading.Lock()
        self._owned: list[tuple[Path, socket.socket, int]] = []
        self._sender: socket.socket | None = None
        self._sender_pid = 0
        self._peers: list[tuple[str, bytes]] = []
        self._peers_key: tuple[int, int, str] | None = None
        self._peers_checked = 0.0

    # --- waiting side -------------------------------------------------------------------

    def listener(self) -> tuple[socket.socket, bool] | None:
        """This thread's registered socket and whether it was just created (a waiter must
        then re-check for work once: a push before registration sent it nothing)."""
        sock = getattr(self._local, "sock", None)
        if sock is not None and self._local.pid == os.getpid():
            return sock, False
        if not self.enabled:
            return None
        # The namespace is read per registration, not cached per process: a process may
        # unshare(CLONE_NEWNET) or be forked into another namespace.
        name = f"{network_namespace()}-{secrets.token_hex(8)}"
        entry = self.dir / name
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(_PREFIX + name.encode())
            sock.setblocking(False)
            self.dir.mkdir(parents=True, exist_ok=True)
            entry.touch()
        except OSError as exc:
            log.debug("%s: cross-process wake-ups unavailable (%s); polling instead",
                      self.dir, exc)
            self.enabled = False
            return None
        self._local.sock, self._local.pid, self._local.entry = sock, os.getpid(), entry
        with self._lock:
            self._owned.append((entry, sock, os.getpid()))
        self._prune_foreign(name.partition("-")[0])
        return sock, True

    def _prune_foreign(self, netns: str) -> None:
        """Delete other namespaces' entries not refreshed for :data:`_STALE_SECS`: no
        process here can tell whether their waiters live (their sockets are out of reach),
        so without this a container killed for good left its entries for ever, one more per
        restart. A live waiter refreshes its entry every :data:`_REFRESH_SECS` (on its
        timeouts) and puts it back if it goes; at each registration, so rarely."""
        cutoff = time.time() - _STALE_SECS
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if "-" not in name or name.partition("-")[0] == netns:
                continue  # this namespace's own: pruned when a send finds no socket
            with contextlib.suppress(OSError):
                if os.stat(self.dir / name).st_mtime < cutoff:
                    (self.dir / name).unlink()

    def wait(self, sock: socket.socket, timeout: float) -> bool:
        """Block until a wake-up arrives or ``timeout`` passes; ``True`` if woken."""
        try:
            ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        except (OSError, ValueError):  # closed under us by close(): just stop waiting
            return False
        if not ready:
            self._reregister()
            return False
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while sock.recv(64):  # coalesce every pending wake-up into this one
                pass
        return True

    def _reregister(self) -> None:
        """Put this thread's registry file back if it vanished (see the module docstring),
        and refresh its time every :data:`_REFRESH_SECS`. Called on a timeout only, so an
        idle waiter pays one ``stat()`` per timeout."""
        entry: Path | None = getattr(self._local, "entry", None)
        if entry is None or self._local.pid != os.getpid():
            return
        try:
            if time.time() - entry.stat().st_mtime < _REFRESH_SECS:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:  # back, or refreshed so that another namespace's registration keeps it
            self.dir.mkdir(parents=True, exist_ok=True)
            entry.touch()
        except OSError as exc:  # a lost registration costs latency only: keep waiting
            log.debug("%s: could not register %s again (%s)", self.dir, entry.name, exc)

    # --- notifying side -----------------------------------------------------------------

    def notify(self) -> None:
        """Send one byte to every registered waiter (cheap: a cached directory listing)."""
        if not self.enabled:
            return
        sender = self._get_sender()
        for name, address in self._current_peers():
            try:
                sender.sendto(b"!", address)
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
            except (ConnectionRefusedError, FileNotFoundError):
                # No socket of that name in this namespace, and the entry is of this
                # namespace (see _current_peers): the waiter's process is gone.
                with contextlib.suppress(OSError):
                    (self.dir / name).unlink()
                self._peers_key = None
            except OSError:
                pass

    def _get_sender(self) -> socket.socket:
        if self._sender is None or self._sender_pid != os.getpid():
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
            self._sender_pid = os.getpid()
        return self._sender

    def _current_peers(self) -> list[tuple[str, bytes]]:
        now = time.monotonic()
        if self._peers_key is not None and now - self._peers_checked < _RELIST_SECS:
            return self._peers
        self._peers_checked = now
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:  # nobody ever waited: trust that for _RELIST_SECS too
            self._peers, self._peers_key = [], (0, 0, "")
            return self._peers
        netns = network_namespace()  # in the key: a process may move (unshare -n)
        key = (st.st_mtime_ns, st.st_ino, netns)
        if key != self._peers_key:
            try:
                names = os.listdir(self.dir)
            except FileNotFoundError:
                names = []
            # Only this namespace's waiters (and old-style entries, no namespace named):
            # another namespace's cannot be reached, and a refused send would unregister
            # a live waiter. Filtered here, once per listing, not per notify.
            self._peers = [(n, _PREFIX + n.encode()) for n in names
                           if n.partition("-")[0] == netns or "-" not in n]
            self._peers_key = key
        return self._peers

    def close(self) -> None:
        """Unregister and close this process's sockets."""
        with self._lock:
            owned, self._owned = self._owned, []
        for path, sock, pid in owned:
            if pid != os.getpid():  # inherited through fork: the parent's to remove
                continue
            with contextlib.suppress(OSError):
                path.unlink()
            sock.close()
        self._local = threading.local()
        if self._sender is not None and self._sender_pid == os.getpid():
            self._sender.close()
        self._sender = None
