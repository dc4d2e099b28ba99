"""SemDeDup on Ray: k-means on a sample, then each cluster's pairwise pass on a worker.

Why this shape: the in-memory ``engines.vector.dedup.semdedup_pairs`` holds every row's embedding
in one process. Here the driver holds the unit list, the centroids and the accepted pairs; the
embeddings are read, assigned and compared on workers, with the same pure pieces:

1. centroids: one task reads a random sample of rows (all rows when the dataset is small: the
   result then equals the in-memory path exactly) and trains spherical k-means on its valid rows
   (``semdedup_centroids``). FAISS trains on at most 256 points per centroid, so a sample of that
   size (capped by ``SAMPLE_MAX``) loses nothing.
2. assign: one task per unit of fragments reads the column, cleans the vectors as the in-memory
   path does (``to_matrix`` + ``clean_vectors``), labels each valid row with its nearest centroid
   and writes one file of (row position, cluster, vector) records sorted by bucket
   (``cluster % n_buckets``) plus the bucket offsets. One file per unit rather than per
   (unit, bucket): the file count stays linear in the data; a bucket reads only its slice
   (memory-mapped).
3. pairs: one task per bucket gathers its slice of every unit's file (each cluster lies wholly in
   one bucket) and returns the pairs above the threshold (``cluster_pairs``, in tiles).

Row positions are in fragment order (``fragment_units``), as everywhere in the dedup job. Every
phase is checkpointed under ``<folder>/semdedup/`` (files written to a temporary name, then
renamed): a killed run, re-run with the same folder, does only what is missing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console

from engines.vector.dedup import Pairs, SemanticConfig
from pipelines.descriptors import fragment_units

__all__ = ["SAMPLE_MAX", "semdedup_on_ray"]

console = Console(stderr=True)

SAMPLE_MIN = 50_000  # below this many rows, k-means sees every row (and equals the in-memory path)
SAMPLE_MAX = 1_000_000  # rows read to train the centroids, at most (256 per centroid otherwise)
PER_CENTROID = 256  # FAISS k-means' max_points_per_centroid: it never trains on more
MIN_BUCKETS = 4  # pairwise tasks at least (when there are as many clusters), for parallelism


def semdedup_on_ray(
    store,
    ds,
    column: str,
    cfg: SemanticConfig,
    folder: Path,
    show_progress: bool = True,
    *,
    rows_per_unit: int = 50_000,
    n_buckets: int | None = None,
    sample_max: int = SAMPLE_MAX,
    block: int = 2048,
) -> Pairs:
    """SemDeDup pairs (reason "semantic") of the embedding ``column`` of ``ds``, found on Ray.

    ``folder`` keeps the checkpoints; the caller names it by dataset version and settings (the
    plan stored there wins over ``n_buckets`` / ``sample_max`` on a resumed run) and removes it."""
    root = Path(folder) / "semdedup"
    root.mkdir(parents=True, exist_ok=True)
    units, n = fragment_units(ds.get_fragments(), rows_per_unit, 0)
    if n < 2:
        return Pairs.empty()
    plan = _plan(store, ds, column, cfg, root, n, rows_per_unit, n_buckets, sample_max)
    if plan is None:
        return Pairs.empty()
    _assign(store, ds, column, units, plan, root, show_progress)
    return _pairs(units, plan, cfg.threshold, root, block, show_progress)


# --- 1. centroids -------------------------------------------------------------------------------


def _train(store, version: int, column: str, n: int, n_clusters: int | None, seed: int, sample_max: int):
    """Ray task: centroids trained on a random sample of rows (all rows when few), and what was
    sampled. None when the whole column holds fewer than 2 valid vectors (nothing to pair)."""
    from engines.vector.dedup import default_clusters, semdedup_centroids
    from engines.vector.index import clean_vectors, to_matrix

    ds = store.open(version)
    want = min(n, sample_max, max(PER_CENTROID * (n_clusters or default_clusters(n)), SAMPLE_MIN))
    if want >= n:
        t = ds.to_table(columns=[column])
    else:
        pos = np.sort(np.random.default_rng(seed).choice(n, want, replace=False))
        t = ds.take(pos.tolist(), columns=[column])
    x, null = to_matrix(t.column(column))
    x, valid, _ = clean_vectors(x, null)
    x = np.ascontiguousarray(x[valid])
    if len(x) < (2 if want >= n else 1):
        return None
    valid_rows = len(x) if want >= n else round(n * len(x) / want)  # estimated from the sample
    c = min(n_clusters or default_clusters(valid_rows), len(x))
    meta = {"rows": n, "sample": want, "valid_sample": len(x), "valid_rows": valid_rows, "n_clusters": c}
    return semdedup_centroids(x, c, seed), meta


def _plan(store, ds, column, cfg: SemanticConfig, root: Path, n, rows_per_unit, n_buckets, sample_max) -> dict | None:
    """The centroids and the bucket count (checkpointed: a resumed run keeps both)."""
    import ray

    plan_path, cent_path = root / "plan.json", root / "centroids.npy"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        return {**plan, "centroids": np.load(cent_path)} if plan["n_clusters"] else None
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=1)(_train)
    out = ray.get(task.remote(store, ds.version, column, n, cfg.n_clusters, cfg.seed, sample_max))
    if out is None:
        _write_json(plan_path, {"n_clusters": 0})
        return None
    centroids, meta = out
    c = meta["n_clusters"]
    meta["n_buckets"] = int(n_buckets or min(c, max(MIN_BUCKETS, math.ceil(meta["valid_rows"] / rows_per_unit))))
    _write_npy(cent_path, centroids)
    _write_json(plan_path, meta)  # last: marks the phase done
    console.print(
        f"semdedup: {c:,} clusters trained on {meta['valid_sample']:,} of {n:,} rows "
        f"({time.perf_counter() - t0:.1f}s); {meta['n_buckets']} pairwise buckets"
    )
    return {**meta, "centroids": centroids}


# --- 2. assign ----------------------------------------------------------------------------------


def _unit_paths(root: Path, unit: int) -> tuple[Path, Path]:
    """(records, bucket offsets) of one unit; the offsets file is written last (the unit is done)."""
    d = root / "assign"
    return d / f"unit-{unit}.npy", d / f"unit-{unit}.offsets.npy"


def _assign_unit(store, version: int, column: str, unit: dict, centroids: np.ndarray, n_buckets: int, root: str) -> int:
    """Ray task: the unit's valid rows labelled with their cluster, written sorted by bucket as
    (position, cluster, vector) records plus the bucket offsets. Returns the rows written."""
    from engines.vector.dedup import assign_clusters
    from engines.vector.index import VectorError, clean_vectors, to_matrix

    ds = store.open(version)
    t = pa.concat_tables([ds.get_fragment(f).to_table(columns=[column]) for f in unit["fragments"]])
    x, null = to_matrix(t.column(column))
    x, valid, _ = clean_vectors(x, null)
    d = centroids.shape[1]
    if valid.any() and x.shape[1] != d:
        raise VectorError(f"{column!r}: vectors of dimension {x.shape[1]} in some fragments and {d} in others")
    local = np.flatnonzero(valid)
    lab = assign_clusters(x[local], centroids)
    order = np.argsort(lab % n_buckets, kind="stable")  # within a bucket, rows stay in position order
    rec = np.empty(len(local), dtype=_record_dtype(d))
    rec["pos"] = unit["label_start"] + local[order]
    rec["cluster"] = lab[order]
    if len(local):
        rec["vec"] = x[local[order]]
    offsets = np.searchsorted((lab % n_buckets)[order], np.arange(n_buckets + 1)).astype(np.int64)
    data, done = _unit_paths(Path(root), unit["unit"])
    data.parent.mkdir(parents=True, exist_ok=True)
    _write_npy(data, rec)
    _write_npy(done, offsets)
    return len(rec)


def _record_dtype(d: int) -> np.dtype:
    return np.dtype([("pos", "<i8"), ("cluster", "<i8"), ("vec", "<f4", (d,))])


def _assign(store, ds, column, units: list[dict], plan: dict, root: Path, show_progress: bool) -> None:
    """Phase 2 over the units not yet written (resumable per unit)."""
    import ray

    todo = [u for u in units if not _unit_paths(root, u["unit"])[1].exists()]
    if not todo:
        return
    task = ray.remote(num_cpus=1)(_assign_unit)
    cent = ray.put(plan["centroids"])
    refs = [task.remote(store, ds.version, column, u, cent, plan["n_buckets"], str(root)) for u in todo]
    _wait_all(refs, f"semdedup: assign clusters ({len(units) - len(todo)} of {len(units)} units done before)", show_progress)


# --- 3. pairs -----------------------------------------------------------------------------------


def _bucket_pairs(unit_files: list[tuple[str, str]], bucket: int, threshold: float, block: int) -> Pairs:
    """Ray task: every same-cluster pair above ``threshold`` among the rows of one bucket, read
    from its slice of each unit's file (memory-mapped: only the bucket's bytes are read)."""
    from engines.vector.dedup import cluster_pairs

    parts = []
    for data, offsets in unit_files:
        s, e = np.load(offsets)[bucket : bucket + 2]
        if e > s:
            parts.append(np.array(np.load(data, mmap_mode="r")[s:e]))
    if not parts:
        return Pairs.empty()
    rec = np.concatenate(parts)
    return cluster_pairs(np.ascontiguousarray(rec["vec"]), rec["pos"], rec["cluster"], threshold, block)


def _pairs(units: list[dict], plan: dict, threshold: float, root: Path, block: int, show_progress: bool) -> Pairs:
    """Phase 3 over the buckets without a result (resumable per bucket); all buckets' pairs read
    back and returned sorted by (i, j), as the in-memory path returns them."""
    import ray

    out = root / "pairs"
    out.mkdir(exist_ok=True)
    nb = plan["n_buckets"]
    todo = [b for b in range(nb) if not (out / f"bucket-{b}.npz").exists()]
    files = [tuple(str(p) for p in _unit_paths(root, u["unit"])) for u in units]
    task = ray.remote(num_cpus=1)(_bucket_pairs)
    refs = {task.remote(files, b, threshold, block): b for b in todo}

    def save(ref, p: Pairs) -> None:
        _write_atomic(out / f"bucket-{refs[ref]}.npz", lambda f: np.savez(f, i=p.i, j=p.j, sim=p.sim))

    _wait_all(list(refs), f"semdedup: pairwise pass ({nb - len(todo)} of {nb} buckets done before)", show_progress, save)
    got = [np.load(out / f"bucket-{b}.npz") for b in range(nb)]
    i, j, s = (np.concatenate([g[k] for g in got]) for k in ("i", "j", "sim"))
    o = np.lexsort((j, i))
    pairs = Pairs.of(i[o], j[o], s[o], "semantic")
    console.print(f"semdedup: {len(pairs):,} pairs with cosine >= {threshold} in {plan['n_clusters']:,} clusters")
    return pairs


# --- helpers ------------------------------------------------------------------------------------


def _wait_all(refs: list, description: str, show_progress: bool, on_result=None) -> None:
    """Wait for Ray tasks as they finish (``on_result(ref, value)`` on the driver for each), with
    a console line per ~10% when ``show_progress``."""
    import ray

    pending, done, step = list(refs), 0, max(1, len(refs) // 10)
    if show_progress:
        console.print(f"{description}: {len(refs)} tasks")
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            value = ray.get(ref)
            if on_result is not None:
                on_result(ref, value)
            done += 1
            if show_progress and (done % step == 0 or done == len(refs)):
                console.print(f"  {done}/{len(refs)}")


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary name, then renamed: a checkpoint is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    tmp.replace(path)


def _write_npy(path: Path, a: np.ndarray) -> None:
    _write_atomic(path, lambda f: np.save(f, a))


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(obj).encode()))
