"""The ``[plugins.redis]`` settings (:class:`RedisSettings`) and the checks that refuse a
URL, key prefix or namespace before anything connects.

Why a module of its own: what a setting may hold, and the message that says what to
change, are read at load time and by ``nuvom`` commands that never reach a server; the
client that uses them is :mod:`.connection`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import attrs
import redis

from nuvom_kernel.config import mask_secret
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.plugin_settings import plugin_env_var, schema_of, scrub_secret
from nuvom_kernel.values import RESULT_TTL_SECS, Converted, Retention, Seconds, seconds

__all__ = ["RESERVED_SEGMENTS", "RedisSettings", "check_namespace"]

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

def _check_url(url: str) -> None:
    """Read ``url`` as redis-py will (its pool's arguments, and a connection built from
    them without connecting), so that a URL it cannot use fails here, as a
    :class:`ConfigError` naming the setting, and not later as a traceback from inside
    redis-py (a port that is not a number, an unknown ``?option``) or a server error.

    One mistake redis-py lets through is refused too: a database part that is not a
    number, which it silently reads as another database (``/abc`` as 0, ``/0/1`` as 1)."""
    def invalid(problem: str) -> ConfigError:
        return ConfigError(f"{_URL_SETTING} = {mask_secret('url', url)!r} is invalid: "
                           f"{scrub_secret(problem, url)}. Use {_URL_EXAMPLE}.")

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
