"""The ``curate`` command line: one Typer app, one module per command group.

Each group module (``cli/<group>.py``) has ``register(app)`` and calls the jobs of ``pipelines``;
jobs never import the CLI. ``python -m cli`` and the ``curate`` console script both run ``main``.
"""

from __future__ import annotations

import sys

import typer

from cli import dataset, demo, download, export, graph, ingest, profile, report, review, train, vector
from cli.common import err_console, native_stderr_to_log
from curation.config import ConfigError
from pipelines import load_jobs

__all__ = ["app", "main"]

app = typer.Typer(
    help="Curate image-text data for text-to-image training: ingest, profile, dedup, tag, review, export, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

load_jobs()  # every stage and step registered, so `curate stage NAME` and pipeline files find them
for _group in (dataset, demo, ingest, download, profile, report, vector, graph, review, export, train):
    _group.register(app)


def main() -> None:
    log = native_stderr_to_log()
    try:
        app()
    except ConfigError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
    except SystemExit as e:
        if e.code not in (0, None) and log is not None and log.exists() and log.stat().st_size:
            err_console.print(f"[dim]Ray and native library messages of this run: {log}[/]")
        raise


if __name__ == "__main__":
    main()
