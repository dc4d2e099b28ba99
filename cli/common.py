"""What every command group shares: the consoles, common options, errors and opening a dataset.

Heavy libraries are imported inside functions only, so ``curate --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

__all__ = ["console", "err_console", "DatasetOpt", "AddressOpt", "fail", "open_store", "start_ray", "native_stderr_to_log"]

console = Console()
err_console = Console(stderr=True)

DatasetOpt = typer.Option(..., "--dataset", "-d", help="Lance dataset path or s3:// URI")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local cluster)")


def fail(msg: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def open_store(dataset: str, must_exist: bool = True):
    from curation.store import Store

    store = Store(dataset)
    if must_exist and not store.exists():
        fail(f"no Lance dataset at {dataset!r}; create one with `curate ingest SRC --dataset {dataset}`")
    return store


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
