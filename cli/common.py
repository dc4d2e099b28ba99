"""What every command group shares: the consoles, common options, errors and opening a dataset.

Heavy libraries are imported inside functions only, so ``curate --help`` stays fast.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from curation.errors import UserError

__all__ = [
    "console",
    "err_console",
    "DatasetOpt",
    "AddressOpt",
    "fail",
    "UserErrorsAsOneLine",
    "open_store",
    "require_version",
    "version_ranges",
    "writable_out",
    "start_ray",
    "native_stderr_to_log",
]

console = Console()
err_console = Console(stderr=True)

DatasetOpt = typer.Option(..., "--dataset", "-d", help="Lance dataset path or s3:// URI")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local cluster)")


def fail(msg: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit with ``code``. ``msg`` is printed literally:
    it carries paths, user data and exception text, where rich markup would crash on a "[/x]"
    (MarkupError) and silently drop a "[raw]"."""
    err_console.print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(code)


class UserErrorsAsOneLine(TyperGroup):
    """The app's command group: a ``UserError`` from any command (or from a Ray worker, which
    Ray wraps in a ``RayTaskError`` of the same class) ends as one line and exit 2, like ``fail``.
    Here rather than in ``main()`` so every way of running the app (tests' ``CliRunner`` too)
    behaves the same, and no command needs its own ``except`` for the project's errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError: its text is a traceback
            fail(str(cause if isinstance(cause, UserError) else e))


def open_store(dataset: str, must_exist: bool = True):
    from curation.store import Store

    store = Store(dataset)
    if must_exist and not store.exists():
        fail(f"no Lance dataset at {dataset!r}; create one with `curate ingest SRC --dataset {shlex.quote(dataset)}`")
    return store


def require_version(store, dataset: str, version: Optional[int]) -> None:
    """Refuse a ``--version`` the dataset does not have, naming those it has: Lance's own error
    is a Rust source location that reads like a bug in zcurate."""
    if version is None:
        return
    known = [v["version"] for v in store.versions(jobs=False)]
    if version not in known:
        hint = f"curate info --dataset {shlex.quote(dataset)}"
        fail(f"{dataset} has no version {version}; its versions are {version_ranges(known)} (see `{hint}`)")


def version_ranges(versions: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7": a dataset can have thousands of versions."""
    out, start = [], None
    for i, v in enumerate(versions):
        start = v if start is None else start
        if i + 1 == len(versions) or versions[i + 1] != v + 1:
            out.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(out)


def writable_out(out: Path, *, create_parent: bool = False, option: str = "--out") -> None:
    """Refuse an output file that cannot be written before the work starts (a report takes
    minutes): a directory, a folder that does not exist (created when ``create_parent``), or one
    without write permission. Python's own error would be reported as a bug in zcurate."""
    if out.is_dir():
        fail(f"{option} {out} is a directory; name a file inside it")
    parent = out.parent
    if create_parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"{option}: cannot create the folder {parent}: {e.strerror or e}")
    if not parent.is_dir():
        fail(f"{option}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        fail(f"{option}: {out} is not writable (permission denied)")


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    from curation.cluster import RayConfig, init_ray

    try:
        init_ray(RayConfig(address=address, num_cpus=num_cpus))
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:  # no cluster there, a bad temp dir, ports
        where = f"the Ray cluster at {address}" if address else "an embedded Ray cluster"
        fail(f"could not start or join {where}: {str(e).splitlines()[0][:300]}")


def native_stderr_to_log() -> Path | None:
    """Send what C++ code writes to file descriptor 2 (Ray's core worker lines such as
    ``core_worker.cc:... max_restarts > 0``, raylet and GCS start-up chatter, Lance's Rust
    logs) to a log file, while Python's ``sys.stderr`` (our messages, warnings) stays on the
    terminal. Ray's own noise is not the user's business; its log is kept, and named when the
    command fails. ``ZCURATE_NATIVE_STDERR=show`` turns this off (debugging Ray itself)."""
    if os.environ.get("ZCURATE_NATIVE_STDERR") == "show":
        return None
    import atexit
    import tempfile

    folder = Path(tempfile.gettempdir()) / "zcurate-logs"
    folder.mkdir(exist_ok=True)
    path = folder / f"native-{os.getpid()}.log"
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)  # fd 2 (and every child process started from now on) -> the log
    except OSError:
        return None
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    atexit.register(_drop_if_empty, path)
    return path


def _drop_if_empty(path: Path) -> None:
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass
