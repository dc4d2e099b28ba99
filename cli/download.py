"""``curate download``: fetch the http(s) images of URL rows into the dataset."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from cli.common import AddressOpt, DatasetOpt, open_store, start_ray
from cli.common import err_console as console
from curation.runner import StageResult, print_summary
from pipelines.download import DownloadConfig, download, failure_counts


def register(app) -> None:

    @app.command("download")
    def download_cmd(
        dataset: str = DatasetOpt,
        concurrency_per_host: int = typer.Option(4, help="requests at once to one host, per worker"),
        threads: int = typer.Option(16, help="requests at once per worker"),
        retries: int = typer.Option(3, help="extra attempts after a timeout, connection error, 429 or 5xx (never 404/403/410)"),
        timeout: float = typer.Option(20.0, help="seconds to connect, per read, and for the whole body"),
        max_bytes: int = typer.Option(32 * 1024 * 1024, help="larger images are refused (too_large); reading stops there"),
        resize_max_side: Optional[int] = typer.Option(None, help="bring the longest side down to this many pixels (same format)"),
        retry_errors: bool = typer.Option(False, "--retry-errors", help="fetch again the rows whose earlier download failed"),
        no_exact_dup: bool = typer.Option(False, "--no-exact-dup", help="skip recomputing exact_dup_of after the commit"),
        address: Optional[str] = AddressOpt,
    ):
        """Download the images of rows with an http(s) image_uri and no image. Resumable, one commit."""
        from curation.config import validate

        params = {"concurrency_per_host": concurrency_per_host, "threads": threads, "retries": retries, "timeout": timeout}
        params |= {"max_bytes": max_bytes, "resize_max_side": resize_max_side, "retry_errors": retry_errors}
        cfg = validate(DownloadConfig, {**params, "flag_exact_duplicates": not no_exact_dup}, where="command line")
        store = open_store(dataset)
        start_ray(address)
        results = download(store, cfg)
        print_summary(results, title="download")
        console.print(reasons_table(results[0]))


def reasons_table(result: StageResult) -> Table:
    """Downloaded and failed rows by reason, bytes and rate: what an operator checks first."""
    x = result.extra
    table = Table(title="download: rows by outcome", show_lines=False)
    for col in ("outcome", "rows"):
        table.add_column(col, no_wrap=True)
    table.add_row("downloaded", str(x.get("downloaded", 0)))
    for kind, n in failure_counts(result.stats).items():
        table.add_row(f"failed: {kind}", str(n))
    rate = x.get("megabytes_per_second")
    table.add_section()
    table.add_row("MB stored", f"{x.get('bytes_stored', 0) / 1e6:.1f}")
    table.add_row("MB/s fetched", "-" if rate is None else str(rate))
    return table
