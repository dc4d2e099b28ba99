"""Entry point layer: the ``curate`` command line (see ``cli.main``)."""
