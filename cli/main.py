"""The ``curate`` command line: one Typer app, one module per command group.

Each group module (``cli/<group>.py``) has ``register(app)`` and calls the jobs of ``pipelines``;
jobs never import the CLI. ``python -m cli`` and the ``curate`` console script both run ``main``.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from cli import dataset, demo, download, export, graph, ingest, models, pairs, profile, report, review, train, vector
from cli.common import UserErrorsAsOneLine, err_console, native_stderr_to_log
from curation.errors import UserError
from pipelines import load_jobs

__all__ = ["app", "main"]

app = typer.Typer(
    help="Curate image-text data for text-to-image training: ingest, profile, dedup, tag, review, export, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=UserErrorsAsOneLine,
)

load_jobs()  # every stage and step registered, so `curate stage NAME` and pipeline files find them
for _group in (dataset, demo, ingest, download, profile, report, vector, graph, review, export, train, models, pairs):
    _group.register(app)


def main() -> None:
    """Run the app; whatever escapes a command ends as one literal line (exception text can hold
    "[/x]", which rich would read as markup and crash on inside this very handler)."""
    log = native_stderr_to_log()
    try:
        app()
    except UserError as e:  # raised outside a command (the app's own set-up); commands' are one line already
        err_console.print(f"[bold red]error:[/] {escape(str(e))}")
        sys.exit(2)
    except SystemExit as e:
        if e.code not in (0, None) and log is not None and log.exists() and log.stat().st_size:
            err_console.print(f"[dim]Ray and native library messages of this run: {escape(str(log))}[/]")
        if e.code == 130:  # Typer turns Ctrl-C (KeyboardInterrupt) into Exit(130) before we see it
            _interrupted()
        _shutdown_ray()  # the command ended on its own (not interrupted): no late Ctrl-C traceback
        raise
    except KeyboardInterrupt:  # Ctrl-C outside Typer's own handler (start-up, teardown)
        _interrupted()
    except Exception as e:  # a bug or an unforeseen input: one line for the user, the traceback in the log
        where = _traceback_to_log(log)
        first = str(e).splitlines()[0][:300] if str(e) else ""
        err_console.print(f"[bold red]error:[/] {escape(f'{type(e).__name__}: {first}')}")
        err_console.print(f"[dim]this is a bug in zcurate or an input it did not foresee; the traceback is in {escape(where)}[/]")
        sys.exit(1)


def _shutdown_ray() -> None:
    """Stop Ray here with Ctrl-C ignored once a command has ended on its own: left to Ray's own
    atexit hook, a Ctrl-C pressed as the command ends interrupts that hook and prints a traceback
    after the work was committed. An interrupted command leaves Ray to that hook, as before (its
    own processes got the same Ctrl-C)."""
    if "ray" not in sys.modules:
        return
    import signal

    import ray

    if ray.is_initialized():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ray.shutdown()


def _interrupted() -> None:
    """The Ctrl-C line: every job commits only finished work and resumes from its checkpoints."""
    err_console.print("[bold red]interrupted[/]: committed versions are kept; re-run the command to resume")
    sys.exit(130)


def _traceback_to_log(log) -> str:
    """Append the current exception's traceback to the run's log file (a new one when native
    output goes to the terminal) so a bug report has it while the user sees one line."""
    import tempfile
    import traceback
    from pathlib import Path

    path = log or Path(tempfile.gettempdir()) / "zcurate-logs" / "traceback.log"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write(traceback.format_exc())
    return str(path)


if __name__ == "__main__":
    main()
