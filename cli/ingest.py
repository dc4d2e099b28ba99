"""``curate ingest``: read sources into the dataset."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from cli.common import AddressOpt, DatasetOpt, fail, start_ray
from cli.common import err_console as console
from curation.runner import print_summary
from curation.sources import plan_units
from curation.store import Store
from curation.text import MAX_CAPTION_CHARS
from pipelines.ingest import EmptySourceError, IngestConfig, check_dataset_path, ingest


def register(app) -> None:

    @app.command("ingest")
    def ingest_cmd(
        source: list[str] = typer.Argument(..., help="folders, WebDataset .tar files, .jsonl or .parquet"),
        dataset: str = DatasetOpt,
        shard_size: int = typer.Option(256, help="images per unit of work"),
        max_pixels: int = typer.Option(178_956_970, help="width x height cap, checked from the header before decoding"),
        max_file_bytes: int = typer.Option(64 * 1024 * 1024, help="larger images, sidecars and JSONL lines are error rows"),
        max_caption_chars: int = typer.Option(MAX_CAPTION_CHARS, help="longer captions are truncated (counted)"),
        allow_paths_outside_source: bool = typer.Option(False, help="let table rows and symlinks reference files outside their folder"),
        image_column: Optional[str] = typer.Option(
            None, help="Parquet/JSONL column of image paths or bytes (default: usual names, any case)"
        ),
        caption_column: Optional[str] = typer.Option(None, help="the caption column, e.g. TEXT (default: caption, text, alt... any case)"),
        url_column: Optional[str] = typer.Option(None, help="column of remote image URLs, e.g. URL (default: url, image_url, any case)"),
        retry_errors: bool = typer.Option(False, "--retry-errors", help="read rows stored with an error again and replace them"),
        no_exact_dup: bool = typer.Option(False, "--no-exact-dup", help="skip flagging byte-identical images"),
        address: Optional[str] = AddressOpt,
    ):
        """Ingest sources into a Lance dataset (created if absent; appended otherwise). Resumable."""
        from curation.config import ConfigError, validate

        cfg = validate(
            IngestConfig,
            {
                "source": source,
                "shard_size": shard_size,
                "max_pixels": max_pixels,
                "max_file_bytes": max_file_bytes,
                "max_caption_chars": max_caption_chars,
                "allow_paths_outside_source": allow_paths_outside_source,
                "image_column": image_column,
                "caption_column": caption_column,
                "url_column": url_column,
                "retry_errors": retry_errors,
                "flag_exact_duplicates": not no_exact_dup,
            },
            where="command line",
        )
        try:
            check_dataset_path(dataset)  # before anything is written into it
            units = plan_units(cfg.source, cfg.read_options())
        except (FileNotFoundError, ValueError, ConfigError) as e:
            fail(str(e))
        console.print(f"ingest: {len(units)} units from {len(cfg.source)} source(s) into {escape(dataset)}")
        if any(u["kind"] != "skipped" for u in units):  # else ingest refuses at once: no cluster needed
            start_ray(address)
        try:
            results = ingest(Store(dataset), cfg)
        except EmptySourceError as e:
            fail(str(e))
        print_summary(results, title="ingest")
