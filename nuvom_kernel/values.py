"""Setting values from TOML or the environment, converted with messages that say what is
accepted. One set of converters serves the core settings (:mod:`.config`) and the plugins'
declared settings (:mod:`.plugin_settings`), so ``5``, ``"5"`` and ``" 5 "`` mean the same
everywhere and every refusal reads alike: ``… is invalid: it must be …``.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

__all__ = ["MAX_RETENTION_SECS", "Converted", "Retention", "Seconds", "SecondsOrZero",
           "backend_name", "choice", "converter",
           "is_text", "log_level", "optional", "parse_size", "seconds", "to_bool", "to_float",
           "to_int", "to_path", "to_str", "whole", "whole_argument"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("must be a whole number (e.g. 3)")


def to_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("must be a number (e.g. 2.5)") from None
    else:
        raise ValueError("must be a number (e.g. 2.5)")
    if not math.isfinite(number):  # no setting means anything by NaN or infinity, and an
        # infinite wait or expiry fails where it is used (OverflowError, a refused PEXPIRE)
        raise ValueError(f"must be a finite number (e.g. 2.5), not {number}")
    return number


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false (in the environment: 1/0, true/false, yes/no, "
                     "on/off)")


def to_path(value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(str(value).strip())
    raise ValueError("must be a non-empty path")


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, where ``None``, an empty string or ``none`` mean ``None``."""
    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        try:
            return convert(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, or empty for none") from None

    return parse


_CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    str: to_str, int: to_int, float: to_float, bool: to_bool, Path: to_path,
    Any: lambda value: value,
}


class Converted:
    """A settings field's own converter, carried by its annotation
    (``Annotated[float, Converted(parse)]``), for a check the type alone does not say: a
    plugin's durations (:data:`Seconds`) are then refused at load, for every command, in the
    kernel's words, and its ``from_settings`` runs the same check (``PluginSchema.check``)
    instead of a copy of it."""

    __slots__ = ("parse",)

    def __init__(self, parse: Callable[[Any], Any]) -> None:
        self.parse = parse


def converter(hint: Any) -> Callable[[Any], Any] | None:
    """How to convert a value to the type ``hint``: one of the scalars above, ``X | None``
    of one, or an ``Annotated`` type carrying a :class:`Converted`; ``None`` for a type the
    kernel cannot convert an environment string to."""
    if hint in _CONVERTERS:
        return _CONVERTERS[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Annotated:
        own = [meta for meta in hint.__metadata__ if isinstance(meta, Converted)]
        return own[0].parse if own else converter(args[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 \
            and type(None) in args:
        inner = converter(next(a for a in args if a is not type(None)))
        return None if inner is None else optional(inner)
    return None


# --- the core settings' converters (:class:`nuvom_kernel.config.Settings`) ---------------

def whole_argument(call: str, value: Any, minimum: int, maximum: int) -> int | None:
    """An API argument checked as :func:`whole` checks the setting it overrides (``None``
    stays ``None``: the setting's value)."""
    if value is None:
        return None
    try:
        return whole(minimum, maximum=maximum)(value)
    except ValueError as exc:
        raise ValueError(f"{call} {exc}; got {value!r}") from None


def whole(minimum: int, *, maximum: int | None = None,
          none_ok: bool = False) -> Callable[[Any], int | None]:
    """A whole number ``>= minimum`` and ``<= maximum`` (or empty, for the default, with
    ``none_ok``). Why a maximum: ``NUVOM_MAX_WORKERS=99999999999999999999`` started
    threads until the host refused, logging an error for each, and no signal stopped it."""
    accepted = (f"must be a whole number >= {minimum} (e.g. 4)" if maximum is None else
                f"must be a whole number from {minimum} to {maximum} (e.g. 4)")
    accepted += ", or empty for the default" if none_ok else ""

    def parse(value: Any) -> int | None:
        if none_ok and optional(str)(value) is None:
            return None
        try:
            number = to_int(value)
        except ValueError:
            raise ValueError(accepted) from None
        if number < minimum or (maximum is not None and number > maximum):
            raise ValueError(accepted)
        return number

    return parse


#: The longest duration a setting takes: ``inf`` or ``1e13`` passed ``> 0`` and then failed
#: every claim on PostgreSQL ("interval out of range"); none of these needs over a year.
MAX_SECONDS = 366 * 86400


def is_text(value: str) -> bool:
    """Whether every store can hold ``value`` as text: no NUL (PostgreSQL's ``text``
    refuses it) and no lone surrogate (text decoded with ``surrogateescape``, which no UTF-8
    encoder takes). Reads a flag of the string for ASCII text; one UTF-8 encode otherwise."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True

#: The latest ``eta``: 9999-12-31 23:59:59 UTC, the last second PostgreSQL's timestamp and
#: Python's ``datetime`` both hold (an eta near ``datetime.max`` in a zone west of UTC
#: falls past it).
MAX_ETA = 253402300799.0


def seconds(*, zero_ok: bool, none_ok: bool = False, zero_means: str = "",
            most: float = MAX_SECONDS, span: str = "366 days",
            ) -> Callable[[Any], float | None]:
    """A duration in seconds, ``>= 0`` or ``> 0`` (or empty/``none`` with ``none_ok``), at
    most ``most`` (:data:`MAX_SECONDS`; ``span`` says it in words).

    :param zero_means: what ``0`` does, for the message (``"keep records until purged"``).
    """
    floor = (f">= 0{f' (0: {zero_means})' if zero_means else ''}" if zero_ok else "> 0")
    accepted = (f"must be a finite number of seconds {floor}"
                f"{' (or none)' if none_ok else ''} and at most {most:.0f} seconds ({span})")

    def parse(value: Any) -> float | None:
        if none_ok and optional(str)(value) is None:
            return None
        try:
            number = to_float(value)
        except ValueError:  # not a number, or NaN or infinity
            raise ValueError(accepted) from None
        if number < 0 or (number == 0 and not zero_ok) or number > most:
            raise ValueError(accepted)
        return number

    return parse


#: A plugin setting's duration: a finite number of seconds > 0, at most 366 days
#: (``refresh_secs: Seconds = 5.0``).
Seconds = Annotated[float, Converted(seconds(zero_ok=False))]
#: The same, where 0 is allowed (and means something the plugin documents).
SecondsOrZero = Annotated[float, Converted(seconds(zero_ok=True))]
#: Longest retention of finished records: keeping them years (an audit) is a real need, and
#: a store's expiry takes it; 100 years.
MAX_RETENTION_SECS = 100 * 365.25 * 86400
#: The default ``result_ttl_secs`` of every persistent result backend: 7 days, as long as a
#: week-old failure may still be looked into, short enough that a busy queue's records do
#: not fill the disk (Celery keeps results a day, RQ 500 s).
RESULT_TTL_SECS = 7 * 86400.0
#: A result backend's ``result_ttl_secs``: a retention, not a wait (up to 100 years; 0 keeps
#: records until ``nuvom purge results``).
Retention = Annotated[float, Converted(seconds(
    zero_ok=True, zero_means="keep records until `nuvom purge results`",
    most=MAX_RETENTION_SECS, span="100 years"))]


def choice(*accepted: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in accepted:
            raise ValueError(f"must be one of {', '.join(accepted)}")
        return text

    return parse


_UNITS = {"": 2**20, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20,
          "g": 2**30, "gb": 2**30}


def parse_size(value: Any) -> int | None:
    """A memory size in bytes from ``512MB``, ``2GB``, ``1.5g`` or a bare number of MB."""
    text = "" if value is None else str(value).strip().lower().replace(" ", "")
    if text in ("", "none"):
        return None
    digits = text.rstrip("bkmg")
    unit = text[len(digits):]
    try:
        size = float(digits) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError("must be a size such as 512MB or 2GB (a bare number means MB)"
                         ) from None
    if not size >= 1 or size == math.inf:  # (NaN too) a fraction of a byte would be 0
        raise ValueError("must be a finite size of at least 1 byte, such as 512MB or 2GB")
    return int(size)


def backend_name(value: Any) -> str:
    """A registered name (a backend's, or the serializer's), as the plugins declare it."""
    text = str(value).strip().lower()
    if not text:
        raise ValueError("must be a non-empty name of an installed plugin's backend or "
                         "serializer (`nuvom plugin list` shows them)")
    return text


def log_level(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return text
