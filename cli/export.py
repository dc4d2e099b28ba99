"""``curate export``: training shards from the curated dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import AddressOpt, DatasetOpt, fail, open_store, start_ray
from cli.common import err_console as console
from curation.buckets import RESOLUTIONS
from curation.runner import print_summary
from pipelines.export import ExportConfig, export


def register(app) -> None:

    @app.command("export")
    def export_cmd(
        dataset: str = DatasetOpt,
        out: str = typer.Option(..., "--out", "-o", help="training dataset to write (path or s3:// URI)"),
        resolution: int = typer.Option(512, help=f"target resolution: one of {', '.join(map(str, RESOLUTIONS))}"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with export params (rules, columns, ...)"),
        version: Optional[int] = typer.Option(None, help="source version (default: latest)"),
        overwrite: bool = typer.Option(False, help="write a new version of an existing training dataset"),
        vae_path: Optional[str] = typer.Option(None, "--vae-path", help="AutoencoderKL folder: write pre-encoded latents"),
        text_encoder_path: Optional[str] = typer.Option(
            None, "--text-encoder-path", help="Qwen3 folder: write pre-encoded caption features"
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Export the rows a trainer should see (errors, duplicates, rejects removed) as training shards."""
        from curation.config import load_yaml, validate

        params = load_yaml(config) if config else {}
        params.update({"out": out, "resolution": resolution, "overwrite": overwrite or params.get("overwrite", False)})
        if version is not None:
            params["version"] = version
        for k, v in (("vae_path", vae_path), ("text_encoder_path", text_encoder_path)):
            if v is not None:
                params[k] = v
        cfg = validate(ExportConfig, params, where=str(config or "command line"))
        store = open_store(dataset)
        start_ray(address)
        try:
            result = export(store, cfg)
        except ValueError as e:
            fail(str(e))
        print_summary([result], title="export")
        console.print(
            f"training dataset: {result.extra['out']}  (rows {result.extra['kept']}, "
            f"by resolution {result.extra['by_resolution']})\nreport: {result.extra['report']}"
        )
