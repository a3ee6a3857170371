"""A call's arguments checked against its task's signature when the job is enqueued.

Why at enqueue: ``add.delay(1)`` for ``add(x, y)`` was stored without a word, and the job
failed on a worker (``TypeError``, retried up to its ``retries``) long after the caller's
line had run; Celery checks a call's arguments the same way when it is sent. The common
call, positional arguments only to a function without ``*args``, costs two comparisons;
anything else is bound by :meth:`inspect.Signature.bind`, which says what is wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Arguments"]

_BY_POSITION = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Arguments:
    """The signature of one task's function, and how many positional arguments a call may
    give without binding (``fewest`` to ``most``; ``most`` is ``-1`` where the fast path
    does not apply: ``*args``, keyword-only parameters without a default)."""

    __slots__ = ("_signature", "fewest", "most", "params")

    def __init__(self, fn: Callable[..., Any]) -> None:
        #: the names of the parameters a positional argument fills, in order, through
        #: ``functools.wraps`` to the decorated function (unique ids and error messages name
        #: arguments by them, as they always have)
        self.params = [p.name for p in inspect.signature(fn).parameters.values()
                       if p.kind in _BY_POSITION]
        # What is checked is what the worker calls: a decorator under @task may supply an
        # argument itself (``fn("session", *args)``), so the function it wraps would refuse
        # calls the wrapper takes. A wrapper of (*args, **kwargs) is not checked, as Celery
        # does not look past it either.
        try:
            self._signature = inspect.signature(fn, follow_wrapped=False)
        except (TypeError, ValueError):  # a staticmethod object has none of its own
            self._signature = inspect.signature(fn)
        parameters = list(self._signature.parameters.values())
        self.fewest = sum(1 for p in parameters
                          if p.kind in _BY_POSITION and p.default is p.empty)
        self.most = sum(1 for p in parameters if p.kind in _BY_POSITION)
        if any(p.kind is p.VAR_POSITIONAL or (p.kind is p.KEYWORD_ONLY and p.default is p.empty)
               for p in parameters):
            self.most = -1

    def check(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              outcome: str = "nothing was enqueued") -> None:
        """:raises TypeError: the call does not fit the function, naming the task, what is
        wrong and the signature, then ``outcome``."""
        if not kwargs and self.fewest <= len(args) <= self.most:
            return
        if not all(type(key) is str for key in kwargs):  # the wire conversion names the key
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            problem = str(exc)
            params = self._signature.parameters
            unknown = [key for key in kwargs if key not in params]
            if unknown and "unexpected keyword" not in problem and not any(
                    p.kind is p.VAR_KEYWORD for p in params.values()):
                # bind() names its first problem only: "missing 'y'" for {"z": 3}, when the
                # caller misspelt y as z
                problem += f"; and it has no parameter {', '.join(map(repr, unknown))}"
            bare = self._signature.replace(  # the names, not annotations quoted as strings
                parameters=[p.replace(annotation=p.empty)
                            for p in self._signature.parameters.values()],
                return_annotation=inspect.Signature.empty)
            raise TypeError(f"task {task!r} cannot take these arguments: {problem}. Its "
                            f"signature is {task}{bare}; {outcome}") from None
