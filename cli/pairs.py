"""``curate pairs render | synth | mine | export | review``: editing pairs with exact ground truth
(text rendered onto photos; object edits from COCO instance masks), pairs mined from the k-NN graph,
pair shards for training, and pairs queued for human review."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import AddressOpt, DatasetOpt, fail, open_store, start_ray
from cli.common import err_console as console


def run_pair_export(dataset: str, params: dict, address: str | None) -> None:
    """``curate pairs export`` and ``curate export --pairs``: validate, check the pair tables before
    Ray starts (one-line errors), export, print what was kept and why the rest was not."""
    from curation.config import ConfigError, validate
    from pipelines.pairs import PairExportConfig, export_pairs, pair_tables

    try:
        cfg = validate(PairExportConfig, params, where="command line")
    except ConfigError as e:
        fail(" ".join(str(e).split()))
    store = open_store(dataset)
    try:  # no pair table, or not one: a one-line error before Ray starts
        pair_tables(store, cfg)
        start_ray(address)
        result = export_pairs(store, cfg)
    except ValueError as e:
        fail(str(e))
    x = result.extra
    console.print(
        f"pairs export: {result.status}, v{result.version} of {escape(str(x['out']))}: {x['kept']} pairs kept, {x['excluded']} excluded"
    )
    for reason, count in sorted((x.get("by_reason") or {}).items()):
        console.print(f"  excluded {escape(str(reason))}: {count}")


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
            console.print(
                f"pairs render: nothing to do, the {there} planned pairs are already in {escape(str(cfg.out or default_out(store)))}"
            )
            return
        start_ray(address)
        result = render_pairs(store, cfg, font=font)
        console.print(summary_table(result))

    @pairs_app.command("synth")
    def synth_cmd(
        dataset: str = DatasetOpt,
        annotations: str = typer.Option(..., help="COCO instances JSON with the photos' masks (e.g. instances_train2017.json)"),
        n: int = typer.Option(100, "--n", help="pairs to make (objects are reused when there are fewer)"),
        seed: int = typer.Option(0, help="picks photos, objects, colours, shifts, scales and instructions"),
        kinds: str = typer.Option("recolour,remove,move,resize", help="comma-separated kinds of edit, dealt in turn"),
        out: Optional[str] = typer.Option(None, help="the pair table (default <dataset>/_curation/pairs/synth.lance)"),
        image_format: str = typer.Option("png", "--format", help="png (lossless: exact ground truth) or jpeg (quality 95)"),
        max_side: int = typer.Option(1024, help="larger photos (and their masks) are shrunk to this longest side first"),
        min_area: float = typer.Option(0.02, help="smallest object to edit, as a share of the image"),
        max_area: float = typer.Option(0.4, help="largest object to edit, as a share of the image"),
        address: Optional[str] = AddressOpt,
    ):
        """Object-editing pairs: an object of a dataset photo, found by its COCO instance mask, is
        recoloured, removed (inpainted), moved or resized; instructions in English and Chinese
        name its category. Rows with no annotation are skipped and counted. One new version of
        the pair table."""
        from curation.config import validate
        from pipelines.pairs import SynthConfig, check_out, default_synth_out, load_annotations, pending_synth, synth_pairs

        params = {"annotations": annotations, "n": n, "seed": seed, "kinds": kinds.split(","), "out": out}
        params |= {"image_format": image_format, "max_side": max_side, "min_area": min_area, "max_area": max_area}
        cfg = validate(SynthConfig, params, where="command line")
        store = open_store(dataset)
        try:
            loaded = load_annotations(cfg.annotations)
        except ValueError as e:
            fail(str(e))
        where = cfg.out or default_synth_out(store)
        problem = check_out(where)
        if problem:
            fail(problem)
        todo, there, info = pending_synth(store, cfg, loaded)
        if not info["photos_matched"]:
            why = f"{info['photos_unmatched']} rows with no such file name, {info['photos_size_mismatch']} of another size"
            fail(f"no photo of {dataset} matches an image of {annotations} by file name ({why})")
        if not todo and not there:
            fail(f"no object of {min_area:.0%}-{max_area:.0%} of its image in the {info['photos_matched']} matched photos fits {kinds}")
        if not todo:
            console.print(f"pairs synth: nothing to do, the {there} planned pairs are already in {escape(str(where))}")
            return
        start_ray(address)
        result = synth_pairs(store, cfg, loaded=loaded)
        console.print(summary_table(result))

    @pairs_app.command("mine")
    def mine_cmd(
        dataset: str = DatasetOpt,
        column: str = typer.Option("vec_desc", help="embedding column whose `curate knn` graph gives the candidates"),
        min_similarity: float = typer.Option(0.9, help="less similar neighbours are unrelated photos"),
        max_similarity: float = typer.Option(0.9999, help="this similar or more is a duplicate (exclusive)"),
        max_per_image: int = typer.Option(3, help="pairs an image takes part in, at most"),
        max_per_group: int = typer.Option(20, help="pairs a group (a Leiden community of neighbours) yields, at most"),
        groups: str = typer.Option("communities", help="groups for the cap: communities (Leiden) or components"),
        unaligned: str = typer.Option("drop", help="pairs no homography aligns: drop, or keep as global changes (global)"),
        instructor: Optional[str] = typer.Option(
            None, help="instruction plug-in module:function, e.g. engines.pairs.instruct:blip (a local captioning / VLM model)"
        ),
        instructor_model: Optional[str] = typer.Option(None, help="local model folder handed to the plug-in (e.g. a BLIP captioner)"),
        out: Optional[str] = typer.Option(None, help="the pair table (default <dataset>/_curation/pairs/mined.lance)"),
        address: Optional[str] = AddressOpt,
    ):
        """Pairs of real images of one scene that differ meaningfully: k-NN neighbours in a
        similarity band, aligned by a homography, scored by where and how much they differ. No
        instruction unless --instructor is given. One new version of the pair table."""
        from curation.config import ConfigError, validate
        from engines.vector.retrieval import RandomWeightsError, check_random_weights
        from pipelines.pairs import MineConfig, check_out, default_mined_out, mine_pairs, pending_mine, why_no_candidate

        params = {"column": column, "min_similarity": min_similarity, "max_similarity": max_similarity, "out": out}
        params |= {"max_per_image": max_per_image, "max_per_group": max_per_group, "groups": groups}
        params |= {"unaligned": unaligned, "instructor": instructor, "instructor_model": instructor_model}
        try:
            cfg = validate(MineConfig, params, where="command line")
        except ConfigError as e:
            fail(" ".join(str(e).split()))
        store = open_store(dataset)
        where = cfg.out or default_mined_out(store)
        try:  # no graph, a stale one, random weights, nothing in the band: one line, before Ray starts
            check_random_weights(store, [cfg.column], consumer=f"pairs mine over {cfg.column!r}")
            if problem := check_out(where):
                raise ValueError(problem)
            todo, there, info = pending_mine(store, cfg)
            if not todo and not there:
                raise ValueError(why_no_candidate(cfg, info))
        except (ValueError, RandomWeightsError) as e:
            fail(str(e).splitlines()[0])
        if not todo:
            console.print(
                f"pairs mine: nothing to do, the {there} planned pairs are already decided (in {escape(str(where))} or dropped before)"
            )
            return
        start_ray(address)
        result = mine_pairs(store, cfg)
        console.print(summary_table(result))
        if result.status == "empty":
            fail(f"no pair survived scoring ({_dropped(result)}); widen the band or pass --unaligned global")

    @pairs_app.command("export")
    def export_cmd(
        dataset: str = DatasetOpt,
        out: str = typer.Option(..., "--out", "-o", help="pair shards to write (path or s3:// URI)"),
        table: Optional[list[str]] = typer.Option(
            None, "--table", help="a pair table to export (repeatable; default: the dataset's pairs.lance and synth.lance)"
        ),
        resolution: int = typer.Option(512, help="target resolution: 256, 512 or 1024 (buckets as `curate export`)"),
        langs: str = typer.Option("en,zh", help="instruction languages to write, comma-separated"),
        overwrite: bool = typer.Option(False, help="write a new version of existing pair shards"),
        allow_empty: bool = typer.Option(False, "--allow-empty", help="write the shards even when no pair is kept"),
        address: Optional[str] = AddressOpt,
    ):
        """Pair shards for training: both images, the instructions, token counts of every segment
        and the target's bucket; what `training.loader` reads as pairs. One new version of --out."""
        params = {"out": out, "tables": table or [], "resolution": resolution, "langs": langs.split(",")}
        run_pair_export(dataset, params | {"overwrite": overwrite, "allow_empty": allow_empty}, address)

    @pairs_app.command("review")
    def review_cmd(
        dataset: str = DatasetOpt,
        pairs: Optional[list[str]] = typer.Option(
            None, "--pairs", help="a pair table to queue (repeatable; default: the dataset's pairs, synth and mined tables)"
        ),
        kinds: Optional[str] = typer.Option(None, help="only these kinds, comma-separated (default: all)"),
        limit: Optional[int] = typer.Option(None, help="queue at most this many pairs, highest priority first"),
        db: Optional[str] = typer.Option(
            None, "--db", help="review database (SQLite path or postgresql:// URL); default next to the dataset"
        ),
    ):
        """Queue editing pairs for human review (the same queue as `curate review mine`): source and
        target side by side, the instruction editable. `curate review apply` writes the decisions
        back to the pair tables (docs/pairs.md)."""
        from curation.config import ConfigError, validate
        from pipelines.pairs.review import PairReviewConfig, review_pairs

        params = {"pairs": pairs or [], "kinds": (kinds or "").split(","), "limit": limit, "db": db}
        try:
            cfg = validate(PairReviewConfig, params, where="command line")
        except ConfigError as e:
            fail(" ".join(str(e).split()))
        store = open_store(dataset)
        try:
            rep = review_pairs(store, cfg)
        except (ValueError, OSError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        console.print(
            f"pairs review: {rep['queued']} of {rep['candidates']} pairs queued ({rep['added']} new, {rep['updated']} updated, "
            f"{rep['unchanged']} already decided) in {rep['db']}"
        )
        if rep["already_reviewed"]:
            console.print(f"  {rep['already_reviewed']} pairs already reviewed in their table were left out")
        for tier, n in rep["by_priority"].items():
            console.print(f"  {tier.replace('_', ' ')}: {n}")

    app.add_typer(pairs_app, name="pairs")


def _dropped(result) -> str:
    c = result.stats.counters
    return ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in sorted(c.items()) if k.startswith("skipped_")) or "none scored"


def summary_table(result) -> Table:
    """Pairs written by kind and language, the rate, and where the table is."""
    x = result.extra
    table = Table(title=f"{result.stage}: {result.status}, v{result.version} of {x.get('out')}", show_lines=False)
    for col in ("", "pairs"):
        table.add_column(col, no_wrap=True)
    table.add_row("written", str(x.get("pairs", 0)))
    if x.get("already_there"):
        table.add_row("already in the table", str(x["already_there"]))
    for k in ("photos_matched", "photos_unmatched", "photos_size_mismatch", "photos_without_object", "candidates", "capped"):
        if k in x:
            table.add_row(k.replace("_", " "), str(x[k]))
    for k, v in (x.get("by_kind") or {}).items():
        table.add_row(f"kind: {k}", str(v))
    for k, v in (x.get("by_lang") or {}).items():
        table.add_row(f"lang: {k}", str(v))
    for k, v in (x.get("by_change") or {}).items():
        table.add_row(f"change: {k}", str(v))
    for k, v in sorted(result.stats.counters.items()):
        if k.startswith("skipped_"):
            table.add_row(k.replace("_", " ", 1), str(v))
    table.add_section()
    rate = x.get("pairs_per_second")
    table.add_row("pairs/s (wall, with Ray start-up of workers)", "-" if rate is None else str(rate))
    table.add_row("seconds", f"{result.seconds:.1f}")
    return table
