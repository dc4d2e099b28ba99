"""``python -m cli``: the ``curate`` command line."""

from cli.main import main

main()
