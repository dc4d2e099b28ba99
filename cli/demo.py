"""``curate demo-data``: build the demo corpus (options, progress, summary)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli.common import console, fail


def register(app) -> None:

    @app.command("demo-data")
    def demo_data_cmd(
        out: Path = typer.Argument(..., help="output folder (created; an earlier demo corpus there is replaced)"),
        seed: int = typer.Option(0, "--seed", min=0, help="random seed: the same seed gives the same bytes"),
        formats: str = typer.Option(
            "folder,webdataset,jsonl", "--formats", help="comma-separated layouts to write: folder, webdataset, jsonl"
        ),
    ):
        """Build a small realistic corpus from photos shipped in packages, with ground truth in manifest.json."""
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from democorpus.corpus import DemoDataError, build_corpus, check_out, parse_formats, write_corpus

        t0 = time.perf_counter()
        try:
            layouts = parse_formats(formats)
            check_out(out)  # refuse a foreign folder before spending time on the build
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False
            ) as progress:
                build = progress.add_task("rendering images", total=None)
                corpus = build_corpus(seed, layouts, on_progress=lambda d, n: progress.update(build, completed=d, total=n))
                write = progress.add_task(f"writing {out}", total=len(corpus.items))
                summary = write_corpus(corpus, out, on_progress=lambda d, n: progress.update(write, completed=d))
        except DemoDataError as e:
            fail(str(e))
        _print_summary(console, Table, out, seed, summary, time.perf_counter() - t0)


def _print_summary(console, Table, out: Path, seed: int, s: dict, seconds: float) -> None:
    where = {
        "folder": "folder/  (image + .json/.txt sidecar)",
        "webdataset": "webdataset/shard-00000.tar",
        "jsonl": "jsonl/captions.jsonl + jsonl/images/",
    }
    t = Table(title=f"demo corpus in {out} (seed {seed})")
    t.add_column("layout")
    t.add_column("where")
    t.add_column("images", justify="right")
    t.add_column("MB", justify="right")
    for layout, v in s["by_layout"].items():
        t.add_row(layout, where[layout], str(v["images"]), f"{v['bytes'] / 1e6:.1f}")
    t.add_row("total", "", str(s["images"]), f"{s['image_bytes'] / 1e6:.1f}", style="bold")
    console.print(t)
    roles = ", ".join(f"{k} {v}" for k, v in s["by_role"].items())
    console.print(f"roles: {roles}")
    console.print(
        f"ground truth: {s['near_dup_groups']} near-duplicate groups ({s['near_dup_items']} images), "
        f"{s['exact_duplicates']} exact byte copies, {s['text_images']} images with rendered text "
        f"({s['text_mentioned_in_captions']} whose captions quote it), {s['degraded']} degraded"
    )
    console.print(
        f"sizes: sides {s['min_side']}-{s['max_side']} px, aspect {s['aspect_range'][0]}-{s['aspect_range'][1]}; "
        f"manifest: {escape(str(Path(out) / 'manifest.json'))}; {seconds:.1f} s"
    )
    console.print(f"next: curate ingest {escape(str(out))} --dataset demo.lance")
