"""``dedup`` (step, ``curate dedup``): exact + near + semantic duplicates as graph communities.

Best row kept, a removal-fraction curve per threshold (HTML report), then the ``dup_*`` columns
committed as one version through the stage runner (``--dry-run`` stops before).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from curation.registry import register_step
from curation.schema import DUP, EXACT_DUP, VEC_VISUAL
from curation.stage import Stage, StageConfig
from engines.vector.dedup import NearDupConfig, SemanticConfig
from engines.vector.index import IndexConfig
from pipelines.descriptors import ensure_visual

console = Console(stderr=True)
log = logging.getLogger(__name__)


class CandidateIndexConfig(IndexConfig):
    """The index over every row's 12 descriptors (the near-duplicate candidates): ``IndexConfig``
    with the dedup job's own defaults, which a partial ``index:`` section in a config keeps
    (8 lists probed per query; an HNSW quantiser from 4,096 lists).

    Kinds: auto = exact below ``flat_max`` vectors, else IVF-Flat (exact cosines in the lists);
    ``ivffp16`` and ``ivfsq8`` hold the lists as float16 or 8-bit codes: a half and a quarter of
    the disk and page cache (at 1M rows, ~5.5 and 2.8 GB measured instead of 10.7), cosines
    within ~1e-4 and ~3e-3 of the exact ones, so a pair at the edge of a threshold can fall
    either way."""

    nprobe: int = Field(8, ge=1, description="IVF lists searched per query")
    hnsw_lists: int = Field(4096, ge=1, description="from this many lists on, an HNSW coarse quantiser")


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    near: NearDupConfig = Field(default_factory=NearDupConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    semantic_column: Optional[str] = Field(
        "auto", description="embedding column for semantic duplicates; auto = prof_clip_image when made by real weights; null = off"
    )
    keeper: Literal["original", "quality"] = Field(
        "original",
        description="original: a group keeps the copy with clearly more pixels, then more bytes per pixel, then a "
        "higher JPEG quality, then the best quality_column; quality: the best quality_column alone",
    )
    quality_column: Optional[str] = Field(None, description="score that picks the kept row; default prof_quality, else image area")
    quality_higher_is_better: bool = True
    method: str = Field("leiden", pattern="^(leiden|louvain|components)$")
    resolution: float = Field(0.1, gt=0, description="CPM density a group must beat (Leiden)")
    seed: int = 0
    thresholds: list[Annotated[float, Field(ge=-1.0, le=1.0)]] = Field(
        default_factory=lambda: [0.80, 0.85, 0.90, 0.95, 0.98],
        min_length=1,
        description="similarity thresholds of the removal curve (cosines, -1..1)",
    )
    pairs_per_unit: int = Field(2000, ge=1, description="candidate pairs verified per block (images of one block decoded together)")
    communities_max_edges: int = Field(
        2_000_000,
        ge=0,
        description="above this many accepted pairs, communities are "
        "found per connected component, batches of components on Ray workers (the same groups)",
    )
    rows_per_unit: int = Field(
        50_000, ge=1, description="rows per Ray unit of the candidate and verification phases (bounds worker memory)"
    )
    index: CandidateIndexConfig = Field(
        default_factory=CandidateIndexConfig,
        description="the index over every row's 12 descriptors (candidates); kind auto = exact "
        "below flat_max vectors, else IVF-Flat (exact cosines in the lists); ivffp16 / ivfsq8 = "
        "float16 / 8-bit lists, 1/2 and 1/4 of the disk",
    )
    resources: dict[Literal["index", "candidates", "verify"], dict[str, float]] = Field(
        default_factory=dict,
        description="custom Ray resources the actors of a phase require, e.g. {candidates: {bigmem: 1}} "
        "puts the candidate search on nodes started with --resources '{\"bigmem\": 1}' (placement only: the same groups)",
    )
    scan_pass_bytes: Optional[int] = Field(
        None,
        ge=1,
        description="candidate lists scanned per pass of the candidate phase (default a third of the node's memory): "
        "lists larger than this are searched range by range, each range staying in the page cache while every "
        "unit scans it (the same pairs for any value; each pass reads the descriptors again)",
    )
    scan_group_rows: Optional[int] = Field(
        None,
        ge=1,
        description="rows whose queries scan the candidate lists together (default: enough that each list visit "
        "meets ~32 queries, in whole units of rows_per_unit, within 3 GiB of queries an actor; the same pairs for any value)",
    )
    dry_run: bool = Field(False, description="report the curve and groups, commit nothing")
    keep: bool = Field(
        True,
        description="keep what the next run after an append extends: the candidate search (the index of every "
        "row's descriptors, each row's best matches) and the verified pairs (docs/vector.md, day after day); "
        "false: use and keep none of it, and once this run commits delete what an earlier run kept",
    )

    @field_validator("index", mode="before")
    @classmethod
    def _index_fields_set(cls, v: Any) -> Any:
        """A plain ``IndexConfig`` (Python callers) gives the fields it sets; the rest keep the
        dedup defaults, as a partial ``index:`` section in YAML does."""
        return v.model_dump(exclude_unset=True) if type(v) is IndexConfig else v


def _quality(t: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, str]:
    """The keeper's quality score of the rows in ``t`` (``_row_signals``), and its name."""
    names = t.column_names
    col = cfg.quality_column or ("prof_quality" if "prof_quality" in names else None)
    if col:
        q = np.asarray(t.column(col).to_numpy(zero_copy_only=False), np.float64)
        return q, col
    w = np.asarray(t.column("width").fill_null(0).to_numpy(), np.float64)
    h = np.asarray(t.column("height").fill_null(0).to_numpy(), np.float64)
    return w * h, "image area (width x height)"


def _originality(store, ds, t: pa.Table, rows: np.ndarray, cfg: DedupConfig):
    """The keeper rule's signals (``engines.vector.dedup.Originality``) of the rows with a pair
    (``rows``: only they can be in a group), or None for ``keeper: quality``. Sizes come from
    ``t`` (``_row_signals``); encoded bytes and JPEG quality from Ray tasks that read those rows'
    image bytes, so the driver receives two floats per such row and never an image."""
    from engines.vector.dedup import Originality

    if cfg.keeper != "original":
        return None
    sig = np.full((len(rows), 4), np.nan)  # encoded bytes, JPEG quality, colour planes, framed
    if len(rows) and "image" in ds.schema.names:
        chunks = np.array_split(rows, -(-len(rows) // cfg.pairs_per_unit))
        cols = [c for c in ("format", "vec_desc", "vec_regions") if c in ds.schema.names]
        for pos, got in _encoding_on_ray(store, ds.version, chunks, cols, cfg.resources.get("verify", {})):
            sig[np.searchsorted(rows, pos)] = got
    w = t.column("width").fill_null(0).to_numpy()
    h = t.column("height").fill_null(0).to_numpy()
    return Originality.of(w, h, sig[:, 0], sig[:, 1], framed=sig[:, 3], planes=sig[:, 2])


def _captioned(store, ds, rows: np.ndarray, cfg: DedupConfig) -> np.ndarray | None:
    """Whether each row with a pair (``rows``) has a caption (a non-blank caption text, or a
    reviewer's ``rev_caption``), read by Ray tasks; None when the dataset has no caption column."""
    import ray

    cols = [c for c in ("captions", "rev_caption") if c in ds.schema.names]
    if "captions" not in cols or not len(rows):
        return None
    task = ray.remote(num_cpus=1, **({"resources": cfg.resources["verify"]} if cfg.resources.get("verify") else {}))(_captioned_unit)
    chunks = np.array_split(rows, -(-len(rows) // cfg.pairs_per_unit))
    return np.concatenate(ray.get([task.remote(store, ds.version, c, cols) for c in chunks]))


def _captioned_unit(store, version: int, pos: np.ndarray, cols: list[str]) -> np.ndarray:
    t = store.open(version).take(pos.tolist(), columns=cols)
    caps = t.column("captions").combine_chunks()
    text = pc.utf8_trim_whitespace(pc.struct_field(pc.list_flatten(caps), "text").fill_null(""))
    parent = pc.list_parent_indices(caps).to_numpy(zero_copy_only=False)
    has = np.bincount(parent, weights=pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False), minlength=len(pos)) > 0
    if "rev_caption" in cols:
        rev = pc.utf8_length(pc.utf8_trim_whitespace(t.column("rev_caption").fill_null(""))).to_numpy(zero_copy_only=False)
        has |= np.asarray(rev) > 0
    return has


def _encoding_on_ray(store, version: int, chunks: list[np.ndarray], cols: list[str], resources: dict):
    """(positions, signals) per chunk of row positions (``_encoding_unit``), one Ray task each."""
    import ray

    task = ray.remote(num_cpus=1, **({"resources": resources} if resources else {}))(_encoding_unit)
    return ray.get([task.remote(store, version, c, cols) for c in chunks])


def _encoding_unit(store, version: int, pos: np.ndarray, cols: list[str], batch: int = 256):
    """Encoded size, JPEG quality, colour planes and surroundings (1 = a frame or screenshot
    around the photo, ``has_content_box``) of the rows at ``pos``, ``batch`` rows at a time."""
    from engines.vector.dedup import encoding_info

    ds = store.open(version)
    out = np.full((len(pos), 4), np.nan)
    for s in range(0, len(pos), batch):
        t = ds.take(pos[s : s + batch].tolist(), columns=["image", *cols])
        fmts = t.column("format").to_pylist() if "format" in cols else [None] * t.num_rows
        out[s : s + batch, :3] = [encoding_info(d, f) for d, f in zip(t.column("image").to_pylist(), fmts)]
        if "vec_regions" in cols:
            out[s : s + batch, 3] = _surroundings(t)
    return pos, out


def _surroundings(t: pa.Table) -> np.ndarray:
    """Per row of ``t``: 1.0 when its content box is another picture than its full frame (a photo
    inside a frame, a screenshot, bars), 0.0 when not, NaN without descriptors."""
    from engines.vector.dedup import has_content_box
    from engines.vector.index import clean_vectors, to_matrix

    full, valid, _ = clean_vectors(*to_matrix(t.column("vec_desc")))  # unit length, as the candidates read them
    reg, rnull = to_matrix(t.column("vec_regions"), unit=full.shape[1])
    boxed = has_content_box(full, reg.reshape(len(full), -1, full.shape[1])).astype(np.float64)
    return np.where(valid & ~rnull, boxed, np.nan)


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
        return None, (
            "semantic duplicates skipped: prof_clip_image was made by randomly initialised weights "
            "(or the model is unrecorded); similarities would be noise"
        )
    return "prof_clip_image", f"semantic duplicates over prof_clip_image ({rec.get('model')})"


def _check_quality_column(ds, cfg: DedupConfig) -> None:
    """A misspelt ``quality_column`` is named before the long phases start, not after them."""
    from engines.vector.index import VectorError

    names = ds.schema.names
    if cfg.quality_column and cfg.quality_column not in names:
        raise VectorError(f"quality_column {cfg.quality_column!r} not in the dataset; columns: {', '.join(names)}")
    if cfg.quality_column:
        kind = ds.schema.field(cfg.quality_column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            numeric = [f.name for f in ds.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
            raise VectorError(
                f"quality_column {cfg.quality_column!r} is not numeric ({kind}); pick a score column, e.g. {', '.join(numeric[:12])}"
            )


def _row_signals(ds, rows: np.ndarray, cfg: DedupConfig) -> pa.Table:
    """Size and quality of the rows with a pair (``rows``, ascending positions), the keeper's
    inputs: read for those rows only, so the driver holds nothing per row but the ids."""
    cols = ["width", "height"]
    if cfg.quality_column is None and "prof_quality" in ds.schema.names:
        cols.append("prof_quality")
    if cfg.quality_column:
        cols.append(cfg.quality_column)
    cols = list(dict.fromkeys(cols))
    if not len(rows):
        return pa.table({c: pa.array([], ds.schema.field(c).type) for c in cols})
    step = 1 << 20  # bounded Python lists on the way into the take
    return pa.concat_tables([ds.take(rows[s : s + step].tolist(), columns=cols) for s in range(0, len(rows), step)])


def _config_key(cfg: DedupConfig) -> str:
    """Names the state folder of a run: the same dataset version and near/index settings resume it."""
    import hashlib

    blob = json.dumps(
        {
            "near": cfg.near.model_dump(),
            "index": cfg.index.model_dump(),
            "rows": cfg.rows_per_unit,
            "block": cfg.pairs_per_unit,
            "keeper": cfg.keeper,
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def find_duplicates(store, cfg: DedupConfig, *, show_progress: bool = True) -> dict:
    """Groups, kept rows and the removal curve, without committing. Returns the plan.

    The driver holds the row ids, the accepted pairs, the signals of the rows with a pair and
    the group table; hashes, descriptors, images and candidate pairs stay on Ray workers and in
    Lance (``pipelines.dedup_exact``, ``pipelines.dedup_candidates``)."""
    from engines.vector.dedup import Pairs
    from engines.vector.index import VectorError
    from pipelines.dedup_candidates import NearJob, near_pairs_on_ray
    from pipelines.dedup_exact import exact_pairs_on_ray

    ensure_visual(store, show_progress, dry_run=cfg.dry_run)
    ds = store.open()
    n = ds.count_rows()
    if n == 0:
        raise VectorError("the dataset is empty: nothing to deduplicate")
    _check_quality_column(ds, cfg)
    ids = ds.to_table(columns=["id"]).column("id")
    notes: list[str] = []
    stats: dict[str, Any] = {"rows": n}
    job = NearJob(
        store,
        ds,
        cfg.near,
        cfg.index,
        cfg.rows_per_unit,
        _config_key(cfg),
        cfg.resources,
        cfg.scan_pass_bytes,
        cfg.scan_group_rows,
        keep=cfg.keep,
    )
    if job.largest_unit > cfg.rows_per_unit:  # a unit is whole files: say so, or the setting seems ignored
        notes.append(
            f"rows_per_unit {cfg.rows_per_unit:,}: units are whole data files, the largest has "
            f"{job.largest_unit:,} rows; write the dataset in smaller files (max_rows_per_file) for smaller units"
        )
    t0 = time.perf_counter()
    first, later = exact_pairs_on_ray(job, show_progress)
    pairs = Pairs.of(first, later, np.ones(len(later)), "exact")
    stats.update({"exact_pairs": len(pairs), "exact_seconds": round(time.perf_counter() - t0, 2)})
    no_desc, flagged = _counts_on_ray(store, ds.version, "exact_dup_of" in ds.schema.names)
    if flagged is not None:  # ingest's flags, to be read side by side with dedup's count
        stats["exact_flagged_at_ingest"] = flagged
    if no_desc:
        notes.append(f"rows without a usable descriptor (exact duplicates only): {{'null_vector': {no_desc}}}")
    if "prof_phash" not in ds.schema.names:
        notes.append("prof_phash absent: perceptual-hash signal skipped (descriptors + local features decide)")
    i, j, sim, crop, nstats = near_pairs_on_ray(
        job, show_progress=show_progress, block=cfg.pairs_per_unit, geometry=cfg.keeper == "original"
    )
    stats.update(nstats)
    pairs = pairs + Pairs.of(i, j, sim, "near")
    t0 = time.perf_counter()
    sem, why = _semantic_pairs(store, ds, cfg, ids, show_progress)
    stats["semantic_seconds"] = round(time.perf_counter() - t0, 2)
    notes.append(why)
    if sem is not None:
        stats["semantic_pairs"] = len(sem)
        pairs = pairs + sem
    res, curve = _groups(store, ds, n, pairs, (i, j, crop), cfg, stats, notes)
    stats["groups_seconds"] = round(time.perf_counter() - t0 - stats["semantic_seconds"], 2)  # communities + curve
    return {
        "plan": _plan_table(ids, *res),
        "stats": stats,
        "curve": curve,
        "notes": notes,
        "dataset_version": ds.version,
        "state": str(job.folder),
    }


def _counts_on_ray(store, version: int, flags: bool) -> tuple[int, int | None]:
    """Rows without a descriptor, and rows ingest flagged as exact copies (None: no such column),
    counted in a Ray task: the scan reads the descriptor column (~0.5 GB at 1M rows); in the
    driver it left ~300 MiB private memory behind for the rest of the job (measured at 1M)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(_counts).remote(store, version, flags))


def _counts(store, version: int, flags: bool) -> tuple[int, int | None]:
    ds = store.open(version)
    flagged = ds.count_rows(filter="exact_dup_of IS NOT NULL") if flags else None
    return ds.count_rows(filter="vec_desc IS NULL"), flagged


def _groups(store, ds, n: int, pairs, near, cfg: DedupConfig, stats: dict, notes: list[str]):
    """Communities, kept rows and the removal curve over the rows with a pair (the only rows that
    can be in a group: ``rows_with_pairs``). Returns ((rows, DupResult over them), curve)."""
    from engines.vector.dedup import REASONS, group_duplicates, rows_with_pairs
    from engines.vector.graph import removal_curve

    rows, local = rows_with_pairs(pairs)
    t = _row_signals(ds, rows, cfg)
    quality, q_name = _quality(t, cfg)
    originality = _originality(store, ds, t, rows, cfg)
    i, j, crop = near
    if originality is not None:  # (crop row, the row it was cut from), from verification
        c = crop != 0
        whole = np.where(crop > 0, j, i)[c]
        originality.crops = (np.searchsorted(rows, np.where(crop > 0, i, j)[c]), np.searchsorted(rows, whole))
        stats["crop_pairs"] = int(c.sum())
    better = f"best {q_name} ({'higher' if cfg.quality_higher_is_better else 'lower'} is better)"
    if originality is None:
        notes.append(f"kept row = a row with a caption where the group has one, then the {better}")
    else:
        notes.append(
            "kept row = a row with a caption where the group has one, then the original: not a framed or screenshot copy of "
            "a smaller bare one, then clearly more pixels (>10%), then more bytes per pixel (>1.5x, among copies of one "
            f"encoding), then a higher JPEG quality (>5, among JPEGs), then not a crop of another copy, then the {better}"
        )
    split = {"by_component": len(pairs) > cfg.communities_max_edges, "map_fn": _ray_map}
    if split["by_component"]:
        notes.append(f"{len(pairs):,} accepted pairs > communities_max_edges: communities per connected component on Ray")
    m = len(rows)
    kw = {"method": cfg.method, "resolution": cfg.resolution, "seed": cfg.seed, **split}
    captioned = _captioned(store, ds, rows, cfg)
    res = group_duplicates(
        m, local, quality, higher_is_better=cfg.quality_higher_is_better, originality=originality, captioned=captioned, **kw
    )
    exact = local.reason == REASONS.index("exact")
    curve = removal_curve(m, local.i, local.j, np.where(exact, 1.0, local.sim), cfg.thresholds, total=n, **kw)
    stats.update(res.stats)
    stats.update({"rows": n, "rows_with_pairs": m, "removed_fraction": res.stats["removed"] / n})
    return (rows, res), curve


def _ray_map(fn, items):
    """``map`` on Ray: one task per item (a batch of components), results in order."""
    import ray

    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(x) for x in items])


def _plan_table(ids: pa.ChunkedArray, rows: np.ndarray, res) -> pa.Table:
    """The group table: one row per dataset row; ``res`` holds the rows with a pair (``rows``),
    every other row is kept and in no group (ids taken by position, never as a Python list).
    Besides the ``dup_*`` columns, ``keeper_why``: what made the kept row win over a removed one
    (``KEEPER_WHY``: resolution, bytes per pixel, JPEG quality, crop of it, quality, earlier row)."""
    n = len(ids)
    at = np.full(n, -1, np.int64)  # the row's place in ``res``
    at[rows] = np.arange(len(rows))
    spread = pa.array(at, mask=at < 0)  # a take by this gives null to rows without a pair
    group = np.full(n, -1, np.int64)
    group[rows] = res.group
    keep = np.ones(n, bool)
    keep[rows] = res.keep
    dup_of = np.full(n, -1, np.int64)
    dup_of[rows] = np.where(res.dup_of >= 0, rows[np.maximum(res.dup_of, 0)], -1)
    sim = np.full(n, np.nan, np.float32)
    sim[rows] = res.sim
    ids = ids.combine_chunks() if len(ids) else pa.array([], pa.string())
    # the keeper's id, null where none: one take with null positions (a take of every row's
    # keeper then an if_else held two more id columns: ~0.5 GB of the driver at 10M rows)
    kept_id = ids.take(pa.array(dup_of, pa.int64(), mask=dup_of < 0)) if n else ids
    why = res.why or [None] * len(rows)
    return pa.table(
        {
            "id": ids,
            "dup_group": pa.array(np.where(group >= 0, group, 0), pa.int64(), mask=group < 0),
            "dup_keep": pa.array(keep, pa.bool_()),
            "dup_of": kept_id,
            "dup_reason": pa.array(res.reason, pa.string()).take(spread),
            "dup_sim": pa.array(np.nan_to_num(sim), pa.float32(), mask=~np.isfinite(sim)),
            "keeper_why": pa.array(why, pa.string()).take(spread),
        }
    )


def _semantic_pairs(store, ds, cfg: DedupConfig, ids: pa.ChunkedArray, show_progress: bool):
    """Semantic pairs read from the ``curate knn`` graph of the embedding column (built or brought
    up to date first when missing, made with a smaller k, or older than the column), or SemDeDup.
    Returns (Pairs or None, a note for the report)."""
    from engines.vector.dedup import semantic_pairs

    col, why = _semantic_column(store, ds, cfg)
    if col is None:
        return None, why
    if cfg.semantic.method == "semdedup":  # on Ray: the driver never holds the column
        import hashlib

        from pipelines.semdedup import semdedup_on_ray

        blob = json.dumps({"semantic": cfg.semantic.model_dump(), "column": col, "rows": cfg.rows_per_unit}, sort_keys=True)
        key = hashlib.sha1(blob.encode()).hexdigest()[:10]
        folder = Path(store.state_dir) / "vector" / f"semdedup-v{ds.version}-{key}"
        sem = semdedup_on_ray(store, ds, col, cfg.semantic, folder, show_progress, rows_per_unit=cfg.rows_per_unit)
        shutil.rmtree(folder, ignore_errors=True)  # the pairs are in memory: the checkpoints served their purpose
        return sem, why + " (SemDeDup on Ray)"
    graph = _fresh_knn(store, ds, col, cfg.semantic.k, show_progress)
    # only edges above the threshold leave Lance (a filtered scan); ids become row positions once
    edges = graph.to_table(
        columns=["source_id", "neighbour_id", "similarity"],
        filter=f"similarity >= {float(cfg.semantic.threshold)!r} AND rank <= {int(cfg.semantic.k)}",
    )
    s, d = (
        pa.compute.index_in(edges.column(c), value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        for c in ("source_id", "neighbour_id")
    )
    sim = edges.column("similarity").to_numpy().astype(np.float32)
    return semantic_pairs(s, d, sim, cfg.semantic.threshold), why + f" (k-NN graph, k={cfg.semantic.k})"


def _fresh_knn(store, ds, column: str, k: int, show_progress: bool):
    """The k-NN graph of ``column``, rebuilt (index brought up to date, then the graph) when it is
    missing, has fewer than ``k`` neighbours per row, or was built from other values of the column."""
    from engines.vector.index import StaleIndexError, column_fingerprint
    from pipelines.index import IndexBuildConfig, build_index
    from pipelines.knn import KnnConfig, build_knn, open_knn

    summary = store.read_json(f"vector/knn-{column}.json")
    fp = column_fingerprint(ds, column)
    if summary and summary.get("fingerprint") == fp and summary.get("k", 0) >= k:
        return open_knn(store, column)
    why = "missing" if not summary else (f"built with k={summary.get('k')}" if summary.get("k", 0) < k else "older than the column")
    console.print(f"dedup: the k-NN graph of {column!r} is {why}; building it (curate index build + curate knn)", markup=False)
    try:
        build_index(store, IndexBuildConfig(column=column), show_progress=show_progress)
    except StaleIndexError:  # the column was rewritten: an incremental add cannot fix that index
        console.print(f"dedup: the index of {column!r} predates the column's values; rebuilding it", markup=False)
        build_index(store, IndexBuildConfig(column=column, rebuild=True), show_progress=show_progress)
    build_knn(store, KnnConfig(column=column, k=max(k, (summary or {}).get("k", 0))), show_progress=show_progress)
    return open_knn(store, column)


def _report_html(result: dict, cfg: DedupConfig, store=None) -> str:
    """The dedup report page (``curation/templates/dedup_report.html``): the removal curve as a plot
    and a table, the notes and the counters. Notes and counter values can quote row ids and
    captions, so they reach the page only through the autoescaping template."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation.reports import png_data_uri, render
    from pipelines.report import dedup_group_strips  # thumbnails of the largest groups, read by position

    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["threshold"] for c in curve], [100 * c["removed_fraction"] for c in curve], marker="o")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("rows removed (%)")
    ax.set_title("removal fraction per threshold")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    s = result["stats"]
    return render(
        "dedup_report.html",
        version=result["dataset_version"],
        removed=s.get("removed", 0),
        rows=s["rows"],
        removed_pct=f"{100 * s.get('removed_fraction', 0):.2f}%",
        groups=s.get("groups", 0),
        method=cfg.method,
        resolution=cfg.resolution,
        notes=list(result["notes"]),
        curve_plot=png_data_uri(fig, dpi=110),
        curve=[
            {
                "threshold": f"{c['threshold']:.2f}",
                "edges": c["edges"],
                "groups": c["groups"],
                "removed": c["removed"],
                "fraction": f"{100 * c['removed_fraction']:.2f}%",
            }
            for c in curve
        ],
        counters=[(str(k), json.dumps(v)) for k, v in s.items()],
        group_strips=dedup_group_strips(store.open(version=result["dataset_version"]), result["plan"]) if store is not None else [],
    )


class _DupApplyConfig(StageConfig):
    plan_path: str


class _DupApplyStage(Stage):
    """Writes a computed dedup plan as the dup_* columns (one commit, resumable per fragment).

    The plan file holds the rows in a group only, sorted by fragment, with each fragment's range
    of plan rows in its metadata (``write_plan``); every other row is kept and in no group. A
    worker memory-maps the file and, per fragment, looks up that fragment's grouped ids only:
    a lookup of every grouped row (a Python dict, ~100 B an id) would be GBs per worker at 1B
    rows, and one of every row's id was ~150 MB per worker at 1M rows."""

    name = "dup_apply"
    config_model = _DupApplyConfig
    input_columns = ["id"]
    output_schema = DUP.schema
    batch_size = 8192

    num_cpus = 0.5

    def setup(self) -> None:
        import pyarrow.feather as feather

        self.plan = feather.read_table(self.config.plan_path, memory_map=True)  # uncompressed: pages, not copies
        self.ranges = {int(k): v for k, v in json.loads(self.plan.schema.metadata[b"fragments"]).items()}
        self.part, self.pos = self.plan, None  # before any begin_fragment: the whole plan (right, not lean)

    def begin_fragment(self, fragment_id: int) -> None:
        lo, hi = self.ranges.get(fragment_id, (0, 0))
        self.part, self.pos = self.plan.slice(lo, hi - lo), None

    def process_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.pos is None:  # the fragment's grouped ids, looked up by the fragment's batches
            self.pos = {k: i for i, k in enumerate(self.part.column("id").to_pylist())}
        idx = np.array([self.pos.get(i, -1) for i in batch.column("id").to_pylist()], np.int64)
        taken = self.part.take(pa.array(idx, mask=idx < 0))  # a row in no group: nulls, then kept
        for r in taken.column("dup_reason").to_pylist():
            if r:
                self.stats.count(f"duplicate_{r}")
        cols = {c: taken.column(c).combine_chunks() for c in DUP.schema.names}
        cols["dup_keep"] = cols["dup_keep"].fill_null(True)
        return pa.RecordBatch.from_arrays([cols[c] for c in DUP.schema.names], schema=DUP.schema)


def write_plan(plan: pa.Table, ds, path: Path) -> None:
    """The plan's grouped rows (``plan``: one row per dataset row, in position order), sorted by
    the fragment that holds them, to an uncompressed Arrow file (memory-mappable) whose metadata
    gives each fragment's range of its rows (``_DupApplyStage``)."""
    import pyarrow.feather as feather

    frags = ds.get_fragments()
    ends = np.cumsum([f.count_rows() for f in frags])
    fids = np.array([f.fragment_id for f in frags], np.int64)
    pos = np.flatnonzero(plan.column("dup_group").is_valid().to_numpy(zero_copy_only=False))
    fid = fids[np.searchsorted(ends, pos, side="right")]
    order = np.argsort(fid, kind="stable")
    fid = fid[order]
    grouped = plan.take(pa.array(pos[order]))
    starts = np.flatnonzero(np.r_[True, fid[1:] != fid[:-1]]) if len(fid) else np.zeros(0, np.int64)
    ranges = {int(fid[s]): [int(s), int(e)] for s, e in zip(starts, np.r_[starts[1:], len(fid)])}
    grouped = grouped.replace_schema_metadata({"fragments": json.dumps(ranges)})
    tmp = path.with_suffix(".tmp")
    feather.write_feather(grouped, str(tmp), compression="uncompressed")
    tmp.replace(path)


_LAST = "vector/dedup-last.json"
_INPUT_COLUMNS = ("id", "image", "format", "width", "height", "captions", "rev_caption", "vec_desc", "vec_regions", "prof_phash")
# settings that change where or how the work runs, never the groups (their descriptions say so)
_PLACEMENT = {"dry_run", "keep", "resources", "scan_pass_bytes", "scan_group_rows", "communities_max_edges"}


def _result_key(ds, cfg: DedupConfig) -> dict[str, str]:
    """What the groups follow from: the settings (placement aside) and, per fragment, the files
    holding the columns dedup reads (``curation.incremental.input_sig``) and its deleted rows.
    Metadata only: no row is read."""
    from curation.incremental import _field_ids, input_sig

    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _PLACEMENT}
    semantic = "prof_clip_image" if cfg.semantic_column == "auto" else cfg.semantic_column
    names = [c for c in (*_INPUT_COLUMNS, cfg.quality_column or "prof_quality", semantic) if c and c in ds.schema.names]
    ids = set().union(*_field_ids(ds, names).values())
    frags = [(f.fragment_id, input_sig(f.metadata, ids), repr(f.metadata.deletion_file)) for f in ds.get_fragments()]
    return {"settings": _digest(settings), "inputs": _digest(frags)}


def _digest(x: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


def up_to_date(store, cfg: DedupConfig) -> dict | None:
    """The last committed run's record when nothing it follows from changed since (no row added,
    removed or re-profiled, the same settings) and its ``dup_*`` columns are still there; else None."""
    last = store.read_json(_LAST)
    ds = store.open()
    if not last or "dup_keep" not in ds.schema.names or last.get("key") != _result_key(ds, cfg):
        return None
    return last


def run_dedup(store, cfg: DedupConfig, *, overwrite: bool = True, show_progress: bool = True) -> dict:
    """Find duplicates, print and save the removal curve + HTML report, then commit ``dup_*``.
    Without ``overwrite``, a dataset whose groups are up to date (:func:`up_to_date`) is left
    as it is: the same groups again would only commit another version."""
    from curation.runner import run_stage

    t0 = time.perf_counter()
    if not cfg.dry_run and not overwrite and (last := up_to_date(store, cfg)) is not None:
        console.print(
            f"dedup: up to date: no row added, removed or changed, and the same settings, since version {last['version']} "
            "committed the dup_* columns; pass --overwrite to compute them anew"
        )
        return {"status": "up_to_date", "version": last["version"], "report": last.get("report", "")}
    res = find_duplicates(store, cfg, show_progress=show_progress)
    v = res["dataset_version"]
    out_dir = Path(store.state_dir) / "vector"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / f"dedup-v{v}.html"
    report.write_text(_report_html(res, cfg, store), encoding="utf-8")
    store.write_json(f"vector/dedup-v{v}.json", {"stats": res["stats"], "curve": res["curve"], "notes": res["notes"]})
    for note in res["notes"]:
        console.print(f"  {note}", markup=False)
    console.print("removal curve (threshold -> rows removed):")
    for c in res["curve"]:
        console.print(f"  {c['threshold']:.2f}  {c['removed']:>8}  {100 * c['removed_fraction']:6.2f}%  ({c['groups']} groups)")
    s = res["stats"]
    console.print(
        f"duplicates: {s['removed']} of {s['rows']} rows in {s['groups']} groups, by reason {s['removed_by_reason']}; report {report}"
    )
    console.print(_exact_line(s))
    if "verified_pairs" in s:
        checked = s["verified_pairs"] + s.get("geometry_pairs", 0)
        reused = s.get("verifications_reused", 0)
        console.print(f"local-feature checks: {checked:,} candidate pairs, {reused:,} of them taken from the last run (same images)")
    keys = ("rows", "groups", "removed", "removed_fraction", "removed_by_reason", "exact_copies", "exact_flagged_at_ingest")
    keys += ("verifications_reused",)
    summary = {"report": str(report), **{k: s[k] for k in keys if k in s}}
    if cfg.dry_run:
        summary["status"] = "dry_run"
        return summary
    now = store.open().version
    if now != v:  # rows written since would be committed as in no group
        from engines.vector.index import VectorError

        raise VectorError(f"the dataset changed while dedup ran (version {v} -> {now}); run curate dedup again")
    plan_path = out_dir / f"dedup-plan-v{v}.arrow"
    write_plan(res["plan"], store.open(version=v), plan_path)  # rows in a group, by fragment
    result = run_stage(store, _DupApplyStage(plan_path=str(plan_path)), overwrite=True, show_progress=show_progress)
    if result.status == "committed":  # the job's state served its purpose, but for what the next run extends
        key = _result_key(store.open(result.version), cfg)
        store.write_json(_LAST, {"version": result.version, "key": key, "report": str(report)})
        from pipelines.dedup_kept import drop_kept, drop_unkept

        if cfg.keep:
            drop_unkept(store, Path(res["state"]))
        else:
            drop_kept(store, Path(res["state"]))
    summary.update({"status": result.status, "version": result.version, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


def _exact_line(s: dict) -> str:
    """Exact copies in words: "exact" in the reasons counts only copies removed for their twin, so
    the number of byte-identical rows is said apart, next to what ingest flagged."""
    line = f"exact copies: {s['exact_copies']} rows have the same bytes as an earlier row"
    if "exact_flagged_at_ingest" in s:
        line += f" (ingest flagged {s['exact_flagged_at_ingest']})"
    moved = s["exact_copies"] - s["removed_by_reason"].get("exact", 0)
    if moved > 0:
        line += f"; {moved} of them removed as near/semantic: their group keeps a better copy of the same image"
    return line


@register_step(
    "dedup",
    DedupConfig,
    doc="exact + near + semantic duplicates as Leiden communities; best row kept",
    writes=frozenset(DUP.columns + VEC_VISUAL.columns + EXACT_DUP.columns),
)
def _dedup_step(ctx, cfg: DedupConfig) -> dict:
    """A re-run pipeline skips dedup only when its groups are up to date: rows ingested since (a
    pile that grows day after day) are grouped with the rest, extending the last run."""
    return run_dedup(ctx.store, cfg, overwrite=ctx.overwrite, show_progress=ctx.show_progress)
