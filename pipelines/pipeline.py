"""``curate run PIPELINE.yaml``: the steps of a pipeline file, in order, with one summary and one report.

Each step is resumable on its own (stages checkpoint per fragment, ingest per shard), so a
killed pipeline re-run skips finished steps (their columns exist) and resumes the one in flight.
Stage steps are incremental: a pipeline re-run after its ingest step added rows computes each
stage for those rows only (``curation.incremental``); ``overwrite`` recomputes every row.
At the end one HTML page (``<dataset>/_curation/reports/pipeline-v<N>.html``) shows every step's
status, rows, time and counters, and links every report the steps wrote.
"""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from curation.cluster import init_ray
from curation.config import RunContext, load_pipeline
from curation.reports import png_data_uri, render
from curation.runner import StageResult, print_summary
from curation.store import Store

__all__ = ["run_pipeline", "write_pipeline_report"]

console = Console(stderr=True)
_PATH_PARAMS = ("out", "graph", "out_dir", "db")


def run_pipeline(path: str | Path, *, overwrite: bool = False, address: str | None = None, show_progress: bool = True) -> list[StageResult]:
    """Validate the whole file first (a typo in step 5 fails before step 1 runs), then run it."""
    from curation.registry import STEPS
    from pipelines import load_jobs

    load_jobs()
    cfg, steps = load_pipeline(path)
    check_rule_columns(Store(cfg.dataset), steps, where=str(path))
    if address:
        cfg.ray.address = address
    init_ray(cfg.ray)
    ctx = RunContext(store=Store(cfg.dataset), overwrite=overwrite or cfg.overwrite, show_progress=show_progress, pipeline=cfg)
    results: list[StageResult] = []
    t_start = time.time()
    for i, (name, step_cfg) in enumerate(steps, 1):
        console.rule(f"[bold]step {i}/{len(steps)}: {name}")
        t0 = time.perf_counter()
        out = STEPS[name].run(ctx, step_cfg)
        if isinstance(out, StageResult):
            out.seconds = out.seconds or time.perf_counter() - t0
            results.append(out)
        else:
            version = ctx.store.open().version if ctx.store.exists() else 0
            status = out.get("status", "done") if isinstance(out, dict) else "done"
            results.append(
                StageResult(
                    name, str(status), version, version, seconds=time.perf_counter() - t0, extra=out if isinstance(out, dict) else {}
                )
            )
    print_summary(results, title=f"pipeline {Path(path).name}")
    if ctx.store.exists():
        report = write_pipeline_report(ctx.store, results, steps, t_start, Path(path).name)
        console.print(f"[bold]report:[/] {escape(str(report))}  (open file://{escape(str(report))} in a browser)")
        if any(n == "review_mine" for n, _ in steps):
            db = next((getattr(c, "db", None) for n, c in steps if n == "review_mine"), None)
            opts = escape(f"--dataset {shlex.quote(str(cfg.dataset))}" + (f" --db {shlex.quote(str(db))}" if db else ""))
            console.print(
                f"[bold]review UI:[/] curate review add-user NAME --role admin {opts}, then "
                f"curate review serve {opts}  ->  http://127.0.0.1:8600"
            )
    return results


def check_rule_columns(store: Store, steps: list[tuple[str, Any]], where: str = "pipeline") -> None:
    """Refuse, before step 1 runs, an export rule whose column neither the dataset has nor an
    earlier step writes (``StepSpec.writes``): it failed only when the export step came, after
    hours of profiling, naming a column the user never typed (the default ``nsfw`` rule after a
    profile without the ``nsfw`` stage). Only names of the platform's columns count, and the
    check stops at a step whose columns are not known before it runs."""
    import re

    from curation.config import ConfigError
    from curation.registry import STEPS
    from curation.schema import COLUMN_GROUPS, SAMPLES_SCHEMA, group_of

    known = set(SAMPLES_SCHEMA.names).union(*(g.columns for g in COLUMN_GROUPS.values()))
    have: set[str] | None = set(store.open().schema.names) if store.exists() else set()
    problems = []
    for i, (name, cfg) in enumerate(steps, 1):
        if have is None:
            return
        if name == "export":
            for rule in cfg.checked_rules:
                missing = sorted({w for w in re.findall(r"[A-Za-z_]\w*", rule.where) if w in known and w not in have})
                if missing and not rule.optional:
                    cols = ", ".join(f"{c} (group {group_of(c)})" for c in missing)
                    problems.append(
                        f"  step {i}: export rule {rule.name!r} ({rule.where!r}) needs column {cols}, which the dataset does not "
                        "have and no earlier step writes: add the step or profile stage that writes it, mark the rule "
                        "`optional: true`, or set the step's `optional_rules: true`"
                    )
        writes = STEPS[name].writes
        have = None if writes is None else have | writes(cfg, have)
    if problems:
        raise ConfigError(f"invalid config in {where}:\n" + "\n".join(problems))


def _step_seconds_plot(results: list[StageResult]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(results) + 1))
    ax.barh([r.stage for r in results][::-1], [r.seconds for r in results][::-1], color="#4a7ebb")
    ax.set_xlabel("seconds")
    ax.set_title("time per step")
    fig.tight_layout()
    return png_data_uri(fig, dpi=90)


def _reports_since(store: Store, steps: list[tuple[str, Any]], since: float) -> list[Path]:
    roots = [store.state_dir]
    for _, c in steps:
        for k in _PATH_PARAMS:
            v = getattr(c, k, None)
            if isinstance(v, str) and "://" not in v and Path(v).exists():
                roots.append(Path(v) if Path(v).is_dir() else Path(v).parent)
    found: dict[Path, None] = {}
    for root in roots:
        for p in sorted(root.rglob("*.html")):
            if p.stat().st_mtime >= since and "reports/pipeline-" not in str(p):
                found[p.resolve()] = None
    return list(found)


def write_pipeline_report(store: Store, results: list[StageResult], steps: list[tuple[str, Any]], since: float, title: str) -> Path:
    """One page: the steps with their counters, a time plot, links to every report written, the dataset."""
    ds = store.open()
    out = store.state_dir / "reports" / f"pipeline-v{ds.version}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    profile_cols = [c for c in ds.schema.names if c.startswith("prof_")]
    links = _reports_since(store, steps, since)
    if profile_cols:
        try:
            from pipelines.report import build_report

            links.insert(0, build_report(store, store.state_dir / "reports" / f"profile-v{ds.version}.html").resolve())
        except Exception as e:  # the pipeline's own report must not fail the pipeline
            console.print(f"[yellow]profile report not written: {escape(str(e))}")
    steps_data = []
    for r in results:
        d = r.to_dict()
        steps_data.append(
            {
                "stage": r.stage,
                "status": r.status,
                "version": r.version,
                "rows": d["rows"],
                "seconds": f"{r.seconds:.1f}",
                "counters": [f"{k} = {v}" for k, v in d["counters"].items()],
                "notes": [f"{k}: {str(v)[:200]}" for k, v in r.extra.items() if not isinstance(v, (dict, list))],
            }
        )
    page = render(
        "pipeline_report.html",
        title=title,
        uri=store.uri,
        version=ds.version,
        rows=f"{ds.count_rows():,}",
        columns=len(ds.schema.names),
        steps=steps_data,
        time_plot=_step_seconds_plot(results),
        errors=list(store.error_counts().items()),
        links=[str(p) for p in links],
        report_dir=str(out.resolve().parent),  # links relative to the report: it opens from any copy
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
    )
    out.write_text(page, encoding="utf-8")
    return out.resolve()
