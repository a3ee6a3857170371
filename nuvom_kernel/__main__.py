"""``python -m nuvom_kernel`` is the ``nuvom`` command."""

from nuvom_kernel.cli import main

main()
