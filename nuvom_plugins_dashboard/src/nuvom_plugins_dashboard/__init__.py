"""nuvom-plugins-dashboard: a web dashboard over any queue and result backend.

``nuvom dashboard`` serves it; :func:`create_app` builds the ASGI app for embedding (mount it
in your own server behind your own authentication).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def create_app(kernel: Any, *, token: str | None = None, read_only: bool = False,
               allowed_hosts: Iterable[str] | str = ()) -> Any:
    """The dashboard's Starlette app over ``kernel`` (see :mod:`.app`); without a token
    it answers only to loopback host names and ``allowed_hosts``."""
    from nuvom_plugins_dashboard.app import create_app as build

    return build(kernel, token=token, read_only=read_only, allowed_hosts=allowed_hosts)
