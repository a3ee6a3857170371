"""Safe payload encoding: JSON with typed extensions, never pickle.

Job payloads are data, not code. The default codec is JSON plus a small set of tagged types
that JSON would otherwise flatten or reject (datetime, date, time, timedelta, UUID, Decimal,
bytes, tuple, set, frozenset, and dicts whose keys are not strings). A tagged value is a
one-key dict ``{"__nuvom__": [tag, payload]}``; a user dict that happens to use that key is
escaped, so every value round-trips exactly.

Other codecs come from plugins through ``nuvom_register_serializers``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import StepFailed

__all__ = ["JsonSerializer", "Serializer", "from_wire", "to_wire"]

TAG = "__nuvom__"
#: The types JSON holds as they are (checked by exact type: subclasses are converted).
PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})

_ENCODERS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    dt.datetime: ("datetime", lambda v: v.isoformat()),
    dt.date: ("date", lambda v: v.isoformat()),
    dt.time: ("time", lambda v: v.isoformat()),
    dt.timedelta: ("timedelta", lambda v: [v.days, v.seconds, v.microseconds]),
    uuid.UUID: ("uuid", str),
    decimal.Decimal: ("decimal", str),
    bytes: ("bytes", lambda v: base64.b64encode(v).decode("ascii")),
    # a workflow step's failure handed on by on_failure("continue") (a process pool child
    # receives its arguments encoded)
    StepFailed: ("step_failed", lambda v: [v.job_id, v.error_type, v.message]),
}
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "bytes": lambda v: base64.b64decode(v.encode("ascii")),
    "step_failed": lambda v: StepFailed(*v),
}


def to_wire(value: Any, path: str = "value") -> Any:
    """Turn ``value`` into JSON-native data; ``path`` names it in the error if it can't be."""
    kind = type(value)
    if kind in PLAIN_TYPES:
        if kind is float and value - value:  # NaN or ±inf (x - x is 0.0 for the others):
            # not JSON; say so here, naming the value, not in a store's encoder later
            raise SerializationError(
                f"{path} is {'NaN' if value != value else value}, which JSON cannot carry")
        return value
    if kind is list:
        return [to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: to_wire(v, f"{path}[{k!r}]") for k, v in value.items()}
        items = [[to_wire(k, f"{path}<key>"), to_wire(v, f"{path}[{k!r}]")]
                 for k, v in value.items()]
        return {TAG: ["dict", items]}
    if kind is tuple:
        return {TAG: ["tuple", [to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]]}
    if kind is set:
        return {TAG: ["set", [to_wire(v, f"{path}<item>") for v in value]]}
    if kind is frozenset:  # its own tag: a set of sets, or a dict keyed by one, holds these
        return {TAG: ["frozenset", [to_wire(v, f"{path}<item>") for v in value]]}
    encoder = _ENCODERS.get(kind)
    if encoder is None:  # subclasses (e.g. a datetime subclass) encode as their base type
        encoder = next((e for t, e in _ENCODERS.items() if isinstance(value, t)), None)
    if encoder is not None:
        tag, encode = encoder
        return {TAG: [tag, encode(value)]}
    raise SerializationError(
        f"{path} has type {kind.__module__}.{kind.__qualname__}, which Nuvom cannot encode "
        f"as job data. {'Return' if 'return value' in path else 'Pass'} plain data (str, "
        "int, float, bool, None, list, dict, tuple, set, "
        "datetime, date, time, timedelta, UUID, Decimal, bytes) — for example an id instead "
        "of the object — or register a serializer plugin."
    )


def from_wire(value: Any) -> Any:
    """Inverse of :func:`to_wire`. Plain items are taken as they are, without a call each:
    a worker decodes every job's arguments (a list of two ints: 0.9 → 0.3 µs)."""
    kind = type(value)
    if kind is list:
        return [v if type(v) in PLAIN_TYPES else from_wire(v) for v in value]
    if kind is dict:
        if len(value) == 1 and TAG in value:
            tag, payload = value[TAG]
            if tag == "tuple":
                return tuple(from_wire(v) for v in payload)
            if tag == "set":
                return {from_wire(v) for v in payload}
            if tag == "frozenset":
                return frozenset(from_wire(v) for v in payload)
            if tag == "dict":
                return {from_wire(k): from_wire(v) for k, v in payload}
            decoder = _DECODERS.get(tag)
            if decoder is None:
                raise SerializationError(f"unknown tagged type {tag!r} in payload")
            return decoder(payload)
        return {k: v if type(v) in PLAIN_TYPES else from_wire(v) for k, v in value.items()}
    return value


class Serializer:
    """Turns a job's data into bytes and back. Registered classes are keyed by ``name``."""

    name: ClassVar[str]

    def dumps(self, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def loads(self, payload: bytes) -> dict[str, Any]:
        raise NotImplementedError


def _not_a_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (Nuvom writes no NaN or Infinity)")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, refused where it overflows a float
    (``1e999`` is infinity, as the ``Infinity`` token is). A Python call per such number
    (~0.1 µs); integers, which most arguments are, do not come here."""
    value = float(text)
    if value - value:  # inf - inf is NaN, truthy; a finite value gives 0.0
        raise ValueError(f"{text} is out of range for a float (Nuvom writes no Infinity)")
    return value


class JsonSerializer(Serializer):
    """The default: compact UTF-8 JSON of already wire-safe data."""

    name = "json"

    # One encoder for every call: json.dumps with options builds a new one each time.
    _encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

    def dumps(self, data: dict[str, Any]) -> bytes:
        return self._encode(data).encode()

    # NaN and ±Infinity (written so, or as 1e999) are refused as the encoder refuses them:
    # no body Nuvom wrote holds one, and one that does (a hand edit, another tool's
    # json.dumps) would run a task with an argument no producer could have sent, whose
    # retry could then not be encoded.
    _decoder = json.JSONDecoder(parse_constant=_not_a_constant, parse_float=_finite)
    # json's C scanner, called directly: json.loads reaches it through two Python calls and
    # two regular expressions (whitespace around the document, which our bodies never have):
    # ~8,000 instructions per job of a drain (benchmarks/instructions.py, Python 3.11).
    _scan: Callable[[str, int], tuple[Any, int]] = staticmethod(
        _decoder.scan_once)  # type: ignore[attr-defined]

    def loads(self, payload: bytes) -> dict[str, Any]:
        try:  # str, not bytes: json.loads would sniff the encoding of bytes on every call
            text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
            try:
                data, end = self._scan(text, 0)
            except StopIteration:  # not a value at 0 (leading whitespace, or not JSON)
                end = -1
            if end != len(text):  # the whole decoder decides (whitespace) or says why not
                data = self._decoder.decode(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SerializationError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SerializationError(f"payload is JSON {type(data).__name__}, not an object")
        return data
