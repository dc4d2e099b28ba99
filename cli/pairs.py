"""``curate pairs render``: editing pairs with exact ground truth (text rendered onto photos)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from cli.common import AddressOpt, DatasetOpt, fail, open_store, start_ray
from cli.common import err_console as console


def register(app: typer.Typer) -> None:
    pairs_app = typer.Typer(help="Editing pairs for instruction-based image editing (docs/pairs.md).", no_args_is_help=True)

    @pairs_app.command("render")
    def render_cmd(
        dataset: str = DatasetOpt,
        n: int = typer.Option(100, "--n", help="pairs to make (photos are reused when the dataset has fewer)"),
        seed: int = typer.Option(0, help="picks photos, words, styles, placements and instructions"),
        out: Optional[str] = typer.Option(None, help="the pair table (default <dataset>/_curation/pairs/pairs.lance)"),
        kinds: str = typer.Option("replace,remove,add", help="comma-separated kinds of edit, dealt in turn"),
        image_format: str = typer.Option("png", "--format", help="png (lossless: exact ground truth) or jpeg (quality 95)"),
        max_side: int = typer.Option(1024, help="larger photos are shrunk to this longest side first"),
        address: Optional[str] = AddressOpt,
    ):
        """Text-editing pairs: bilingual sign text rendered onto the dataset's photos, then replaced,
        removed or added; instructions in English and Chinese. One new version of the pair table."""
        from curation.config import validate
        from engines.pairs.render import FontMissing, find_font
        from pipelines.pairs import PairsConfig, check_out, default_out, eligible_photos, pending, render_pairs

        params = {"n": n, "seed": seed, "out": out, "kinds": kinds.split(","), "image_format": image_format, "max_side": max_side}
        cfg = validate(PairsConfig, params, where="command line")
        store = open_store(dataset)
        try:
            font = find_font()
        except FontMissing as e:
            fail(str(e))
        problem = check_out(cfg.out or default_out(store))
        if problem:
            fail(problem)
        if not eligible_photos(store.open())[0]:
            fail(f"{dataset} has no row with an image and no error to render on")
        todo, there = pending(store, cfg)
        if not todo:
            console.print(f"pairs render: nothing to do, the {there} planned pairs are already in {cfg.out or default_out(store)}")
            return
        start_ray(address)
        result = render_pairs(store, cfg, font=font)
        console.print(summary_table(result))

    app.add_typer(pairs_app, name="pairs")


def summary_table(result) -> Table:
    """Pairs written by kind and language, the rate, and where the table is."""
    x = result.extra
    table = Table(title=f"pairs render: {result.status}, v{result.version} of {x.get('out')}", show_lines=False)
    for col in ("", "pairs"):
        table.add_column(col, no_wrap=True)
    table.add_row("written", str(x.get("pairs", 0)))
    if x.get("already_there"):
        table.add_row("already in the table", str(x["already_there"]))
    for k, v in (x.get("by_kind") or {}).items():
        table.add_row(f"kind: {k}", str(v))
    for k, v in (x.get("by_lang") or {}).items():
        table.add_row(f"lang: {k}", str(v))
    for k, v in sorted(result.stats.counters.items()):
        if k.startswith("skipped_"):
            table.add_row(k.replace("_", " ", 1), str(v))
    table.add_section()
    rate = x.get("pairs_per_second")
    table.add_row("pairs/s (wall, with Ray start-up of workers)", "-" if rate is None else str(rate))
    table.add_row("seconds", f"{result.seconds:.1f}")
    return table
