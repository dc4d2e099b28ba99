"""``curate profile``: the Data Profiling Engine's stages over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import AddressOpt, DatasetOpt, fail, open_store, start_ray
from curation.config import ConfigError
from pipelines.profile import load_profile_config, run_profile


def register(app) -> None:

    @app.command()
    def profile(
        dataset: str = DatasetOpt,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="profile.yaml (stages and their params)"),
        only: Optional[str] = typer.Option(None, "--only", help="comma-separated stages, e.g. meta,hash,ocr (or cheap)"),
        overwrite: bool = typer.Option(
            False, help="recompute every row (one commit); without it only rows that lack the columns (added since) are computed"
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Profile every row: metadata, hashes, entropy, degradation, BRISQUE, OCR, NSFW, embeddings, scores.

        Incremental: rows added since a stage ran are computed, the others kept (--overwrite: all)."""
        from curation.runner import print_summary

        cfg = load_profile_config(config, only)
        store = open_store(dataset)
        start_ray(address)
        try:
            results = run_profile(store, cfg, overwrite=overwrite)
        except ConfigError as e:
            fail(str(e))
        print_summary(results, title="profile")
