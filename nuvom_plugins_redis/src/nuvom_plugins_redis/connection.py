"""The client (:class:`Store`) and the startup checks (the settings and their checks:
:mod:`.settings`; the errors that name the server: :mod:`.errors`).

Why one :class:`Store` per backend instance and not a module-level client: a queue and a
result backend built from the same settings must be able to tell they share a server and a
key prefix (``settle_many`` writes both in one script), and a fork must not share sockets
(redis-py's pool re-opens its connections in a child on first use).

Why scripts run over connections of the store's own (:meth:`Store.run`) and not through
redis-py's ``Script`` objects: a ``Script`` call goes through the pool (locks, a pid check,
a ``poll()`` for stale data), the retry wrapper, per-argument encoding and the reply
callbacks, ~40 µs of CPU per call on this machine against ~17 µs for sending the packed
command and reading the reply. A worker makes two calls per job (claim, settle) and a
producer one, and they hold the GIL. Only the happy path is short-cut: any connection error
falls back to redis-py's full path, with its retries and backoff.

Why errors are :class:`~nuvom_kernel.errors.EnqueueError`: an unreachable server or a wrong
password is what ``.delay()`` reports (the kernel passes a ``NuvomError`` through unchanged,
so the message is ours: the URL with its password masked and what to check), and
``nuvom runworker`` prints a ``NuvomError`` as one line and exits 1.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.clock import server_offset
from nuvom_kernel.config import mask_secret
from nuvom_plugins_redis.errors import (
    DEFAULT_MAX_BULK,
    RedisUnavailableError,
    _is_out_of_memory,
)
from nuvom_plugins_redis.settings import (
    _URL_SETTING,
    RedisSettings,
    check_namespace,
)

try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs then
    _pack = None  # type: ignore[assignment]

__all__ = ["LuaScript", "Store", "build_store", "delete_prefix"]

log = logging.getLogger("nuvom.redis")

T = TypeVar("T")
_checked: set[tuple[str, str]] = set()  # (url, prefix) whose server was checked here
_checked_lock = threading.Lock()
#: Namespaces of test runs (see :func:`_forget_temporary`) get this prefix.
TEST_NAMESPACE_PREFIX = "nuvom-test-"
#: (url, key prefix, pid) of test namespaces this process created, deleted at its exit.
_temporary: set[tuple[str, str, int]] = set()




class LuaScript:
    """One Lua script of a store: its source, its SHA-1 (what ``EVALSHA`` names), and the
    redis-py ``Script`` that runs it the slow, retrying way (see :meth:`Store.run`)."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.fallback = client.register_script(source)


#: Every live store, so that a forked child drops the connections it inherited.
_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_stores):
        store._forget_connections()


os.register_at_fork(after_in_child=_after_fork)


class Store:
    """One server and one key prefix: the clients (a normal one, and one for blocking
    waits, whose socket timeout must outlast the block), the prefix of every key, and the
    connections that :meth:`run` sends scripts over."""

    def __init__(self, settings: RedisSettings, context: BackendContext) -> None:
        self.settings = settings
        self.url = settings.url
        self.masked_url = mask_secret("url", settings.url)
        ns = context.namespace
        check_namespace(ns)
        self.namespace = ns
        self.prefix = f"{settings.key_prefix}:{ns}:" if ns else f"{settings.key_prefix}:"
        common: dict[str, Any] = {
            "socket_connect_timeout": settings.socket_connect_timeout_secs,
            "health_check_interval": settings.health_check_interval_secs,
            # A dropped connection (a server restart, a proxy's idle cut) is retried at
            # once; a reply that did not come within the socket timeout is not: redis-py
            # retried it 4 times, nested in the health check's PING and retried again, so
            # a server that stopped answering (a partition, a frozen host) held `.delay()`
            # and `nuvom status` ~30 socket timeouts, and a worker's drain for minutes.
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 4,
                           supported_errors=(redis.ConnectionError,)),
            "retry_on_error": [redis.ConnectionError],
        }
        if not settings.url.lower().startswith("unix:"):  # TCP only: redis-py's unix
            common["socket_keepalive"] = True  # connection refuses the argument
        self.client = redis.Redis.from_url(
            settings.url, socket_timeout=settings.socket_timeout_secs, **common)
        self.blocking = redis.Redis.from_url(
            settings.url, socket_timeout=settings.block_secs + settings.socket_timeout_secs,
            **common)
        self.epoch: str | None = None
        #: The server's ``proto-max-bulk-len``, read by :meth:`startup` (see
        #: :meth:`read_max_bulk`): each record and message body is checked against it
        #: before it is sent.
        self.max_bulk = DEFAULT_MAX_BULK
        #: The server's clock minus this process's (seconds), as a push last used it
        #: (``RedisJobQueue.push``); first estimated by :meth:`startup`, ``None`` until.
        self.clock_skew: float | None = None
        pool = self.client.connection_pool
        self._conn_class, self._conn_kwargs = pool.connection_class, pool.connection_kwargs
        self._idle: list[AbstractConnection] = []  # list.pop/append are atomic: no lock
        self._all: list[AbstractConnection] = []
        _stores.add(self)

    def script(self, source: str) -> LuaScript:
        return LuaScript(self.client, source)

    def run(self, script: LuaScript, args: Sequence[Any]) -> Any:
        """``EVALSHA`` over an idle connection of this store's (one per concurrent
        caller; a new one when none is idle): the packed command out, the reply in.

        A ``NOSCRIPT`` reply (a restarted or flushed server) loads the script and sends it
        again. A connection error, at any point, drops that connection and runs the script
        through redis-py instead, whose retries (with backoff) and errors are the same as
        before this path existed — including its caveat that a script whose reply was lost
        may run twice (every script here is fenced or idempotent for that).
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._conn_class(**self._conn_kwargs)
            self._all.append(conn)
        try:
            try:
                reply = self._send(conn, script.sha, args)
            except redis.exceptions.NoScriptError:
                self._send_raw(conn, ("SCRIPT", "LOAD", script.source))
                reply = self._send(conn, script.sha, args)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            self._idle.append(conn)
            return script.fallback(args=list(args))
        except redis.ResponseError:
            self._idle.append(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            conn.disconnect()  # interrupted mid-reply: the stream is out of step
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        return reply

    def run_many(self, script: LuaScript, calls: Iterable[Sequence[Any]],
                 window: int = 4) -> list[Any]:
        """Every call of ``script`` over one connection, each sent before the replies of
        the last ``window`` are read: the server runs one call while this process packs
        the next, and a batch waits for one round trip instead of one per call (a
        ``.map()`` of 10,000 jobs is 10 push chunks). ``calls`` is read one call at a
        time, after the one before was sent, so a generator that builds each call's
        arguments overlaps that work with the server's too. Per call, in order: its
        reply, or the ``ResponseError`` the server answered (the caller decides what an
        error means for the calls after it; the connection stays in step). If building a
        call raises, nothing more is sent, the replies of the calls sent are read, and
        that exception ends the list.

        ``NOSCRIPT`` replies (calls that did not run) load the script and run those calls
        again, in order. A connection error drops the connection, and every call whose
        reply had not come runs again, in order, through :meth:`run` (redis-py's retrying
        path): as with :meth:`run`, a call whose reply was lost may run twice.
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._conn_class(**self._conn_kwargs)
            self._all.append(conn)
        pending = iter(calls)
        sent: list[Sequence[Any]] = []
        replies: list[Any] = []
        unbuilt: list[Exception] = []  # a call that could not be built: none after it

        def build() -> Sequence[Any] | None:
            try:
                return next(pending, None)
            except Exception as exc:
                unbuilt.append(exc)
                return None

        try:
            while (args := build()) is not None:
                sent.append(args)
                self._write(conn, ("EVALSHA", script.sha, 0, *args))
                if len(sent) - len(replies) > window:
                    replies.append(self._read(conn))
            while len(replies) < len(sent):
                replies.append(self._read(conn))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # the calls without a reply run again below
            while (args := build()) is not None:  # with those not sent yet
                sent.append(args)
        except BaseException:
            conn.disconnect()  # interrupted mid-reply: the stream is out of step
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        out: list[Any] = []
        for i, args in enumerate(sent):
            reply = replies[i] if i < len(replies) else None
            if reply is None or isinstance(reply, redis.exceptions.NoScriptError):
                try:
                    reply = self.run(script, args)
                except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError) as exc:
                    reply = exc
            out.append(reply)
            if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
                return out + [reply] * (len(sent) - len(out))  # no retrying each of the rest
        return out + unbuilt

    @staticmethod
    def _write(conn: AbstractConnection, command: tuple[Any, ...]) -> None:
        conn.send_packed_command([_pack(command)] if _pack is not None
                                 else conn.pack_command(*command))

    @staticmethod
    def _read(conn: AbstractConnection) -> Any:
        try:
            return conn.read_response()
        except redis.ResponseError as exc:  # an error reply: read whole, still in step
            return exc

    def _send(self, conn: AbstractConnection, sha: str, args: Sequence[Any]) -> Any:
        return self._send_raw(conn, ("EVALSHA", sha, 0, *args))

    @staticmethod
    def _send_raw(conn: AbstractConnection, command: tuple[Any, ...]) -> Any:
        packed = [_pack(command)] if _pack is not None else conn.pack_command(*command)
        conn.send_packed_command(packed)
        return conn.read_response()

    def _forget_connections(self) -> None:
        """In a forked child: the parent's sockets are not ours to use (nor to shut down:
        redis-py shuts a socket down only in the process that opened it)."""
        self._idle = []
        self._all = []

    @property
    def location(self) -> str:
        """The server (its password masked) and the prefix of every key this store writes,
        as ``nuvom status`` shows it: ``redis://host:6379/0 keys nuvom:*``. The prefix
        holds the namespace, so a mistyped one shows as a prefix no worker uses."""
        return f"{self.masked_url} keys {self.prefix}*"

    @functools.cached_property
    def identity(self) -> tuple[Any, ...]:
        """What two stores share exactly when they are one server, database and prefix
        (computed once: ``settle_many`` compares it on every batch)."""
        kw = self.client.connection_pool.connection_kwargs
        return (kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db"), self.prefix)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``, turning a connection failure into an error naming the server."""
        try:
            return fn()
        except (redis.AuthenticationError, redis.ConnectionError, redis.TimeoutError,
                redis.ResponseError) as exc:
            explained = self.explain(exc, what)
            if explained is exc:
                raise
            raise explained from exc

    def explain(self, exc: Exception, what: str) -> Exception:
        """The error to raise for ``exc`` (met while ``what``): a
        :class:`RedisUnavailableError` that names the server and what to check, or
        ``exc`` itself when there is nothing to add (a script's own error)."""
        if isinstance(exc, redis.AuthenticationError):
            if urlsplit(self.url).password is None:
                return RedisUnavailableError(
                    f"Redis at {self.masked_url} needs a password ({exc}); put it in "
                    "[plugins.redis] url as redis://:PASSWORD@host:port/db.")
            return RedisUnavailableError(
                f"Redis at {self.masked_url} refused the credentials while {what} ({exc}). "
                "Check the password in [plugins.redis] url (or NUVOM_PLUGINS__REDIS__URL).")
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return RedisUnavailableError(
                f"cannot reach Redis at {self.masked_url} while {what} "
                f"({type(exc).__name__}: {exc}). Check that redis-server runs there and "
                "the host, port and password in [plugins.redis] url (or "
                "NUVOM_PLUGINS__REDIS__URL), and the network between.")
        if isinstance(exc, redis.ResponseError):
            if str(exc).startswith(("NOAUTH", "WRONGPASS")):
                return RedisUnavailableError(
                    f"Redis at {self.masked_url} needs a password ({exc}); put it in "
                    "[plugins.redis] url as redis://:PASSWORD@host:port/db.")
            if _is_out_of_memory(exc):
                return RedisUnavailableError(
                    f"Redis at {self.masked_url} is out of memory while {what} (it "
                    f"answered: {str(exc).rstrip('.')}). Until memory is freed it refuses "
                    "every write, workers' claims included: raise maxmemory (CONFIG SET "
                    "maxmemory, and in redis.conf), then let workers drain the queues.")
            if "DB index is out of range" in str(exc):
                return RedisUnavailableError(
                    f"Redis at {self.masked_url} has no database "
                    f"{self.client.connection_pool.connection_kwargs.get('db', 0)} ({exc}). "
                    f"Use a smaller database number in {_URL_SETTING}, or raise "
                    "`databases` in the server's redis.conf (16 by default).")
        return exc

    def startup(self) -> None:
        """Reach the server once (so a wrong URL fails at build time with a clear line)."""
        before = time.time()  # TIME reaches the server as PING did, and reads its clock
        server = self.call(self.client.time, "connecting")
        after = time.time()
        self.clock_skew = server_offset(server[0] + server[1] / 1e6, before, after)
        self.max_bulk = self.read_max_bulk()
        self.check_epoch(first=True)

    def warn_unsafe_settings(self) -> None:
        """Once per process and server, warn about server settings that lose jobs. A worker
        calls it as it starts (the plugin's ``nuvom_worker_prepare``): its log is where an
        operator looks, while a producer or a CLI command printed it at every call."""
        key = (self.url, self.prefix)
        with _checked_lock:
            if key in _checked:
                return
            _checked.add(key)
        try:
            config = self.client.config_get("maxmemory-policy")
            config.update(self.client.config_get("appendonly"))
            config.update(self.client.config_get("save"))
        except redis.ResponseError:  # CONFIG is often disabled on managed servers
            return
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            log.warning("Redis at %s has maxmemory-policy=%s: when memory runs out it evicts "
                        "keys, which silently loses queued jobs and results; set it to "
                        "noeviction (enqueues then fail with a clear error instead).",
                        self.masked_url, policy)
        if config.get("appendonly") != "yes" and not config.get("save"):
            log.warning("Redis at %s has no persistence (appendonly no, save \"\"): a "
                        "restart of the server loses every queued job and result; enable "
                        "appendonly yes with appendfsync everysec.", self.masked_url)

    def read_max_bulk(self) -> int:
        """The server's ``proto-max-bulk-len``, or :data:`DEFAULT_MAX_BULK` where ``CONFIG``
        is refused (renamed or denied on managed servers).

        Why read once, here, and not per call: the limit is checked on every record and
        message body the store sends (a ``len()`` of bytes already encoded), so it must
        cost no round trip there; a store is built when a worker or producer connects, so
        a limit changed on the server takes effect when they reconnect. Why checked at
        all: the server answers a longer value by closing the connection (see
        :class:`ValueTooLargeError`)."""
        try:
            reply = self.call(lambda: self.client.config_get("proto-max-bulk-len"),
                              "reading proto-max-bulk-len")
            return int(reply["proto-max-bulk-len"] or "")  # None, "": ValueError
        except (redis.ResponseError, KeyError, TypeError, ValueError):
            return DEFAULT_MAX_BULK

    def check_epoch(self, first: bool = False) -> None:
        """Detect a wiped server: the epoch key this store saw is gone or replaced."""
        key = self.prefix + "epoch"
        current = self.client.get(key)
        created = False
        if current is None:  # read first: at maxmemory even a SET NX of a key that exists
            mine = uuid.uuid4().hex  # is refused, and a process that starts then must get
            # as far as its first push or claim, whose error says what to do
            try:
                created = bool(self.client.set(key, mine, nx=True))
            except redis.ResponseError as exc:
                if not _is_out_of_memory(exc):
                    raise
            current = mine if created else self.client.get(key)  # None: gone, and full
        current = current.decode() if isinstance(current, bytes) else current
        if self.epoch is not None and current != self.epoch:
            log.critical("Redis at %s lost its data (epoch key %s changed): the server was "
                         "restarted without persistence or flushed; queued jobs, leases and "
                         "results under %r are gone, and held leases will report lost.",
                         self.masked_url, key, self.prefix)
        elif first and created and self.epoch is None:
            log.debug("Redis at %s: new epoch %s for %r", self.masked_url, current,
                      self.prefix)
            if self.namespace.startswith(TEST_NAMESPACE_PREFIX):
                _temporary.add((self.url, self.prefix, os.getpid()))
        self.epoch = current

    def close(self) -> None:
        conns, self._all, self._idle = self._all, [], []
        for conn in conns:
            try:
                conn.disconnect()
            except Exception:  # pragma: no cover - closing a dead socket
                pass
        for client in (self.client, self.blocking):
            try:
                client.close()
            except Exception:  # pragma: no cover - closing a dead socket
                pass


@atexit.register
def _forget_temporary() -> None:
    """Delete the keys of test namespaces (``nuvom-test-…``) this process created: the
    contract suite (``nuvom plugin test``) hands each test a fresh namespace and has no
    teardown hook for server-side keys, so without this every run would leave its jobs and
    records on the server. Only the creating process deletes, and only such namespaces: an
    app's keys are never touched. A test whose subprocesses may be the first to use the
    server (the kernel's end-to-end tests) must use another prefix and delete its keys
    itself, or a producer's or worker's exit would pull them from under the test."""
    for url, prefix, pid in sorted(_temporary):
        if pid != os.getpid():
            continue  # inherited through fork: the creator deletes
        try:
            delete_prefix(url, prefix)
        except redis.RedisError as exc:  # the server is gone: nothing left to delete
            log.warning("could not delete the test keys %s* on %s: %s", prefix,
                        mask_secret("url", url), exc)
    _temporary.clear()


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key on ``url`` that starts with ``prefix`` (taken literally). Tests'
    cleanup only: ``SCAN`` walks the whole keyspace."""
    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def build_store(settings: Mapping[str, Any], context: BackendContext) -> Store:
    """Parse ``settings``, connect and check the server: what both backends build with."""
    store = Store(RedisSettings.parse(settings), context)
    store.startup()
    return store

