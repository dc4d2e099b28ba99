"""``curate graph build | show | tag`` and ``curate resample``: the World Knowledge Topological Graph."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cli.common import AddressOpt, DatasetOpt, console, fail, open_store, start_ray
from pipelines.graph import (
    GraphBuildConfig,
    GraphTagConfig,
    GraphTagStage,
    ResampleStepConfig,
    build_graph,
    check_resample_request,
    graph_problem,
    run_resample,
)


def register(app: typer.Typer) -> None:

    graph_app = typer.Typer(help="Concept graph: build, show, tag captions.", no_args_is_help=True)

    @graph_app.command("build")
    def build(
        out: Path = typer.Option(..., "--out", help="folder for the graph"),
        wordnet: bool = typer.Option(True, help="start from WordNet's noun hierarchy"),
        wordnet_dir: str = typer.Option("/usr/share/wordnet"),
        visual_only: bool = typer.Option(False, help="drop non-visual WordNet synsets (acts, feelings, time...)"),
        zh: bool = typer.Option(True, help="add Chinese labels (CC-CEDICT, Cilin)"),
        user: list[Path] = typer.Option([], "--user", help="user concept file (CSV/JSONL); repeatable"),
        links: Optional[Path] = typer.Option(None, help="entity link table to prune by PageRank"),
        link_quantile: float = typer.Option(0.5, help="PageRank quantile below which entities are dropped"),
        mine_from: Optional[str] = typer.Option(None, help="dataset whose captions to mine and cluster tags from"),
        mine_min_count: int = typer.Option(2),
        graphml: bool = typer.Option(True, help="also write graph.graphml"),
    ):
        """Build the concept graph and save it (Parquet nodes/edges + GraphML + meta.json)."""
        from curation.config import validate
        from graph.concepts import GraphCycleError, UnknownParentError
        from graph.userfile import UserFileError

        cfg = validate(
            GraphBuildConfig,
            dict(
                out=str(out),
                wordnet=wordnet,
                wordnet_dir=wordnet_dir,
                visual_only=visual_only,
                zh=zh,
                user_files=[str(u) for u in user],
                links=str(links) if links else None,
                link_quantile=link_quantile,
                mine_from=mine_from,
                mine_min_count=mine_min_count,
                graphml=graphml,
            ),
            where="command line",
        )
        try:
            g, report = build_graph(cfg, log=lambda m: console.print(m, markup=False, highlight=False))
        except (GraphCycleError, UnknownParentError, UserFileError, FileNotFoundError, ValueError) as e:
            fail(str(e))
        _print_stats(console, report["stats"])
        console.print(f"saved to [bold]{escape(str(out))}[/] in {report['seconds']}s; report: {escape(str(report['report']))}")

    @graph_app.command("show")
    def show(
        graph: Path = typer.Option(..., "--graph", help="graph folder"),
        node: Optional[str] = typer.Option(None, help="id, label or term of a node to show"),
        radius: int = typer.Option(1, help="hops around the node"),
    ):
        """Statistics, depth histogram and a node's neighbourhood."""
        from graph.concepts import ConceptGraph

        try:
            g = ConceptGraph.load(graph)
        except FileNotFoundError as e:
            fail(str(e))
        _print_stats(console, g.finalize().stats())
        if node:
            hits = g.resolve(node)
            if not hits:
                fail(f"no node with id, term or label {node!r}")
            for nid in hits[:3]:
                nb = g.neighbourhood(nid, radius)
                n = nb["node"]
                head = f"{n['label_en']} / {n['label_zh'] or '-'}  depth {n['depth']}  weight {n['weight']}  source {n['source']}"
                console.print(f"\n[bold]{escape(nid)}[/] {escape(head)}")
                from graph.wordnet import WORDNET_DIR, gloss

                if nid.startswith("wn:") and (WORDNET_DIR / "data.noun").exists():
                    plain(f"  gloss:   {gloss(nid)}")
                plain(f"  aliases: {', '.join(n['aliases']) or '-'}")
                plain(f"  terms:   {', '.join(n['terms']) or '-'}")
                plain("  path to root: " + " <- ".join(g.display(i) for i, _ in nb["path_to_root"]))
                plain("  parents:  " + (", ".join(f"{g.display(i)} ({i})" for i, _ in nb["parents"]) or "-"))
                kids = nb["children"]
                plain(
                    "  children: "
                    + (", ".join(g.display(i) for i, _ in kids[:30]) or "-")
                    + (f" ... +{len(kids) - 30}" if len(kids) > 30 else "")
                )

    @graph_app.command("tag")
    def tag(
        dataset: str = DatasetOpt,
        graph: Path = typer.Option(..., "--graph", help="graph folder"),
        decay: float = typer.Option(0.5, help="score multiplier per hop up the hierarchy"),
        min_score: float = typer.Option(0.05),
        max_tags: int = typer.Option(64),
        overwrite: bool = typer.Option(False, help="recompute existing tag columns"),
        address: Optional[str] = AddressOpt,
    ):
        """Tag every row's captions with concepts (BM25 + hierarchy); adds tag_* columns."""
        from curation.config import validate
        from curation.runner import print_summary, run_stage

        problem = graph_problem(graph)  # before Ray; an empty graph would blank every row's tags
        if problem:
            fail(problem)
        cfg = validate(GraphTagConfig, dict(graph=str(graph), decay=decay, min_score=min_score, max_tags=max_tags), where="command line")
        store = open_store(dataset)
        start_ray(address)
        print_summary([run_stage(store, GraphTagStage(cfg), overwrite=overwrite)], title="graph tag")

    app.add_typer(graph_app, name="graph")

    @app.command("resample")
    def resample_cmd(
        dataset: str = DatasetOpt,
        graph: Optional[Path] = typer.Option(None, "--graph", help="graph folder (weights, labels; tags first if needed)"),
        target_size: Optional[int] = typer.Option(None, help="rows in the resampled set (default: as now)"),
        prior: str = typer.Option("uniform", help="'uniform' or a CSV/JSON file of concept,weight"),
        method: str = typer.Option("balance", help="balance | cap (MetaCLIP)"),
        cap_t: Optional[float] = typer.Option(None, help="cap method: fixed t (default: solved for --target-size)"),
        max_upsample: float = typer.Option(5.0, help="at most this many copies of one row"),
        seed: int = typer.Option(0),
        address: Optional[str] = AddressOpt,
    ):
        """Sampling weights toward a concept prior; writes rs_* columns, a manifest and a report."""
        from curation.config import RunContext, validate
        from curation.runner import print_summary
        from graph.resample import ResampleError

        cfg = validate(
            ResampleStepConfig,
            dict(
                graph=str(graph) if graph else None,
                target_size=target_size,
                prior=prior,
                method=method,
                cap_t=cap_t,
                max_upsample=max_upsample,
                seed=seed,
            ),
            where="command line",
        )
        problem = graph_problem(graph) if graph else None  # before Ray starts
        if problem:
            fail(problem)
        store = open_store(dataset)
        try:  # the prior file too: a misspelt concept is one line at once, not after a cluster start
            check_resample_request(store, cfg)
        except (ResampleError, ValueError) as e:
            fail(str(e))
        start_ray(address)
        try:
            results = run_resample(RunContext(store=store, overwrite=True), cfg)  # an explicit command recomputes
        except (ResampleError, ValueError) as e:
            fail(str(e))
        print_summary(results, title="resample")
        extra = results[-1].extra
        for k in ("target_size", "rows_left_out", "entropy", "max_over_median", "manifest", "report"):
            if k in extra:
                plain(f"{k}: {extra[k]}")


def plain(message: str) -> None:
    """A line of graph content as it is: labels, glosses and user terms may hold brackets."""
    console.print(message, markup=False, highlight=False)


def _print_stats(console, s: dict) -> None:
    from rich.table import Table

    t = Table(title="concept graph")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    for k, v in s.items():
        if not isinstance(v, dict):
            t.add_row(k, f"{v:,}" if isinstance(v, int) else escape(str(v)))
    t.add_row("nodes by source", ", ".join(f"{k}={v:,}" for k, v in s["nodes_by_source"].items()))
    console.print(t)
    hist = s["depth_histogram"]
    top = max(hist.values(), default=1)
    console.print("depth histogram:")
    for d, n in hist.items():
        console.print(f"  {d:>3} {'#' * max(1, round(40 * n / top))} {n:,}")
