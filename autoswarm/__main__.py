"""``python -m autoswarm`` is the ``autoswarm`` command."""

from autoswarm.cli import main

main()
