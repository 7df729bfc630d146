"""``python -m ecd``: the same as the ``ecd`` command."""

from .cli import main

main()
