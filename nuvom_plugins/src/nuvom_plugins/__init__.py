"""Nuvom's built-in plugins, registered through the ``nuvom`` entry-point group like any other."""

__version__ = "0.1.0"
