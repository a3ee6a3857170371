"""Static task discovery: find ``@task`` functions by reading source, never importing it."""

from nuvom_plugins.discovery.scanner import AstDiscoverer

__all__ = ["AstDiscoverer"]
