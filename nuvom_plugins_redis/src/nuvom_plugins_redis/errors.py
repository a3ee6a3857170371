"""The errors that name the Redis server, and how the plugin tells them apart.

Why a module of its own: the queue, the results and the client (:mod:`.connection`) all
raise them, and a caller catches them without the client's machinery (as
``nuvom_plugins_sqlite.errors`` does for SQLite). Why they are
:class:`~nuvom_kernel.errors.EnqueueError`: an unreachable server or a wrong password is
what ``.delay()`` reports, and the kernel passes a ``NuvomError`` through unchanged, so the
message is ours: the URL with its password masked and what to check.
"""

from __future__ import annotations

import redis

from nuvom_kernel import errors
from nuvom_kernel.errors import EnqueueError, SerializationError

__all__ = ["DEFAULT_MAX_BULK", "RedisUnavailableError", "ValueTooLargeError", "too_large"]


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


def _is_out_of_memory(exc: Exception) -> bool:
    """Whether ``exc`` is the server refusing a write at ``maxmemory`` (any redis-py, any
    server: see :data:`_OUT_OF_MEMORY`)."""
    return isinstance(exc, _OUT_OF_MEMORY) or str(exc).startswith("OOM") or \
        "command not allowed when used memory" in str(exc)
