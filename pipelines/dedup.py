"""``dedup`` (step, ``curate dedup``): exact + near + semantic duplicates as graph communities.

Best row kept, a removal-fraction curve per threshold (HTML report), then the ``dup_*`` columns
committed as one version through the stage runner (``--dry-run`` stops before).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from curation.registry import register_step
from curation.schema import DUP
from curation.stage import Stage, StageConfig
from engines.vector.dedup import NearDupConfig, SemanticConfig
from pipelines.descriptors import ensure_visual

console = Console(stderr=True)
log = logging.getLogger(__name__)


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    near: NearDupConfig = Field(default_factory=NearDupConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    semantic_column: Optional[str] = Field(
        "auto", description="embedding column for semantic duplicates; auto = prof_clip_image when made by real weights; null = off")
    quality_column: Optional[str] = Field(None, description="score that picks the kept row; default prof_quality, else image area")
    quality_higher_is_better: bool = True
    method: str = Field("leiden", pattern="^(leiden|louvain|components)$")
    resolution: float = Field(0.1, gt=0, description="CPM density a group must beat (Leiden)")
    seed: int = 0
    thresholds: list[float] = Field(default_factory=lambda: [0.80, 0.85, 0.90, 0.95, 0.98],
                                    description="similarity thresholds of the removal curve")
    pairs_per_unit: int = Field(2000, ge=1, description="candidate pairs verified per Ray unit")
    dry_run: bool = Field(False, description="report the curve and groups, commit nothing")


class _VerifyWorker:
    """Ray actor: ORB + RANSAC verification of candidate pairs (decodes each image once per unit)."""

    def __init__(self, store, version: int):
        self.ds = store.open(version)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.descriptor import decode_gray, orb_features, orb_verify

        out: dict[str, list] = {"unit": [], "inliers": [], "coverage": []}
        for unit in batch.to_pylist():
            need = sorted(set(unit["i"]) | set(unit["j"]))
            t = self.ds.take(need, columns=["image", "image_uri"])
            feats = {}
            for p, data, uri in zip(need, t.column("image").to_pylist(), t.column("image_uri").to_pylist()):
                g = decode_gray(data, uri)
                feats[p] = orb_features(g) if isinstance(g, np.ndarray) else None
            inl, cov = [], []
            for a, b in zip(unit["i"], unit["j"]):
                if feats[a] is None or feats[b] is None:
                    inl.append(0); cov.append(0.0)
                    continue
                n_in, _, c = orb_verify(feats[a], feats[b])
                inl.append(n_in); cov.append(c)
            out["unit"].append(unit["unit"]); out["inliers"].append(inl); out["coverage"].append(cov)
        return pa.table(out)


def _quality(t: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, str]:
    names = t.column_names
    col = cfg.quality_column or ("prof_quality" if "prof_quality" in names else None)
    if col:
        q = np.asarray(t.column(col).to_numpy(zero_copy_only=False), np.float64)
        return q, col
    w = np.asarray(t.column("width").fill_null(0).to_numpy(), np.float64)
    h = np.asarray(t.column("height").fill_null(0).to_numpy(), np.float64)
    return w * h, "image area (width x height)"


def _semantic_column(store, ds, cfg: DedupConfig) -> tuple[str | None, str]:
    from engines.vector.retrieval import model_record

    if cfg.semantic_column is None:
        return None, "semantic duplicates off (semantic_column: null)"
    if cfg.semantic_column != "auto":
        if cfg.semantic_column not in ds.schema.names:
            from engines.vector.index import VectorError

            raise VectorError(f"semantic_column {cfg.semantic_column!r} not in the dataset")
        return cfg.semantic_column, f"semantic duplicates over {cfg.semantic_column}"
    if "prof_clip_image" not in ds.schema.names:
        return None, "semantic duplicates skipped: no prof_clip_image column (run the profiling clip stage with real weights)"
    rec = model_record(store, "prof_clip_image")
    if rec is None or rec.get("random_weights", True):
        return None, ("semantic duplicates skipped: prof_clip_image was made by randomly initialised weights "
                      "(or the model is unrecorded); similarities would be noise")
    return "prof_clip_image", f"semantic duplicates over prof_clip_image ({rec.get('model')})"


def find_duplicates(store, cfg: DedupConfig, *, show_progress: bool = True) -> dict:
    """Groups, kept rows and the removal curve, without committing. Returns the plan."""
    from curation.runner import execute_units
    from engines.vector.dedup import (
        REASONS, exact_pairs, group_duplicates, near_pairs, semantic_pairs, semdedup_pairs,
    )
    from engines.vector.graph import removal_curve
    from engines.vector.index import VectorError, clean_vectors, to_matrix
    from engines.vector.knn import exact_knn

    ensure_visual(store, show_progress)
    ds = store.open()
    n = ds.count_rows()
    if n == 0:
        raise VectorError("the dataset is empty: nothing to deduplicate")
    names = ds.schema.names
    cols = ["id", "image_sha256", "vec_desc", "vec_regions", "width", "height"]
    cols += [c for c in ("prof_phash",) if c in names]
    q_col = cfg.quality_column
    if q_col and q_col not in names:
        raise VectorError(f"quality_column {q_col!r} not in the dataset; columns: {', '.join(names)}")
    if q_col is None and "prof_quality" in names:
        cols.append("prof_quality")
    if q_col:
        cols.append(q_col)
    t = ds.to_table(columns=list(dict.fromkeys(cols)))
    ids = t.column("id").to_pylist()
    notes: list[str] = []
    stats: dict[str, Any] = {"rows": n}

    pairs = exact_pairs(t.column("image_sha256").to_pylist())
    stats["exact_pairs"] = len(pairs)
    full, null = to_matrix(t.column("vec_desc"))
    full, valid, skipped = clean_vectors(full, null)
    if skipped:
        notes.append(f"rows without a usable descriptor (exact duplicates only): {skipped}")
    regions, rnull = to_matrix(t.column("vec_regions"))
    regions = regions.reshape(n, -1, full.shape[1])
    phash = phash_valid = None
    if "prof_phash" in t.column_names:
        ph = t.column("prof_phash")
        phash_valid = np.asarray(ph.is_valid().to_numpy(zero_copy_only=False), bool)
        phash = np.asarray(ph.fill_null(0).to_numpy(zero_copy_only=False), np.uint64)
    else:
        notes.append("prof_phash absent: perceptual-hash signal skipped (descriptors + local features decide)")

    def verify(i: np.ndarray, j: np.ndarray):
        order = np.lexsort((j, i))  # pairs of one image together: fewer decodes per unit
        i, j = i[order], j[order]
        units = [{"unit": k, "i": i[s:s + cfg.pairs_per_unit].tolist(), "j": j[s:s + cfg.pairs_per_unit].tolist()}
                 for k, s in enumerate(range(0, len(i), cfg.pairs_per_unit))]
        inl = np.zeros(len(i), np.int32)
        cov = np.zeros(len(i), np.float32)

        def on_result(row):
            s = row["unit"] * cfg.pairs_per_unit
            inl[s:s + len(row["inliers"])] = row["inliers"]
            cov[s:s + len(row["coverage"])] = row["coverage"]

        execute_units(units, _VerifyWorker, {"store": store, "version": ds.version}, ray_options={"num_cpus": 1},
                      on_result=on_result, description="verify near-duplicate candidates (ORB+RANSAC)",
                      show_progress=show_progress)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return inl[back], cov[back]

    near, nstats = near_pairs(full, regions, valid, phash, cfg.near, verify, phash_valid=phash_valid)
    stats.update(nstats)
    pairs = pairs + near

    sem_col, why = _semantic_column(store, ds, cfg)
    notes.append(why)
    if sem_col:
        e, enull = to_matrix(ds.to_table(columns=[sem_col]).column(sem_col))
        e, evalid, eskipped = clean_vectors(e, enull)
        if cfg.semantic.method == "semdedup":
            sem = semdedup_pairs(e, evalid, cfg.semantic.threshold, cfg.semantic.n_clusters, cfg.semantic.seed)
        else:
            pos = np.flatnonzero(evalid)
            sims, nn = exact_knn(e[pos], e[pos], min(cfg.semantic.k + 1, len(pos))) if len(pos) > 1 else (np.zeros((0, 1)), np.zeros((0, 1), np.int64))
            src = np.repeat(pos, nn.shape[1])
            dst = np.where(nn.ravel() >= 0, pos[np.maximum(nn.ravel(), 0)], -1)
            sem = semantic_pairs(src, dst, sims.ravel(), cfg.semantic.threshold)
        stats["semantic_pairs"] = len(sem)
        pairs = pairs + sem

    quality, q_name = _quality(t, cfg)
    notes.append(f"kept row = best {q_name} ({'higher' if cfg.quality_higher_is_better else 'lower'} is better)")

    def pair_sim(u: int, k: int) -> float:
        if valid[u] and valid[k]:
            return float(max(full[u] @ full[k], (regions[k] @ full[u]).max(), (regions[u] @ full[k]).max()))
        return float("nan")

    res = group_duplicates(n, pairs, quality, method=cfg.method, resolution=cfg.resolution, seed=cfg.seed,
                           higher_is_better=cfg.quality_higher_is_better, pair_sim=pair_sim)
    exact = pairs.reason == REASONS.index("exact")
    curve = removal_curve(n, np.r_[pairs.i], np.r_[pairs.j], np.where(exact, 1.0, pairs.sim), cfg.thresholds,
                          method=cfg.method, resolution=cfg.resolution, seed=cfg.seed)
    stats.update(res.stats)
    plan = pa.table({
        "id": pa.array(ids, pa.string()),
        "dup_group": pa.array([int(g) if g >= 0 else None for g in res.group], pa.int64()),
        "dup_keep": pa.array(res.keep.tolist(), pa.bool_()),
        "dup_of": pa.array([ids[k] if k >= 0 else None for k in res.dup_of], pa.string()),
        "dup_reason": pa.array(res.reason, pa.string()),
        "dup_sim": pa.array([None if not np.isfinite(s) else float(s) for s in res.sim], pa.float32()),
    })
    return {"plan": plan, "stats": stats, "curve": curve, "notes": notes, "dataset_version": ds.version}


def _report_html(result: dict, cfg: DedupConfig) -> str:
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["threshold"] for c in curve], [100 * c["removed_fraction"] for c in curve], marker="o")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("rows removed (%)")
    ax.set_title("removal fraction per threshold")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    rows = "".join(f"<tr><td>{c['threshold']:.2f}</td><td>{c['edges']}</td><td>{c['groups']}</td><td>{c['removed']}</td>"
                   f"<td>{100 * c['removed_fraction']:.2f}%</td></tr>" for c in curve)
    s = result["stats"]
    stat_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in s.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>dedup report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>Duplicates at dataset v{result['dataset_version']}</h1>
<p>{s.get('removed', 0)} of {s['rows']} rows ({100 * s.get('removed_fraction', 0):.2f}%) are duplicates of a better row
in {s.get('groups', 0)} groups (method {html.escape(cfg.method)}, resolution {cfg.resolution}).</p>
<ul>{notes}</ul><img src="data:image/png;base64,{img}">
<h2>Removal curve</h2><table><tr><th>threshold</th><th>edges</th><th>groups</th><th>removed</th><th>fraction</th></tr>{rows}</table>
<h2>Counters</h2><table>{stat_rows}</table></body></html>"""


class _DupApplyConfig(StageConfig):
    plan_path: str


class _DupApplyStage(Stage):
    """Writes a computed dedup plan as the dup_* columns (one commit, resumable per fragment)."""

    name = "dup_apply"
    config_model = _DupApplyConfig
    input_columns = ["id"]
    output_schema = DUP.schema
    batch_size = 8192

    num_cpus = 0.5

    def setup(self) -> None:
        import pyarrow.feather as feather

        plan = feather.read_table(self.config.plan_path)
        self.pos = {k: i for i, k in enumerate(plan.column("id").to_pylist())}
        self.plan = plan

    def process_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        idx = [self.pos.get(i, -1) for i in batch.column("id").to_pylist()]
        if min(idx, default=0) < 0:
            raise RuntimeError("row not in the dedup plan: the dataset changed while dedup ran; run it again")
        taken = self.plan.take(pa.array(idx, pa.int64()))
        for r in taken.column("dup_reason").to_pylist():
            if r:
                self.stats.count(f"duplicate_{r}")
        return pa.RecordBatch.from_arrays([taken.column(c).combine_chunks() for c in DUP.schema.names], schema=DUP.schema)


def run_dedup(store, cfg: DedupConfig, *, overwrite: bool = True, show_progress: bool = True) -> dict:
    """Find duplicates, print and save the removal curve + HTML report, then commit ``dup_*``."""
    import pyarrow.feather as feather

    from curation.runner import run_stage

    t0 = time.perf_counter()
    res = find_duplicates(store, cfg, show_progress=show_progress)
    v = res["dataset_version"]
    out_dir = Path(store.state_dir) / "vector"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / f"dedup-v{v}.html"
    report.write_text(_report_html(res, cfg), encoding="utf-8")
    store.write_json(f"vector/dedup-v{v}.json", {"stats": res["stats"], "curve": res["curve"], "notes": res["notes"]})
    for note in res["notes"]:
        console.print(f"  {note}")
    console.print("removal curve (threshold -> rows removed):")
    for c in res["curve"]:
        console.print(f"  {c['threshold']:.2f}  {c['removed']:>8}  {100 * c['removed_fraction']:6.2f}%  ({c['groups']} groups)")
    s = res["stats"]
    console.print(f"duplicates: {s['removed']} of {s['rows']} rows in {s['groups']} groups, by reason {s['removed_by_reason']}; "
                  f"report {report}")
    summary = {"report": str(report), **{k: s[k] for k in ("rows", "groups", "removed", "removed_fraction", "removed_by_reason")}}
    if cfg.dry_run:
        summary["status"] = "dry_run"
        return summary
    plan_path = out_dir / f"dedup-plan-v{v}.arrow"
    feather.write_feather(res["plan"], str(plan_path))
    result = run_stage(store, _DupApplyStage(plan_path=str(plan_path)), overwrite=overwrite, show_progress=show_progress)
    summary.update({"status": result.status, "version": result.version, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


@register_step("dedup", DedupConfig, doc="exact + near + semantic duplicates as Leiden communities; best row kept")
def _dedup_step(ctx, cfg: DedupConfig) -> dict:
    from curation.schema import COLUMN_GROUPS

    have = set(ctx.store.open().schema.names)
    if not ctx.overwrite and not cfg.dry_run and set(COLUMN_GROUPS["dup"].columns) <= have:
        print("dedup: dup_* columns already present; pass --overwrite to recompute")  # a re-run pipeline
        return {"status": "skipped"}
    return run_dedup(ctx.store, cfg, overwrite=True, show_progress=ctx.show_progress)
