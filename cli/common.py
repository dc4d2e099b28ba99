"""What every command group shares: the consoles, common options, errors and opening a dataset.

Heavy libraries are imported inside functions only, so ``curate --help`` stays fast.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

__all__ = ["console", "err_console", "DatasetOpt", "AddressOpt", "fail", "open_store", "start_ray"]

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

    init_ray(RayConfig(address=address, num_cpus=num_cpus))
