"""The ``curate`` command line.

Core commands live here (info, versions, diff, stage, run). Each pipeline module adds its own
commands through a ``register_cli(app)`` function, so an engine's CLI lives next to its job and
this file never grows with the engines. Heavy libraries are imported inside commands only, so
``curate --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from curation.config import ConfigError

app = typer.Typer(
    help="Curate image-text data for text-to-image training: ingest, profile, dedup, tag, review, export, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DatasetOpt = typer.Option(..., "--dataset", "-d", help="Lance dataset path or s3:// URI")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local cluster)")


def fail(msg: str, code: int = 2) -> None:
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


@app.command()
def info(dataset: str = DatasetOpt, version: Optional[int] = typer.Option(None, help="inspect an older version")):
    """Rows, columns by group, versions and error counts of a dataset."""
    store = open_store(dataset)
    ds = store.open(version)
    console.print(f"[bold]{store.uri}[/]", soft_wrap=True)
    console.print(f"version v{ds.version}  rows {ds.count_rows():,}  fragments {len(ds.get_fragments())}")
    t = Table(title="columns by group")
    t.add_column("group")
    t.add_column("columns")
    for g, cols in store.columns_by_group(version).items():
        t.add_row(g, ", ".join(cols))
    console.print(t)
    errs = store.error_counts(version)
    if "exact_dup_of" in ds.schema.names:
        n = ds.count_rows(filter="exact_dup_of IS NOT NULL")
        console.print(f"exact duplicates flagged: {n}")
    console.print(f"rows with errors: {sum(errs.values())}")
    if errs:
        e = Table(title="errors by reason")
        e.add_column("reason")
        e.add_column("rows", justify="right")
        for k, v in errs.items():
            e.add_row(k, str(v))
        console.print(e)
    v = Table(title="versions")
    v.add_column("version")
    v.add_column("time")
    v.add_column("rows", justify="right")
    for rec in store.versions()[-10:]:
        v.add_row(f"v{rec['version']}", str(rec["timestamp"])[:19], rec["metadata"].get("total_rows", ""))
    console.print(v)


@app.command()
def diff(
    dataset: str = DatasetOpt,
    v1: int = typer.Argument(..., help="older version"),
    v2: Optional[int] = typer.Argument(None, help="newer version (default: latest)"),
):
    """What changed between two versions: columns, rows, values per column."""
    store = open_store(dataset)
    v2 = v2 or store.open().version
    console.print_json(json.dumps(store.diff(v1, v2)))


@app.command()
def stage(
    name: str = typer.Argument(..., help="registered stage name (see `curate stages`)"),
    dataset: str = DatasetOpt,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with the stage's params"),
    overwrite: bool = typer.Option(False, help="recompute columns that already exist"),
    address: Optional[str] = AddressOpt,
):
    """Run one registered column stage over the dataset (resumable; one commit)."""
    from curation.config import load_yaml, validate
    from curation.registry import get_stage
    from curation.runner import print_summary, run_stage

    try:
        cls = get_stage(name)
    except KeyError as e:
        fail(str(e.args[0]))
    params = load_yaml(config) if config else {}
    cfg = validate(cls.config_model, params, where=str(config or "defaults"))
    store = open_store(dataset)
    start_ray(address)
    print_summary([run_stage(store, cls(cfg), overwrite=overwrite)], title=f"stage {name}")


@app.command()
def stages():
    """List registered stages and pipeline steps."""
    from curation.registry import STAGES, STEPS, load_plugins

    load_plugins()
    t = Table()
    t.add_column("step")
    t.add_column("kind")
    t.add_column("what it does")
    for n, spec in sorted(STEPS.items()):
        t.add_row(n, "stage" if n in STAGES else "step", spec.doc)
    console.print(t)


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="pipeline YAML: dataset, ray, steps"),
    overwrite: bool = typer.Option(False, help="recompute steps whose output exists"),
    address: Optional[str] = AddressOpt,
):
    """Run the steps of a pipeline file in order; each step is resumable and commits a version."""
    from pipelines.pipeline import run_pipeline

    run_pipeline(pipeline, overwrite=overwrite, address=address)


def _register_module_commands() -> None:
    from curation.registry import BUILTIN_MODULES

    for mod in BUILTIN_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        if hasattr(m, "register_cli"):
            m.register_cli(app)


_register_module_commands()


def main() -> None:
    try:
        app()
    except ConfigError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
