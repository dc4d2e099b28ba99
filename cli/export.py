"""``curate export``: training shards from the curated dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import AddressOpt, DatasetOpt, fail, open_store, require_version, start_ray
from cli.common import err_console as console
from curation.buckets import RESOLUTIONS
from curation.runner import print_summary
from pipelines.export import ExportConfig, check_rules, export


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
        optional_rules: bool = typer.Option(
            False, "--optional-rules", help="skip (and list) rules naming a column the dataset lacks, instead of failing"
        ),
        allow_empty: bool = typer.Option(False, "--allow-empty", help="write the export even when it keeps no row"),
        allow_random_weights: bool = typer.Option(
            False, "--allow-random-weights", help="apply rules on scores from random weights (noise) instead of refusing"
        ),
        pairs: bool = typer.Option(
            False, "--pairs", help="write the dataset's editing pairs as pair shards instead (`curate pairs export`)"
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Export the rows a trainer should see (errors, duplicates, rejects removed) as training shards."""
        from curation.config import load_yaml, validate

        if pairs:
            given = {"--config": config, "--version": version, "--vae-path": vae_path, "--text-encoder-path": text_encoder_path}
            given |= {"--optional-rules": optional_rules or None, "--allow-random-weights": allow_random_weights or None}
            if bad := [k for k, v in given.items() if v is not None]:
                fail(f"--pairs exports pair tables: {', '.join(bad)} apply to single-image exports only (see curate pairs export --help)")
            from cli.pairs import run_pair_export

            return run_pair_export(
                dataset, {"out": out, "resolution": resolution, "overwrite": overwrite, "allow_empty": allow_empty}, address
            )

        params = load_yaml(config) if config else {}
        params.update({"out": out, "resolution": resolution, "overwrite": overwrite or params.get("overwrite", False)})
        if version is not None:
            params["version"] = version
        for k, v in (("vae_path", vae_path), ("text_encoder_path", text_encoder_path)):
            if v is not None:
                params[k] = v
        if allow_empty:
            params["allow_empty"] = True
        if allow_random_weights:
            params["allow_random_weights"] = True
        if optional_rules:
            params["optional_rules"] = True
        cfg = validate(ExportConfig, params, where=str(config or "command line"))
        store = open_store(dataset)
        require_version(store, dataset, cfg.version)
        try:  # a misspelt column fails here, before Ray starts
            check_rules(store.open(cfg.version), cfg.checked_rules, store=store, allow_random=cfg.allow_random_weights)
        except ValueError as e:
            fail(str(e))
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
