"""Plugins' own settings: ``[plugins.<name>]`` tables and ``NUVOM_PLUGINS__<NAME>__<KEY>``.

A plugin declares its settings once (hook ``nuvom_plugin_settings``: an attrs class or a
dataclass per table), covering every backend it registers, so a key the queue and the
result backend share is declared once. Environment values are strings; the declared types
convert them (:mod:`.values`) and an unknown key or a bad value is a ``PluginConfigError``
naming the table or variable, the key and the valid keys. ``nuvom config`` prints each
setting with its source, secrets masked (:func:`mask_secret`). A variable meant as one but
misspelt (``NUVOM_PLUGINS_SQLITE__PATH``) is named with its right form
(:func:`plugin_variable_hint`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.values import converter

__all__ = [
    "PLUGIN_ENV_PREFIX",
    "PluginSchema",
    "PluginSetting",
    "mask_secret",
    "plugin_env",
    "plugin_env_var",
    "plugin_variable_hint",
    "schema_of",
    "scrub_secret",
]

#: ``NUVOM_PLUGINS__<NAME>__<KEY>`` overrides ``[plugins.<name>] <key>``.
PLUGIN_ENV_PREFIX = "NUVOM_PLUGINS__"


def plugin_env_var(name: str, key: str) -> str:
    """The variable that overrides ``[plugins.<name>] <key>``."""
    return f"{PLUGIN_ENV_PREFIX}{name.upper()}__{key.upper()}"


@attrs.frozen
class PluginSchema:
    """The typed keys of one ``[plugins.<name>]`` table, read from an attrs class or a
    dataclass (its fields' annotations; defaults stay the plugin's business).

    One schema covers every backend a plugin registers under that name, so a key the queue
    and the result backend share (``path``) is declared once.
    """

    name: str
    source: type
    fields: dict[str, Callable[[Any], Any]]

    @classmethod
    def from_class(cls, name: str, source: type) -> PluginSchema:
        """:raises PluginConfigError: ``source`` is not an attrs class or dataclass, or a
        field has a type the kernel cannot convert an environment string to."""
        if attrs.has(source):
            names = [f.name for f in attrs.fields(source)]
        elif dataclasses.is_dataclass(source):
            names = [f.name for f in dataclasses.fields(source)]
        else:
            raise PluginConfigError(
                f"the settings schema of [plugins.{name}] must be an attrs class or a "
                f"dataclass with typed fields, got {source!r}")
        try:
            hints = typing.get_type_hints(source, include_extras=True)
        except Exception as exc:  # a name imported under TYPE_CHECKING only, a typo
            raise PluginConfigError(
                f"the settings schema of [plugins.{name}] ({source.__qualname__}) has a type "
                f"annotation that cannot be evaluated: {exc!r}. Import what the annotations "
                "name at run time, not only under TYPE_CHECKING") from exc
        fields = {}
        for field in names:
            convert = converter(hints.get(field, Any))
            if convert is None:
                raise PluginConfigError(
                    f"the settings schema of [plugins.{name}] ({source.__qualname__}) gives "
                    f"{field!r} the type {hints[field]!r}; use str, int, float, bool, Path, "
                    f"Any, one of them | None, or Annotated[..., Converted(parse)] "
                    f"(nuvom_kernel.values; e.g. values.Seconds)")
            fields[field] = convert
        return cls(name=name, source=source, fields=fields)

    def check_key(self, key: str, where: str) -> None:
        """:raises PluginConfigError: ``key`` is not declared (``where``: its table or
        variable), naming the valid keys."""
        if key not in self.fields:
            raise PluginConfigError(
                f"{where}: {key!r} is not a setting of plugin {self.name!r}. Valid keys: "
                f"{self._valid()}.")

    def _valid(self) -> str:
        return ", ".join(sorted(self.fields)) or "none (this plugin takes no settings)"

    def convert(self, key: str, value: Any, where: str, *, said: str = "") -> Any:
        """``value`` as the declared type of ``key``.

        :param where: the table or variable it came from, for the error message.
        :param said: how the message names the value (default ``<where>: <key>=<value>``).
        :raises PluginConfigError: an unknown key or a value of the wrong type.
        """
        self.check_key(key, where)
        try:
            return self.fields[key](value)
        except ValueError as exc:
            raise PluginConfigError(
                f"{said or f'{where}: {key}={value!r}'} is invalid: it {exc}. Valid keys of "
                f"[plugins.{self.name}]: {self._valid()}.") from None

    def check(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """A whole table converted as the kernel converts it at load (``None``: the
        default, left out), for a backend built from a plain mapping (``from_settings``
        called by a test or a tool): one set of checks and messages, not a copy in the
        plugin.

        :raises PluginConfigError: naming the key, its variable and what it accepts.
        """
        table, out = f"[plugins.{self.name}]", {}
        for key, value in settings.items():
            if value is None and key in self.fields:
                continue
            out[key] = self.convert(key, value, table, said=(
                f"{table} {key}={value!r} ({plugin_env_var(self.name, key)})"))
        return out


_SCHEMAS: dict[tuple[str, type], PluginSchema] = {}


def schema_of(name: str, source: type) -> PluginSchema:
    """:meth:`PluginSchema.from_class`, built once per settings class."""
    schema = _SCHEMAS.get((name, source))
    if schema is None:
        schema = _SCHEMAS[(name, source)] = PluginSchema.from_class(name, source)
    return schema


_SECRET_KEY = re.compile(r"(password|passwd|pwd|secret|token|api_?key)", re.I)
#: A DSN's ``password=`` field: libpq's quoted form (``'...'``, with ``\'`` and ``\\``
#: escapes) or a bare word.
_DSN_PASSWORD = re.compile(r"(\b(?:password|passwd|pwd)\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)",
                           re.I)
#: A URL's query parameter of that name (``redis://host/0?password=...``, which redis-py
#: and libpq both accept), up to the next ``&`` or ``#``.
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#]*", re.I)


def mask_secret(key: str, value: Any) -> Any:
    """``value`` fit to print: the password of a URL (its user part and a ``password=``
    query parameter) or of a key=value DSN replaced by ``***``, and the whole value of a
    key that names a secret (``password``, ``token``, ...). A URL that does not parse is
    masked whole: what cannot be read cannot be shown safely."""
    if value is None:
        return None
    if _SECRET_KEY.search(key):
        return "***"
    text = str(value)
    if "://" not in text:  # a key=value DSN
        return _DSN_PASSWORD.sub(r"\1***", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    scheme, _, rest = text.partition("://")
    user = _user_part(text)
    if ":" in user and any(c in user for c in "/?#"):  # a password a parser splits
        return f"{scheme}://{user.partition(':')[0]}:***@{rest[len(user) + 1:]}"
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return f"{scheme}://***"
    if password is None:
        return text
    user, _, host = parts.netloc.rpartition("@")
    username = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{username}:***@{host}"))


def _user_part(url: str) -> str:
    """The ``user:password`` of ``url`` found by text alone, up to its last ``@``: a
    password holding ``#``, ``?`` or ``/`` is read by a URL parser as a fragment, a query
    or a path, whose text it then printed whole (libpq and redis-py accept ``#`` and
    ``?``). ``""`` when there is none, or the URL has no authority (``postgresql:///db?
    user=a@b``)."""
    rest = url.partition("://")[2]
    user = rest.rpartition("@")[0]
    return "" if user.startswith("/") else user


def scrub_secret(text: str, url: str) -> str:
    """``text`` (an error a client library raised about ``url``, which may quote the URL,
    its host part or a token of it) with the URL's user part and password masked, also
    the pieces a parser cut the password into (``SeCr`` of ``SeCr#tPW``)."""
    user = _user_part(url)
    password = user.partition(":")[2]
    pieces = {user, password, *(p for p in re.split(r"[/?#@:]", password) if len(p) >= 3)}
    for piece in sorted(filter(None, pieces), key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


@attrs.frozen
class PluginSetting:
    """One effective ``[plugins.<name>]`` value and where it came from (``nuvom config``)."""

    plugin: str
    key: str
    value: Any
    env: str
    source: str  # "env NUVOM_PLUGINS__...", "<file> [plugins.<name>]" or "default"



def plugin_env(env: Mapping[str, str]) -> dict[str, dict[str, tuple[str, str]]]:
    """``NUVOM_PLUGINS__<NAME>__<KEY>`` variables: name -> key -> (variable, value), both
    lower-cased; whether the key exists is checked once the plugin declared its settings."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for var in sorted(env):
        if not var.upper().startswith(PLUGIN_ENV_PREFIX):
            continue
        name, sep, key = var[len(PLUGIN_ENV_PREFIX):].partition("__")
        if not sep or not name or not key or "__" in key:
            raise PluginConfigError(
                f"environment variable {var} is not a plugin setting: the form is "
                f"{PLUGIN_ENV_PREFIX}<NAME>__<KEY> with two underscores before each part, "
                f"e.g. {PLUGIN_ENV_PREFIX}SQLITE__PATH=/data/q.db for [plugins.sqlite] path. "
                f"Rename or unset it.")
        table = found.setdefault(name.lower(), {})
        other = table.get(key.lower())
        if other is not None:  # one would silently win (the last in sorted order)
            raise PluginConfigError(
                f"environment variables {other[0]} and {var} set the same plugin setting "
                f"([plugins.{name.lower()}] {key.lower()}): names are not case-sensitive. "
                "Unset one of them.")
        table[key.lower()] = (var, env[var])
    return found


def plugin_variable_hint(var: str) -> str:
    """`` (did you mean NUVOM_PLUGINS__LISTQ__PATH, for [plugins.listq] path?)`` for a
    variable that looks meant for a plugin setting with the wrong separator after
    ``NUVOM_PLUGINS`` (``NUVOM_PLUGINS_LISTQ__PATH``, ``NUVOM_PLUGIN__LISTQ__PATH``); the
    form itself when the rest does not split into a name and a key; else nothing.

    Why: ``did_you_mean`` compares with the settings' variables only, so such a typo was
    called no setting without a word about the plugin setting it was meant to be.
    """
    upper = var.upper()
    if not upper.startswith("NUVOM_PLUGIN"):
        return ""
    rest = var[len("NUVOM_PLUGIN"):]
    rest = rest[1:] if rest[:1] in ("S", "s") else rest
    rest = rest.lstrip("_")
    name, sep, key = rest.partition("__")
    if sep and name and key and "__" not in key and not key.startswith("_"):
        return (f" (did you mean {PLUGIN_ENV_PREFIX}{rest}, for "
                f"[plugins.{name.lower()}] {key.lower()}?)")
    return (f" (a plugin setting is {PLUGIN_ENV_PREFIX}<NAME>__<KEY>, with two underscores "
            f"before each part, e.g. {PLUGIN_ENV_PREFIX}SQLITE__PATH for [plugins.sqlite] "
            "path)")
