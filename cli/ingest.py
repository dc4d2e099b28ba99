"""``curate ingest``: read sources into the dataset."""

from __future__ import annotations

from typing import Optional

import typer

from cli.common import AddressOpt, DatasetOpt, fail, start_ray
from cli.common import err_console as console
from curation.runner import print_summary
from curation.sources import plan_units
from curation.store import Store
from pipelines.ingest import IngestConfig, ingest


def register(app) -> None:

    @app.command("ingest")
    def ingest_cmd(
        source: list[str] = typer.Argument(..., help="folders, WebDataset .tar files, .jsonl or .parquet"),
        dataset: str = DatasetOpt,
        shard_size: int = typer.Option(256, help="images per unit of work"),
        max_pixels: int = typer.Option(178_956_970, help="pixel cap checked before decoding"),
        allow_paths_outside_source: bool = typer.Option(False, help="let table rows reference files outside their folder"),
        no_exact_dup: bool = typer.Option(False, "--no-exact-dup", help="skip flagging byte-identical images"),
        address: Optional[str] = AddressOpt,
    ):
        """Ingest sources into a Lance dataset (created if absent; appended otherwise). Resumable."""
        from curation.config import validate

        cfg = validate(
            IngestConfig,
            {
                "source": source,
                "shard_size": shard_size,
                "max_pixels": max_pixels,
                "allow_paths_outside_source": allow_paths_outside_source,
                "flag_exact_duplicates": not no_exact_dup,
            },
            where="command line",
        )
        try:
            units = plan_units(cfg.source, cfg.read_options())
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        console.print(f"ingest: {len(units)} units from {len(cfg.source)} source(s) into {dataset}")
        start_ray(address)
        results = ingest(Store(dataset), cfg)
        print_summary(results, title="ingest")
