"""Entry point ``nuvom: discovery``: registers the AST discoverer (name ``ast``)."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.discovery import Discoverer
from nuvom_plugins.discovery.scanner import AstDiscoverer


@hookimpl
def nuvom_register_discoverers() -> list[type[Discoverer]]:
    return [AstDiscoverer]
