"""Settings, the client, errors that name the server, and the startup checks.

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
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote, urlsplit

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from nuvom_kernel import errors
from nuvom_kernel.backends import BackendContext
from nuvom_kernel.clock import server_offset
from nuvom_kernel.config import mask_secret
from nuvom_kernel.errors import ConfigError, EnqueueError, SerializationError
from nuvom_kernel.plugin_settings import plugin_env_var, schema_of
from nuvom_kernel.values import RESULT_TTL_SECS, Converted, Retention, Seconds, seconds

try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs then
    _pack = None  # type: ignore[assignment]

__all__ = ["DEFAULT_MAX_BULK", "RESERVED_SEGMENTS", "LuaScript", "RedisSettings",
           "RedisUnavailableError", "Store", "ValueTooLargeError", "check_namespace",
           "delete_prefix", "too_large"]

log = logging.getLogger("nuvom.redis")

T = TypeVar("T")
_checked: set[tuple[str, str]] = set()  # (url, prefix) whose server was checked here
_checked_lock = threading.Lock()
#: Namespaces of test runs (see :func:`_forget_temporary`) get this prefix.
TEST_NAMESPACE_PREFIX = "nuvom-test-"
#: (url, key prefix, pid) of test namespaces this process created, deleted at its exit.
_temporary: set[tuple[str, str, int]] = set()
#: The first segment of every key after ``<key_prefix>:`` (layout: :mod:`.scripts`): the
#: queue's ``j``, ``q``, ``queues``, ``seq``, ``wake``, ``reaper``, ``push``,
#: ``quarantine``; the records' ``r``, ``ri``, ``rx``, ``sched``, ``w``, ``workers``; and
#: ``epoch``. Why a namespace may be none of them: keys are ``<key_prefix>:<namespace>:…``
#: with nothing escaped, so an app without a namespace that stores job ``epoch`` (hash
#: ``<key_prefix>:j:epoch``) and an app with namespace ``j`` (epoch marker
#: ``<key_prefix>:j:epoch``) wrote the same key, and both failed with raw ``WRONGTYPE``
#: errors. Keys are not escaped instead because that would move every existing key.
RESERVED_SEGMENTS = frozenset({
    "epoch", "j", "push", "q", "quarantine", "queues", "r", "reaper", "ri", "running", "rx",
    "sched", "seq", "w", "wake", "workers"})
_KEY_PREFIX_SETTING = "[plugins.redis] key_prefix (NUVOM_PLUGINS__REDIS__KEY_PREFIX)"


class RedisUnavailableError(EnqueueError):
    """The Redis server could not be reached, refused the password, has no such database,
    or ran out of memory."""


#: Redis's default ``proto-max-bulk-len`` (512 MB): the longest single value (one argument
#: of a command) the server reads. Assumed where ``CONFIG GET`` is refused.
DEFAULT_MAX_BULK = 512 * 2**20


class ValueTooLargeError(EnqueueError, SerializationError):
    """A job's message or record encodes to more than the server's ``proto-max-bulk-len``.

    Why a class of its own, and why both bases: Redis answers such a value by closing the
    connection (after a protocol error that a client still writing the value never reads),
    so redis-py resent it, then the plugin reported "cannot reach Redis" (or passed on a
    bare "Protocol error: invalid bulk length"). The worker's settler took that for a store
    that is down and retried the whole batch, and the job (with every job settled beside
    it) ran again at each visibility timeout until the delivery limit failed it as crashed;
    ``.delay()`` resent the value for ~40 s and blamed the network. Refused before it is
    sent, it is a :class:`~nuvom_kernel.errors.SerializationError` — one of the settler's
    ``UNSTORABLE`` errors, so only that job is failed, with this message, and its
    neighbours are stored — and an :class:`~nuvom_kernel.errors.EnqueueError`, what callers
    of ``.delay()`` catch (the kernel passes it through unchanged, so the message is ours).
    """


def too_large(what: str, size: int, limit: int) -> ValueTooLargeError:
    """The refusal of one value of ``size`` bytes over ``limit`` (the server's
    ``proto-max-bulk-len``), ``what`` naming the job and the value. Only built when
    refusing: the hot path is a ``len()`` and a comparison."""
    return ValueTooLargeError(errors.too_large(
        what, f"the Redis server takes in one value (its proto-max-bulk-len: "
        f"{errors.byte_size(limit)}; the server would drop the connection)", size=size,
        advice=", or raise proto-max-bulk-len on the server (CONFIG SET proto-max-bulk-len, "
        "and in redis.conf; workers and producers read it when they connect)"))


#: What redis-py raises for an ``OOM`` reply (since redis-py#2778, mid-2023; ``getattr``
#: for a release without it). Its text has the ``OOM`` prefix stripped, so
#: :meth:`Store.explain` knows it by class; before it, a plain ``ResponseError`` kept the
#: prefix, and a server before 7.0 nests the reply of a script's write in its own error.
_OUT_OF_MEMORY: tuple[type[Exception], ...] = tuple(
    c for c in (getattr(redis.exceptions, "OutOfMemoryError", None),) if c is not None)
#: Where the URL is set, for messages that say what to change.
_URL_SETTING = "[plugins.redis] url (or NUVOM_PLUGINS__REDIS__URL)"
_URL_EXAMPLE = ("redis://[:PASSWORD@]HOST:PORT/DB, such as redis://127.0.0.1:6379/0 "
                "(rediss:// for TLS, unix:///path/to/redis.sock?db=0 for a socket)")


#: Shortest ``result_ttl_secs`` above 0: ``PEXPIRE`` takes whole milliseconds, and one of
#: 0 deletes the key at once, so a shorter TTL deleted every record as it was stored.
_MIN_TTL_SECS = 0.001


@attrs.frozen
class RedisSettings:
    """The ``[plugins.redis]`` table (each key overridable by ``NUVOM_PLUGINS__REDIS__<KEY>``).

    :param url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS,
        ``unix:///path?db=0`` for a socket).
    :param key_prefix: first part of every key: two apps on one server never see each
        other's jobs (no spaces, no ``:``: see :func:`_check_key_prefix`).
    :param result_ttl_secs: how long a finished job's record is kept (0: until purged).
    :param visibility_timeout_secs: lease length; default the kernel's setting.
    :param socket_timeout_secs: longest wait for a reply (a dead link is noticed by then).
    :param socket_connect_timeout_secs: longest wait to connect.
    :param health_check_interval_secs: an idle connection is PINGed before reuse after this.
    :param block_secs: longest blocking wait for a wake-up: what a lost wake-up can cost.
    :param reap_interval_secs: how often a worker process recovers expired leases and due
        delayed jobs when nothing claims (under a lock, so one process per tick does it).

    Every ``*_secs`` is a finite number of seconds of at most 366 days
    (``result_ttl_secs``: a :data:`~nuvom_kernel.values.Retention`, 100 years: ``PEXPIREAT``
    takes it), checked at load and by
    :meth:`parse`. Why a limit: ``inf`` and ``1e30`` passed a check of ``> 0`` and then
    failed where they are used, long after startup: ``PEXPIRE`` refused them (no outcome
    could be stored, so every job ran again and again), a socket timeout or a wait beyond
    the platform's ``time_t`` raised ``OverflowError`` (``nuvom status`` crashed).
    """

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "nuvom"
    result_ttl_secs: Retention = RESULT_TTL_SECS
    visibility_timeout_secs: Seconds | None = None
    socket_timeout_secs: Seconds = 10.0
    socket_connect_timeout_secs: Seconds = 5.0
    health_check_interval_secs: Annotated[float, Converted(seconds(
        zero_ok=True, zero_means="no health check"))] = 15.0
    block_secs: Seconds = 5.0
    reap_interval_secs: Seconds = 1.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> RedisSettings:
        """Validate a settings table; every error names the key and what it accepts (the
        kernel's checks of the declared types, :meth:`PluginSchema.check`, then this
        plugin's own)."""
        parsed = cls(**schema_of("redis", cls).check(settings))
        _check_url(parsed.url)
        _check_key_prefix(parsed.key_prefix)
        if 0 < parsed.result_ttl_secs < _MIN_TTL_SECS:
            raise ConfigError(
                f"[plugins.redis] result_ttl_secs={parsed.result_ttl_secs!r} "
                f"({plugin_env_var('redis', 'result_ttl_secs')}) is invalid: a TTL above 0 "
                f"must be at least {_MIN_TTL_SECS} (1 ms): PEXPIRE counts whole "
                "milliseconds, and a shorter TTL would delete each job's record as it is "
                "stored. Set 0 to keep records until purged, or at least 0.001.")
        return parsed


def _check_key_prefix(prefix: str) -> None:
    """Refuse a key prefix that is empty or has a space. A ``:`` is allowed (``myapp:nuvom``
    is a common Redis habit, and deployments use it): prefix ``a:b`` without a namespace
    and prefix ``a`` with namespace ``b`` write the same keys, which the README says."""
    problem = ("it is empty" if not prefix
               else "it contains a space" if any(c.isspace() for c in prefix) else None)
    if problem is not None:
        raise ConfigError(f"{_KEY_PREFIX_SETTING} = {prefix!r} is invalid: {problem}. Use a "
                          "non-empty name without spaces, such as 'nuvom' or 'myapp-nuvom'.")


def check_namespace(namespace: str) -> None:
    """Refuse a kernel namespace (``NUVOM_NAMESPACE``) whose keys could be another
    namespace's on the same server and prefix: one with a ``:``-separated part that is a
    key segment the plugin itself uses (:data:`RESERVED_SEGMENTS`). With namespace ``j``,
    the epoch marker ``<prefix>:j:epoch`` was the hash of job ``epoch`` of an app without a
    namespace; namespace ``a:j`` would write where namespace ``a`` keeps its jobs. Other
    ``:`` are allowed (see :func:`_check_key_prefix`); empty (no namespace) is fine. Why
    here and not in the kernel: the kernel's namespace also names PostgreSQL schemas, which
    have rules of their own; these rules are this key layout's."""
    parts = namespace.split(":") if namespace else []
    taken = [part for part in parts if part in RESERVED_SEGMENTS]
    if taken:
        raise ConfigError(
            f"NUVOM_NAMESPACE={namespace!r} ([settings] namespace) cannot be used with the "
            f"Redis plugin: {taken[0]!r} is a key segment it uses itself (" +
            ", ".join(sorted(RESERVED_SEGMENTS)) + "), so this namespace's keys could be "
            f"another's on the same key_prefix (e.g. <key_prefix>:{taken[0]}:...). Choose "
            "another namespace, such as "
            f"{':'.join(p + '-app' if p in RESERVED_SEGMENTS else p for p in parts)!r}.")


def _is_out_of_memory(exc: Exception) -> bool:
    """Whether ``exc`` is the server refusing a write at ``maxmemory`` (any redis-py, any
    server: see :data:`_OUT_OF_MEMORY`)."""
    return isinstance(exc, _OUT_OF_MEMORY) or str(exc).startswith("OOM") or \
        "command not allowed when used memory" in str(exc)


def _check_url(url: str) -> None:
    """Read ``url`` as redis-py will (its pool's arguments, and a connection built from
    them without connecting), so that a URL it cannot use fails here, as a
    :class:`ConfigError` naming the setting, and not later as a traceback from inside
    redis-py (a port that is not a number, an unknown ``?option``) or a server error.

    One mistake redis-py lets through is refused too: a database part that is not a
    number, which it silently reads as another database (``/abc`` as 0, ``/0/1`` as 1)."""
    def invalid(problem: str) -> ConfigError:
        return ConfigError(f"{_URL_SETTING} = {_masked_url(url)!r} is invalid: "
                           f"{_scrub(problem, url)}. Use {_URL_EXAMPLE}.")

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise invalid("it must start with redis://, rediss:// or unix://")
    try:
        pool = redis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)  # an unknown ?option fails here
    except (TypeError, ValueError) as exc:
        raise invalid(f"redis-py cannot read it ({exc})") from None
    db = pool.connection_kwargs.get("db", 0)
    if not isinstance(db, int) or db < 0:
        raise invalid(f"the database {db!r} is not a non-negative integer")
    if not url.startswith("unix://"):  # a socket URL's path is the socket's
        part = unquote(urlsplit(url).path).strip("/")
        if part and not re.fullmatch("[0-9]+", part):
            raise invalid(f"the database part /{part} is not a non-negative integer "
                          "(redis-py would silently use another database)")


def _masked_url(url: str) -> str:
    """``url`` with its password masked, also when it is too malformed for
    :func:`mask_secret` to find the password (it then returns the text unchanged)."""
    masked = str(mask_secret("url", url))
    userinfo = _userinfo(url)
    if masked == url and ":" in userinfo:
        masked = url.replace(userinfo + "@", userinfo.partition(":")[0] + ":***@", 1)
    return masked


def _scrub(text: str, url: str) -> str:
    """``text`` (an error redis-py or ``urllib`` raised about ``url``, which may quote the
    URL's host part) without the URL's password."""
    userinfo = _userinfo(url)
    if ":" in userinfo and userinfo in text:
        text = text.replace(userinfo, userinfo.partition(":")[0] + ":***")
    return text


def _userinfo(url: str) -> str:
    """The ``user:password`` part of ``url``, found by text alone (no parsing to fail)."""
    rest = url.partition("://")[2]
    netloc = re.split("[/?#]", rest, maxsplit=1)[0]
    return netloc.rpartition("@")[0]


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
            "socket_keepalive": True,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 4),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        }
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
        return f"{_masked_url(self.url)} keys {self.prefix}*"

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

