"""``curate index build | knn | dedup | search``: the Cross-modal Vector Engine's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from cli.common import AddressOpt, DatasetOpt, console, err_console, fail, open_store, start_ray
from pipelines.dedup import DedupConfig, run_dedup, up_to_date
from pipelines.descriptors import default_column, ensure_visual
from pipelines.index import IndexBuildConfig, build_index, check_index_weights
from pipelines.knn import KnnConfig, build_knn, check_knn_weights

RandomOpt = typer.Option(
    False,
    "--allow-random-weights",
    help="use an embedding made by randomly initialised weights anyway (noise; the output is marked random_derived)",
)


def _say_random(random_derived: dict) -> None:
    """One line per random-weight input the user allowed: the output is noise and marked so."""
    for c, m in (random_derived or {}).items():
        line = f"{c}: {m['group']}: {m['why']}"
        err_console.print(f"[bold yellow]RANDOM-DERIVED[/] {escape(line)}")


def register(app) -> None:

    index_app = typer.Typer(help="FAISS vector indexes over embedding columns.", no_args_is_help=True)
    app.add_typer(index_app, name="index")

    def _guard(fn, *a, **kw):
        from engines.vector.index import VectorError

        try:
            return fn(*a, **kw)
        except VectorError as e:
            fail(str(e))

    @index_app.command("build")
    def index_build(
        dataset: str = DatasetOpt,
        column: Optional[str] = typer.Option(None, help="embedding column (default prof_clip_image, else vec_desc)"),
        kind: str = typer.Option("auto", help="auto, flat, ivfflat, ivffp16, ivfsq8, ivfpq, ivfhnsw"),
        nlist: Optional[int] = typer.Option(None, help="IVF lists"),
        nprobe: int = typer.Option(16, help="IVF lists searched per query"),
        rebuild: bool = typer.Option(False, help="start over instead of adding new rows"),
        allow_random_weights: bool = RandomOpt,
        address: Optional[str] = AddressOpt,
    ):
        """Build or extend (new rows only) the FAISS index of an embedding column."""
        from curation.config import validate

        cfg = validate(
            IndexBuildConfig,
            {
                "column": column,
                "rebuild": rebuild,
                "allow_random_weights": allow_random_weights,
                "index": {"kind": kind, "nlist": nlist, "nprobe": nprobe},
            },
            where="options",
        )
        store = open_store(dataset)
        _say_random(_guard(check_index_weights, store, column or default_column(store), allow_random_weights))
        start_ray(address)
        _guard(build_index, store, cfg)

    @app.command()
    def knn(
        dataset: str = DatasetOpt,
        k: int = typer.Option(100, help="neighbours per row"),
        column: Optional[str] = typer.Option(None, help="indexed column"),
        nprobe: Optional[int] = typer.Option(None),
        full: bool = typer.Option(False, "--full", help="recompute the whole graph instead of adding the rows appended since"),
        allow_random_weights: bool = RandomOpt,
        address: Optional[str] = AddressOpt,
    ):
        """The k-NN graph (source id, neighbour id, similarity) as a Lance table next to the dataset;
        after rows were appended (and the index extended), only the new rows are queried."""
        from curation.config import validate

        params = {"k": k, "column": column, "nprobe": nprobe, "full": full, "allow_random_weights": allow_random_weights}
        cfg = validate(KnnConfig, params, where="options")
        store = open_store(dataset)
        _say_random(_guard(check_knn_weights, store, column or default_column(store), allow_random_weights))
        start_ray(address)
        _guard(build_knn, store, cfg)

    @app.command()
    def dedup(
        dataset: str = DatasetOpt,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with dedup params (DedupConfig)"),
        quality_column: Optional[str] = typer.Option(None, help="score that picks the kept row"),
        method: Optional[str] = typer.Option(None, help="leiden, louvain or components"),
        dry_run: bool = typer.Option(False, help="report the curve and groups; commit nothing"),
        overwrite: bool = typer.Option(
            False, help="compute the groups anew although nothing they follow from changed since the last committed run"
        ),
        keep: Optional[bool] = typer.Option(
            None,
            "--keep/--no-keep",
            help="keep the candidate search and verified pairs for the next run after an append (default); "
            "--no-keep: use none, keep none, and delete what was kept once this run commits",
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Exact, near and semantic duplicates; prints the removal curve; commits dup_* columns."""
        from curation.config import load_yaml, validate

        params = load_yaml(config) if config else {}
        for key, val in (("quality_column", quality_column), ("method", method), ("keep", keep)):
            if val is not None:
                params[key] = val
        if dry_run:
            params["dry_run"] = True
        cfg = validate(DedupConfig, params, where=str(config or "options"))
        store = open_store(dataset)
        if cfg.dry_run:  # missing descriptors are an error in a dry run: say so before Ray starts
            _guard(ensure_visual, store, False, dry_run=True)
        if not cfg.dry_run and not overwrite and _guard(up_to_date, store, cfg):  # says so before Ray starts
            return _dedup_summary(run_dedup(store, cfg, overwrite=False))
        start_ray(address)
        _dedup_summary(_guard(run_dedup, store, cfg, overwrite=overwrite))

    def _dedup_summary(out: dict) -> None:
        """The job's last line: what was committed, or that a dry run committed nothing."""
        secs = f" in {out['seconds']:.1f} s" if "seconds" in out else ""
        if out.get("status") == "up_to_date":
            return  # run_dedup said so, with the version
        if out.get("status") == "dry_run":
            console.print(f"dry run: nothing committed; report {escape(out['report'])}")
        elif out.get("status") == "committed":
            console.print(f"committed dup_* columns as version {out['version']}{secs}; report {escape(out['report'])}")
        else:
            console.print(f"dedup: {out.get('status')}{secs}; report {escape(out.get('report', ''))}")

    @app.command()
    def search(
        dataset: str = DatasetOpt,
        text: Optional[str] = typer.Option(None, help="text query (needs an image-text or caption embedding index)"),
        image: Optional[Path] = typer.Option(None, help="image file query"),
        id: Optional[str] = typer.Option(None, "--id", help="neighbours of this row"),
        k: int = typer.Option(20, min=1),
        column: Optional[str] = typer.Option(None, help="indexed column (default as for index build)"),
        allow_random_weights: bool = typer.Option(
            False,
            "--allow-random-weights",
            help="search an embedding made by randomly initialised weights anyway (noise; the results are marked)",
        ),
    ):
        """Text-to-image, image-to-image and row-neighbour retrieval over a built index."""
        from rich.table import Table

        from engines.vector.retrieval import Retriever

        if sum(x is not None for x in (text, image, id)) != 1:
            fail("give exactly one of --text, --image, --id")
        store = open_store(dataset)
        col = column or default_column(store)

        random_note: list[str] = []

        def go():
            r = Retriever(store, col, allow_random_weights=allow_random_weights)
            random_note.extend(f"{c}: {m['why']}" for c, m in r.random_derived.items())
            if text is not None:
                return r.by_text(text, k)
            if image is not None:
                if not image.is_file():
                    fail(f"no image file at {image}")
                return r.by_image(image.read_bytes(), k)
            return r.by_id(id, k)

        hits = _guard(go)
        title = f"nearest rows by {col}"
        if random_note:
            title += " (RANDOM WEIGHTS: similarities are noise)"
            for note in random_note:
                err_console.print(f"[bold yellow]RANDOM-DERIVED[/] {escape(note)}")
        t = Table(title=title)
        for c in ("rank", "id", "similarity", "file", "caption"):
            t.add_column(c, overflow="fold")
        shown = _hit_rows(store, [h["id"] for h in hits])
        for h in hits:
            key, caption = shown.get(h["id"], ("", ""))
            t.add_row(str(h["rank"]), escape(str(h["id"])), f"{h['similarity']:.4f}", escape(key), escape(caption[:120]))
        Console().print(t)

    def _hit_rows(store, ids: list[str]) -> dict[str, tuple[str, str]]:
        """(source key, first caption) of the rows found: what tells a person what matched."""
        if not ids:
            return {}
        names = store.open().schema.names
        cols = ["id", *(c for c in ("source_key", "captions") if c in names)]
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        rows = store.open().to_table(columns=cols, filter=f"id IN ({quoted})").to_pylist()
        return {r["id"]: (r.get("source_key") or "", ((r.get("captions") or [{}])[0] or {}).get("text") or "") for r in rows}
