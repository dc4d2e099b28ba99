"""FAISS indexes over an embedding column: checked vectors, build, add, merge, search, manifest.

- Vectors are checked before FAISS sees them (``clean_vectors``): nulls, NaN/Inf and zero
  vectors are skipped and counted by reason (a NaN in FAISS silently poisons every distance),
  a wrong dimension is an error. Cosine similarity = inner product of L2-normalised vectors.
- Index kinds: ``flat`` (exact), ``ivfflat``, ``ivffp16`` (IVF, float16 codes: half the bytes,
  cosines within ~1e-4), ``ivfsq8`` (IVF, 8-bit scalar codes: 4x smaller, recall close to
  flat), ``ivfpq`` (product quantisation: 16-64x smaller, for 100M+ rows), ``ivfhnsw`` (IVF with
  an HNSW coarse quantiser, for 64k+ lists). ``auto`` picks flat for small sets and IVF-SQ8
  above ``flat_max``. IVF kinds are trained on a sample.
- Sharded add: every shard starts from the same trained empty index (``ondisk.empty_like``),
  adds its rows with their global labels, and a Ray task merges the shards
  (``ondisk.merge_index``: IVF lists into an on-disk data file). Labels are
  integers; ``labels.arrow`` next to the index maps them to row ids.
- The manifest records column, dimension, metric, kind, dataset version and a fingerprint of
  the column's data files, so an index built on an older version is detected, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curation.errors import UserError

__all__ = [
    "VectorError",
    "StaleIndexError",
    "IndexConfig",
    "Manifest",
    "to_matrix",
    "clean_vectors",
    "choose_kind",
    "default_nlist",
    "train_points",
    "training_subset",
    "factory_string",
    "train_index",
    "add_vectors",
    "list_major_ok",
    "search_above",
    "ListRouter",
    "router_levels",
    "add_routed",
    "search",
    "save_index",
    "load_index",
    "column_fingerprint",
    "check_fresh",
    "serialize",
    "deserialize",
    "maybe_gpu",
]


class VectorError(UserError, ValueError):
    """Vectors that cannot be indexed or searched as asked (wrong dimension, nothing valid...)."""


class StaleIndexError(VectorError):
    """The index was built on another state of the dataset than the one being read."""


class IndexConfig(BaseModel):
    """How to build a vector index. Defaults suit up to a few million rows on one machine."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "flat", "ivfflat", "ivffp16", "ivfsq8", "ivfpq", "ivfhnsw"] = "auto"
    metric: Literal["ip", "l2"] = Field("ip", description="ip = cosine on normalised vectors")
    normalize: bool = Field(True, description="L2-normalise vectors before indexing and search")
    flat_max: int = Field(100_000, ge=0, description="auto: exact search up to this many rows")
    nlist: int | None = Field(None, ge=1, description="IVF lists (default n / list_size, capped by the training sample)")
    list_size: int = Field(256, ge=8, description="default nlist = n / list_size: a constant scan per query as n grows")
    hnsw_lists: int = Field(16384, ge=1, description="auto: from this many lists on, an HNSW coarse quantiser (ivfhnsw)")
    nprobe: int = Field(16, ge=1, description="IVF lists searched per query")
    pq_m: int = Field(64, ge=1, description="PQ sub-quantisers (must divide the dimension)")
    pq_bits: int = Field(8, ge=1, le=16)
    train_size: int = Field(100_000, ge=1000, description="vectors sampled to train IVF/PQ (raised to 40 per list when needed)")
    kmeans_iter: int = Field(20, ge=1, description="k-means iterations for the coarse lists when >= 1024 lists")
    three_level_lists: int = Field(
        100_000,
        ge=1,
        description="from this many lists on, the coarse k-means runs in three nested levels, not two: "
        "about half the time at 141k lists, ~0.4 points fewer copies at cosine 0.93 in their original's 8 lists",
    )
    seed: int = 0
    use_gpu: bool | None = Field(None, description="null = use faiss-gpu when a GPU is present")


@dataclass
class Manifest:
    """What an index holds and how it was built; saved as manifest.json next to it."""

    column: str
    dim: int
    metric: str
    kind: str
    factory: str
    dataset_uri: str
    dataset_version: int
    fingerprint: str
    ntotal: int
    rows_seen: int
    skipped: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        return cls(**d)


# --- vectors -------------------------------------------------------------------------------


def to_matrix(
    col: pa.Array | pa.ChunkedArray | np.ndarray | list, dim: int | None = None, unit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column as an (n, d) float32 matrix plus a null mask (null rows are zeros).

    Accepts Arrow fixed-size or variable lists, NumPy arrays and lists of vectors. Raises
    ``VectorError`` when rows have different lengths or not ``dim`` values.
    ``unit``: normalise every ``unit`` consecutive values of a row to length 1 (``vec_regions``:
    11 descriptors in a row). Integer columns (the int8 descriptors: directions at an arbitrary
    scale) are always normalised, a whole row at a time unless ``unit`` says otherwise."""
    if isinstance(col, np.ndarray) and col.ndim == 2:
        x = col.astype(np.float32, copy=False)
        null = np.zeros(len(x), bool)
    else:
        if not isinstance(col, (pa.Array, pa.ChunkedArray)):
            col = pa.array(col)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
        n = len(col)
        null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool) if n else np.zeros(0, bool)
        t = col.type
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
            # values of null slots are stored too, so slicing the child keeps rows aligned
            vals = col.values.slice(col.offset * d, n * d)
            x = np.asarray(vals.to_numpy(zero_copy_only=False), np.float32).reshape(n, d)
            if null.any():  # float32 columns come zero-copy and read-only: copy only when writing
                x = x if x.flags.writeable else x.copy()
                x[null] = 0
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            lens = np.asarray(col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
            present = lens[~null]
            if len(present) and (present.min() != present.max()):
                raise VectorError(f"embedding rows have different lengths ({present.min()}..{present.max()})")
            d = int(present[0]) if len(present) else (dim or 0)
            x = np.zeros((n, d), np.float32)
            ok = np.flatnonzero(~null)
            if len(ok):
                x[ok] = np.asarray(col.filter(pa.array(~null)).flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, d)
        else:
            raise VectorError(f"not an embedding column: type {t} (expected a list of floats)")
        if unit is None and pa.types.is_integer(t.value_type):
            unit = x.shape[1]
    if unit:
        x = unit_parts(x, unit)
    if dim is not None and x.shape[1] != dim:
        raise VectorError(
            f"vectors have dimension {x.shape[1]}, expected {dim} (another model's embeddings? rebuild the index for this column)"
        )
    return x, null


def unit_parts(x: np.ndarray, unit: int) -> np.ndarray:
    """``x`` (float32) with every ``unit`` consecutive values of a row scaled to length 1; parts
    of length 0 stay zeros (a null row, a blank image)."""
    n, d = x.shape
    if not n or not d:
        return x
    if d % unit:
        raise VectorError(f"rows of {d} values do not split into vectors of {unit}")
    x = x if x.flags.writeable else x.copy()
    parts = x.reshape(n, d // unit, unit)
    norm = np.linalg.norm(parts, axis=2, keepdims=True)
    np.divide(parts, norm, out=parts, where=norm > 0)
    return x


def clean_vectors(
    x: np.ndarray, null: np.ndarray | None = None, *, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Valid rows normalised; returns (vectors, valid mask, skipped counts by reason).

    Skipped, never indexed: ``null_vector``, ``nan_vector`` (NaN or Inf anywhere),
    ``zero_vector`` (norm ~0: no direction, cosine undefined)."""
    x = np.array(x, np.float32, copy=True)
    n = len(x)
    null = np.zeros(n, bool) if null is None else np.asarray(null, bool)
    finite = np.isfinite(x).all(axis=1) if n else np.zeros(0, bool)
    x[~finite] = 0
    norm = np.linalg.norm(x, axis=1) if n else np.zeros(0, np.float32)
    zero = norm <= 1e-12
    valid = ~null & finite & ~zero
    if normalize and valid.any():
        x[valid] /= norm[valid, None]
    skipped = {
        "null_vector": int(null.sum()),
        "nan_vector": int((~null & ~finite).sum()),
        "zero_vector": int((~null & finite & zero).sum()),
    }
    return x, valid, {k: v for k, v in skipped.items() if v}


# --- build ---------------------------------------------------------------------------------


MIN_POINTS_PER_LIST = 39  # FAISS k-means warns (and lists come out poor) below this


def default_nlist(n: int, cfg: IndexConfig) -> int:
    """IVF lists for ``n`` rows: ``cfg.nlist``, else ``n / list_size``.

    Why not the usual ~4 sqrt(n): the lists then grow as sqrt(n), so at a fixed ``nprobe`` every
    query scans sqrt(n) more codes and an all-rows k-NN graph costs n^1.5 (measured: 100k -> 1M
    grew the scan 6x and cost recall). A constant list size keeps the scan per query constant;
    the coarse search over the (then many) lists stays cheap through an HNSW quantiser."""
    return max(1, int(cfg.nlist or round(max(n, 1) / cfg.list_size)))


def train_points(n: int, cfg: IndexConfig) -> int:
    """How many vectors to sample for training: ``train_size``, raised to 40 per IVF list."""
    return int(min(max(n, 0), max(cfg.train_size, (MIN_POINTS_PER_LIST + 1) * default_nlist(n, cfg))))


def training_subset(n_sample: int, n_expected: int, cfg: IndexConfig) -> np.ndarray | None:
    """Which of ``n_sample`` sampled vectors ``train_index`` trains on, in that order: None = all
    of them (the sample is not larger than ``train_points``), else ``train_points`` positions
    drawn with ``cfg.seed``. A caller that assembles a large sample itself (in chunks, into a
    memory-mapped file) can place exactly these vectors, in this order, and pass them as the
    sample: ``train_index`` then trains on the same vectors and returns the same index."""
    n_tr = train_points(n_expected, cfg)
    if n_sample <= n_tr:
        return None
    return np.random.default_rng(cfg.seed).choice(n_sample, n_tr, replace=False)


def choose_kind(n: int, cfg: IndexConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    return "ivfhnsw" if default_nlist(n, cfg) >= cfg.hnsw_lists else "ivfsq8"


def factory_string(kind: str, dim: int, n: int, cfg: IndexConfig, n_train: int) -> str:
    """The FAISS index_factory spec for a kind, with lists sized to the data and training sample."""
    if kind == "flat":
        return "IDMap2,Flat"
    nlist = default_nlist(n, cfg)
    nlist = max(1, min(nlist, n_train // MIN_POINTS_PER_LIST or 1))  # too small a sample: fewer lists
    # from hnsw_lists lists on, an HNSW quantiser: a flat one would cost more than the lists, at
    # search and when training residual codes (every training vector is assigned to its list)
    lists = f"IVF{nlist}_HNSW32" if nlist >= cfg.hnsw_lists else f"IVF{nlist}"
    if kind == "ivfflat":
        return f"{lists},Flat"
    if kind == "ivffp16":
        return f"{lists},SQfp16"
    if kind == "ivfsq8":
        return f"{lists},SQ8"
    if kind == "ivfpq":
        if dim % cfg.pq_m:
            raise VectorError(f"pq_m={cfg.pq_m} must divide the dimension {dim}; choose e.g. {dim // 8}")
        return f"IVF{nlist},PQ{cfg.pq_m}x{cfg.pq_bits}"
    if kind == "ivfhnsw":
        return f"IVF{nlist}_HNSW32,SQ8"
    raise VectorError(f"unknown index kind {kind!r}")


def _metric(cfg: IndexConfig) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2


def train_index(sample: np.ndarray, n_expected: int, cfg: IndexConfig) -> tuple[Any, str, str]:
    """A trained, empty index for ``n_expected`` rows; returns (index, kind, factory string).

    ``sample``: clean vectors (``clean_vectors``) drawn from the data; IVF needs at least ~39 per
    list, so a small sample shrinks the list count rather than failing."""
    import faiss

    if len(sample) == 0:
        raise VectorError("no valid vectors to build an index from (all rows null, NaN or zero?)")
    dim = sample.shape[1]
    kind = choose_kind(n_expected, cfg)
    if kind != "flat" and len(sample) < 256:
        kind = "flat"  # too few vectors to train lists on: exact search is also the right answer
    spec = factory_string(kind, dim, n_expected, cfg, min(len(sample), train_points(n_expected, cfg)))
    if kind == "flat":  # explicit class: a factory "Flat" and a deserialised one differ in type, and merge checks it
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim) if cfg.metric == "ip" else faiss.IndexFlatL2(dim))
    else:
        index = faiss.index_factory(dim, spec, _metric(cfg))
    if not index.is_trained:
        faiss.omp_set_num_threads(faiss.omp_get_max_threads())
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = cfg.seed  # k-means seed: same data + seed -> same index
        for obj in (index, faiss.downcast_index(ivf)):
            if hasattr(obj, "do_polysemous_training"):
                obj.do_polysemous_training = False  # only helps Hamming pre-filtering; costs minutes
        pick = training_subset(len(sample), n_expected, cfg)
        tr = np.ascontiguousarray(sample if pick is None else sample[pick], np.float32)
        if ivf.nlist >= TWO_LEVEL_LISTS:
            _train_lists_nested(ivf, tr, cfg)
        index.train(tr)  # lists already set: trains only the codes (SQ/PQ) and the residuals
    _set_nprobe(index, cfg.nprobe)
    return index, kind, spec


TWO_LEVEL_LISTS = 1024


def _train_lists_nested(ivf: Any, x: np.ndarray, cfg: IndexConfig) -> None:
    """Coarse centroids by nested k-means (``nested_kmeans``: two levels, three from
    ``cfg.three_level_lists``). Spherical (unit centroids) for inner product, so HNSW / flat quantisers
    agree with cosine. Centroids are added to the quantiser single-threaded: a parallel HNSW
    insert order is not deterministic, and the same data + seed must give the same index."""
    import faiss

    levels = 3 if ivf.nlist >= cfg.three_level_lists else 2
    centroids = nested_kmeans(x, ivf.nlist, levels, cfg.kmeans_iter, cfg.seed, ivf.metric_type == faiss.METRIC_INNER_PRODUCT)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        ivf.quantizer.reset()
        ivf.quantizer.add(np.ascontiguousarray(centroids, np.float32))
    finally:
        faiss.omp_set_num_threads(threads)


def nested_kmeans(x: np.ndarray, k: int, levels: int, niter: int, seed: int, spherical: bool) -> np.ndarray:
    """``k`` centroids of ``x`` by k-means in ``levels`` nested levels: ``k ** (1 / levels)``
    clusters, each split again in proportion to its size, down to ``k`` in all.

    Why: one-level k-means costs sample x k x d a iteration, and the sample grows with k (40 per
    list), so it is quadratic in the lists. Two levels (faiss.contrib.clustering) cost about
    sample x 2 sqrt(k) x d: N^1.5 in the rows (13 s at 300k rows, 71 s at 1M, 333 s at 3M on 2
    CPUs; ~2,000 s at 10M). Three cost sample x 3 k^(1/3) x d: measured on the sample of 3M rows
    (141k lists), 92 s instead of 180 s, with a copy at cosine 0.98 as often in its original's 8
    nearest lists (0.9925 vs 0.9908) and one at 0.93 a little less often (0.9175 vs 0.9215); at
    47k lists 22 s instead of 36 s, 0.9732 vs 0.9785 at 0.93 (``bench/index_training.py``,
    docs/benchmarks.md). Hence three levels only from ``IndexConfig.three_level_lists``."""
    if levels <= 2:
        return _two_level_kmeans(x, max(2, int(math.sqrt(k))), k, niter, seed, spherical)
    nc1 = max(2, round(k ** (1 / levels)))
    assign = _kmeans(x, nc1, niter, seed, spherical, max_points=2000)[1]
    counts = np.bincount(assign, minlength=nc1)
    shares = np.diff(np.cumsum(counts) * k // len(x), prepend=0)  # in proportion to size; sums to k
    order, start, out = np.argsort(assign, kind="stable"), 0, []
    for c in range(nc1):
        part = x[order[start : start + counts[c]]]
        start += counts[c]
        if shares[c] >= 4:
            out.append(nested_kmeans(part, int(shares[c]), levels - 1, niter, seed, spherical))
        elif shares[c]:
            out.append(_kmeans(part, int(shares[c]), niter, seed, spherical)[0])
    return np.vstack(out)


def _two_level_kmeans(x: np.ndarray, nc1: int, k: int, niter: int, seed: int, spherical: bool) -> np.ndarray:
    """faiss.contrib.clustering's ``two_level_clustering`` (rebalanced), step for step and with
    its parameters (the same centroids), except that a first-level cluster whose share of the
    ``k`` rounds to none gets none: FAISS trained a k-means of 0 centroids there and failed
    ("clus.k > 0"), which ended a dedup of 330k rows (``bench/dedup_append.py``) with an error."""
    import faiss

    km = faiss.Kmeans(x.shape[1], nc1, niter=niter, max_points_per_centroid=2000, seed=seed, spherical=spherical)
    km.train(x)
    assign = km.assign(x)[1]
    counts = np.bincount(assign, minlength=nc1)
    shares = np.cumsum(counts) * k // len(x)
    shares[1:] -= shares[:-1].copy()
    order, start, out = assign.argsort(), 0, []
    for c in range(nc1):
        part = x[order[start : start + counts[c]]]
        start += counts[c]
        if shares[c] and len(part) > shares[c]:
            sub = faiss.Kmeans(x.shape[1], int(shares[c]), seed=seed, spherical=spherical)
            sub.train(part)
            out.append(sub.centroids)
        elif shares[c]:  # no more points than centroids: the points themselves
            out.append(_kmeans(part, int(shares[c]), niter, seed, spherical)[0])
    return np.vstack(out)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int, spherical: bool, max_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Plain k-means: (centroids, each row's centroid); ``x`` itself when it has no more rows than ``k``."""
    import faiss

    if len(x) <= k:
        c = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if spherical else x
        return np.ascontiguousarray(c, np.float32), np.arange(len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical, max_points_per_centroid=max_points)
    km.train(x)
    return km.centroids, km.assign(x)[1]


def _set_nprobe(index: Any, nprobe: int) -> None:
    """nprobe of an IVF index; with an HNSW quantiser also its efSearch (>= 2 nprobe, or the
    quantiser returns fewer good lists than asked for and recall drops silently)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index
    ivf.nprobe = nprobe
    q = faiss.downcast_index(ivf.quantizer)
    if hasattr(q, "hnsw"):
        q.hnsw.efSearch = max(64, 2 * nprobe)


def serialize(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, np.uint8))


def add_vectors(index: Any, x: np.ndarray, labels: np.ndarray, chunk: int = 65536) -> None:
    """Add clean vectors with their integer labels, in chunks (bounded temporary memory)."""
    for s in range(0, len(x), chunk):
        index.add_with_ids(np.ascontiguousarray(x[s : s + chunk], np.float32), np.asarray(labels[s : s + chunk], np.int64))


def maybe_gpu(index: Any, use_gpu: bool | None) -> Any:
    """The index on all GPUs when faiss-gpu and a GPU are present (and not refused), else as is."""
    import faiss

    n_gpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is False or n_gpu == 0:
        if use_gpu:
            raise VectorError("use_gpu=true but FAISS sees no GPU (install faiss-gpu-cu12 on a GPU node)")
        return index
    return faiss.index_cpu_to_all_gpus(index)


def search(index: Any, queries: np.ndarray, k: int, *, nprobe: int | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, labels) of the k nearest, in query chunks; missing neighbours have label -1."""
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise VectorError(f"query dimension {queries.shape[-1] if queries.ndim else '?'} != index dimension {index.d}")
    if nprobe:
        _set_nprobe(index, nprobe)
    k = max(1, int(k))
    sims = np.empty((len(queries), k), np.float32)
    labs = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), chunk):
        d, i = index.search(np.ascontiguousarray(queries[s : s + chunk], np.float32), k)
        sims[s : s + chunk], labs[s : s + chunk] = d, i
    return sims, labs


ROUTER_TREE_LISTS = 4096
"""From this many lists on, ``ListRouter`` routes through groups of centroids (below: all of them)."""

ROUTER_TABLE_BYTES = 256 << 20
"""The dense table ``ListRouter.route`` scores a chunk of vectors in (``route_chunk``)."""

ROUTER_MIN_GROUP = 16
"""The fewest centroids a group of a routing level holds on average: finer groups would add a
level (fewer products per vector) at the price of a routing decision that misses more often."""


def router_levels(n: int, groups: int, tree_lists: int = ROUTER_TREE_LISTS) -> int:
    """Levels of groups above ``n`` lists that make routing cheapest: with L levels, each level
    scores ``t = (groups^L x n)^(1/(L+1))`` centroids a vector (the top level all of its own, the
    others the members of the ``groups`` groups chosen above), (L+1) x t in all, while groups
    keep >= ``ROUTER_MIN_GROUP`` members (t / groups). 0 (exact) below ``tree_lists``. E.g. 8
    groups: 14k lists (300k dedup rows) 1 level, 670 products instead of 14k; 47k and 141k
    lists (1M, 3M rows) 2 levels, 430 and 620; 5 x 10^7 lists (1B rows) 4 levels, ~1,000."""
    if n < tree_lists:
        return 0
    best, levels = math.inf, 1
    for L in range(1, 8):
        t = _level_width(n, groups, L)
        if L > 1 and t / groups < ROUTER_MIN_GROUP:
            break
        if (L + 1) * t < best:
            best, levels = (L + 1) * t, L
    return levels


def _level_width(n: int, groups: int, levels: int) -> float:
    """Centroids a vector meets on each level of a router of ``n`` lists with ``levels`` levels
    of groups, when every level costs the same (``router_levels``)."""
    return (groups**levels * n) ** (1 / (levels + 1))


class ListRouter:
    """The ``nprobe`` lists of each vector of a block, by matrix products.

    Why: the coarse quantiser answers one vector at a time: an HNSW one spent ~60 us per vector
    over 4k lists and more over 43k (the lists of 1M rows x 11 descriptors), which made filling
    the dedup index and routing its queries the slowest phases. Here a block of vectors meets
    the centroids in one product (below ``ROUTER_TREE_LISTS`` lists: all of them, exact), or,
    above, through a tree: the lists are grouped by spherical k-means over their centroids, the
    groups' centroids grouped again (``router_levels``), and a vector keeps the ``groups`` best
    groups of each level and scores only their members on the next. With one level of
    sqrt(nlist) groups (sessions 10-14) the products a vector grew as sqrt(rows) and made the
    index phase N^1.46 from 1M to 3M rows; the levels keep it ~flat (620 products at 3M rows
    where one level cost 3,400). Approximate above the cut (a vector's best list can sit in an
    unchosen group); the assignment only decides where a vector is stored and which lists a
    query scans, both ways through the same router.

    Built top-down (``nested_groups``): the lists are split into the top level's groups, each
    group into its share of the next level's, and so on, so each list meets the top's few
    hundred centroids and a few dozen on each level below: lists x (top + levels x fan-out)
    products. Built bottom-up (``build="bottom-up"``, sessions 15), each level was a k-means of
    all its items into all its groups, lists x groups products per iteration: 42 s at 141k lists
    (3M rows), ~17 min at 470k (10M), and out of reach at the ~5 x 10^7 lists of 1B rows."""

    def __init__(
        self,
        centroids: np.ndarray,
        *,
        groups: int = 8,
        seed: int = 0,
        tree_lists: int = ROUTER_TREE_LISTS,
        levels: int | None = None,
        build: str = "top-down",
    ):
        self.c = np.ascontiguousarray(centroids, np.float32)
        self.groups = groups
        self.upper = self.members = self.bounds = self.by_group = None
        n = len(self.c)
        levels = router_levels(n, groups, tree_lists) if levels is None else levels
        if levels <= 0:
            return
        if build == "top-down":
            self._fill(_router_arrays(self.c, nested_groups(self.c, group_counts(n, groups, levels), seed), groups), 0, groups)
        elif build == "bottom-up":
            g = group_counts(n, groups, levels)[0]
            km = _spherical_kmeans(self.c, g, seed)
            self.upper = ListRouter(km.centroids, groups=groups, seed=seed, levels=levels - 1, build=build)
            self._group(km.index.search(self.c, 1)[1].ravel(), g)
        else:
            raise ValueError(f"ListRouter build must be 'top-down' or 'bottom-up', not {build!r}")

    def _group(self, lab: np.ndarray, g: int) -> None:
        self.members = np.argsort(lab, kind="stable")
        self.bounds = np.searchsorted(lab[self.members], np.arange(g + 1))
        self.by_group = np.ascontiguousarray(self.c[self.members])  # each group's centroids: one slice

    @property
    def levels(self) -> int:
        return 0 if self.upper is None else 1 + self.upper.levels

    @classmethod
    def of(cls, index: Any, **kw) -> ListRouter | None:
        """The router of an IVF index's lists; None for an index without lists (flat)."""
        import faiss

        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            return None
        return cls(ivf.quantizer.reconstruct_n(0, ivf.nlist), **kw)

    def save(self, path: Path) -> None:
        """To ``path`` (.npz, written to a temporary name, then renamed): each level's centroids
        and grouping, the lists' level first."""
        arrays, r, i = {"groups": np.array(self.groups)}, self, 0
        while r is not None:
            arrays[f"c{i}"] = r.c
            if r.upper is not None:
                arrays.update({f"members{i}": r.members, f"bounds{i}": r.bounds})
            r, i = r.upper, i + 1
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ListRouter:
        z = np.load(path)
        if "c" in z:  # written before the levels (sessions 10-14): one exact level of groups, "coarse"
            z = {
                "groups": z["groups"],
                "c0": z["c"],
                **({"c1": z["coarse"], "members0": z["members"], "bounds0": z["bounds"]} if "coarse" in z else {}),
            }
        return cls._from(z, 0, int(z["groups"]))

    @classmethod
    def _from(cls, z: Any, i: int, groups: int) -> ListRouter:
        r = cls.__new__(cls)
        r._fill(z, i, groups)
        return r

    def _fill(self, z: Any, i: int, groups: int) -> None:
        """This router as level ``i`` of the arrays ``z`` (``save``'s layout), the levels above it too."""
        self.c, self.groups = z[f"c{i}"], groups
        self.upper = self.members = self.bounds = self.by_group = None
        if f"members{i}" in z:
            self.upper = ListRouter._from(z, i + 1, groups)
            self.members, self.bounds = z[f"members{i}"], z[f"bounds{i}"]
            self.by_group = np.ascontiguousarray(self.c[self.members])

    def route(self, x: np.ndarray, nprobe: int, chunk: int | None = None) -> np.ndarray:
        """(n, nprobe) list numbers, the best first (inner product with the list centroids).

        Above the cut, a chunk of vectors is scored against the lists of each vector's ``groups``
        best groups (one product per group over the vectors that chose it) into a dense
        (vectors, groups x largest group) table, and one top-k over its rows picks each vector's
        lists. Why dense: a top-k per group, then a merge, spent more time selecting than
        multiplying (small rows: ~4 us each); one top-k over long rows is ~10x cheaper. The
        chunk (``route_chunk``) fills ``ROUTER_TABLE_BYTES``: each group's product is a Python
        step, so a chunk too small for the group count is loop overhead, not arithmetic."""
        x = np.ascontiguousarray(x, np.float32)
        nprobe = min(nprobe, len(self.c))
        if self.upper is None:
            return _top(x @ self.c.T, nprobe)[0]
        chunk = chunk or self.route_chunk()
        return np.concatenate(
            [self._route_tree(x[s : s + chunk], nprobe) for s in range(0, len(x), chunk)] or [np.zeros((0, nprobe), np.int64)]
        )

    def route_chunk(self) -> int:
        """Vectors routed together: as many as fill a ``ROUTER_TABLE_BYTES`` dense table."""
        width = self.groups * int(np.diff(self.bounds).max())
        return int(np.clip(ROUTER_TABLE_BYTES // (4 * width), 4096, 1 << 20))

    def _route_tree(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        n_groups = len(self.upper.c)
        width = int(np.diff(self.bounds).max())
        near = self.upper.route(x, self.groups)  # (vector, slot) -> group, -1 where none
        groups = near.shape[1]
        flat = near.ravel()
        order = np.argsort(flat, kind="stable")
        cut = np.searchsorted(flat[order], np.arange(-1, n_groups + 1))[1:]  # the -1 slots come first: skipped
        dense = np.full((len(x), groups, width), -np.inf, np.float32)
        for g in np.flatnonzero(np.diff(cut)):
            lo, hi = self.bounds[g], self.bounds[g + 1]
            pick = order[cut[g] : cut[g + 1]]
            dense[pick // groups, pick % groups, : hi - lo] = x[pick // groups] @ self.by_group[lo:hi].T
        best, score = _top(dense.reshape(len(x), -1), nprobe)
        slot, pos = best // width, best % width
        g = np.maximum(np.take_along_axis(near, slot, axis=1), 0)
        return np.where(np.isfinite(score), self.members[np.minimum(self.bounds[g] + pos, len(self.members) - 1)], -1)


def group_counts(n: int, groups: int, levels: int) -> list[int]:
    """How many groups each level of a router over ``n`` lists has, the lowest level first: the
    items of a level over ``groups`` times its width (``_level_width``), so that a vector keeping
    ``groups`` groups meets about the width of centroids on the level below."""
    counts = []
    for L in range(levels, 0, -1):
        n = int(np.clip(round(groups * n / _level_width(n, groups, L)), groups + 1, max(groups + 1, n // 2)))
        counts.append(n)
    return counts


def nested_groups(c: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Each list's group on each level, (lists, levels) with the lowest level first, the groups
    nested (a group of one level lies inside one group of the level above) and built from the
    top: spherical k-means splits all the lists into the top level's groups, then each group's
    lists into its share of the level below (in proportion to its size, so groups stay about
    ``lists / counts[level]`` lists; ``_split`` caps them at twice that), and so on. A list
    meets only its parent's candidates, so the build costs lists x (top + fan-out per level),
    not lists x groups per level."""
    n, levels = len(c), len(counts)
    lab = np.zeros((n, levels), np.int64)
    parts = [np.arange(n)]
    for lvl in range(levels - 1, -1, -1):
        size = n / counts[lvl]
        parts = [members[m] for p, members in enumerate(parts) for m in _split(c[members], size, seed + p)]
        for g, members in enumerate(parts):
            lab[members, lvl] = g
    return lab


ROUTER_GROUP_CAP = 2.0
"""The largest group a top-down router build keeps, in multiples of its level's mean (``_split``)."""

ROUTER_GROUP_FLOOR = 0.25
"""The smallest k-means cluster a top-down router build keeps as a group, in multiples of its
level's mean (``_split``); the points of smaller ones join their nearest kept cluster."""


def _split(x: np.ndarray, size: float, seed: int) -> list[np.ndarray]:
    """Positions of ``x`` cut into groups of about ``size`` by spherical k-means, none larger
    than 2 x ``size`` and none (but a whole ``x``) smaller than ``ROUTER_GROUP_FLOOR`` x ``size``:
    an oversized cluster is split again, one k-means left whole is cut along its principal
    axis, and the points of a tiny cluster join their nearest kept one. Why the cap: routing
    scores a vector's chosen groups in a dense table as wide as the largest group; uncapped,
    k-means left groups 7x the mean at 470k lists (50 us a routed vector). Why the floor: over
    real list centroids k-means leaves many clusters of one or two lists (the 10M job's router:
    39,883 groups of median 2 lists where 12,069 of ~39 were asked; its upper level 288 items
    wide for a mean of 110), and routing makes one product per chosen group and scores a table
    as wide as the largest: ~20 us a vector there, ~13 with the floor (``bench/list_router.py
    --saved``). Why not higher: scattered lists, folded, are reached through a group mean they
    are far from (the test's hard case loses a point of copies found at 0.5, none at 0.25)."""
    k = int(np.clip(round(len(x) / size), 1, len(x)))
    cap = ROUTER_GROUP_CAP * size
    if len(x) <= cap and k == 1:
        return [np.arange(len(x))]
    if k == 1:
        return _axis_cut(x, size)
    sub = _kept_clusters(np.ascontiguousarray(x, np.float32), _spherical_kmeans(x, k, seed), ROUTER_GROUP_FLOOR * size)
    order = np.argsort(sub, kind="stable")
    out = []
    for m in np.split(order, np.searchsorted(sub[order], np.arange(1, k))):
        if len(m) > cap:  # oversized: split again (or, when k-means kept it whole, along its axis)
            out += [m[q] for q in (_split(x[m], size, seed + 1) if len(m) < len(x) else _axis_cut(x[m], size))]
        elif len(m):
            out.append(m)
    return out


def _kept_clusters(x: np.ndarray, km: Any, floor: float) -> np.ndarray:
    """Each point's cluster among the k-means ``km``'s clusters of at least ``floor`` points
    (the largest always kept): a point of a smaller one moves to its nearest kept centroid."""
    import faiss

    sub = km.index.search(x, 1)[1].ravel()
    sizes = np.bincount(sub, minlength=len(km.centroids))
    keep = sizes >= floor
    keep[np.argmax(sizes)] = True
    if keep.all():
        return sub
    kept = np.flatnonzero(keep)
    flat = faiss.IndexFlat(x.shape[1], km.index.metric_type)
    flat.add(np.ascontiguousarray(km.centroids[kept], np.float32))
    return kept[flat.search(x, 1)[1].ravel()]


def _axis_cut(x: np.ndarray, size: float) -> list[np.ndarray]:
    """Positions of ``x`` in equal runs of at most ~``size`` along its principal axis."""
    axis = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    return np.array_split(np.argsort(x @ axis, kind="stable"), int(np.ceil(len(x) / size)))


def _spherical_kmeans(x: np.ndarray, k: int, seed: int) -> Any:
    """A trained spherical ``faiss.Kmeans`` of ``k`` centroids over ``x``."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, np.float32))
    return km


def _router_arrays(c: np.ndarray, lab: np.ndarray, groups: int) -> dict[str, np.ndarray]:
    """The arrays a saved router holds (``ListRouter.save``) from nested group labels: each
    level's centroids (a group's: the normalised mean of its lists), and each level's items
    grouped by the group above them."""
    z, items = {"groups": np.array(groups), "c0": c}, lab[:, 0]  # level 0's items: the lists
    for lvl in range(lab.shape[1]):
        g = int(lab[:, lvl].max()) + 1
        cent = np.zeros((g, c.shape[1]), np.float64)
        np.add.at(cent, lab[:, lvl], c)
        z[f"c{lvl + 1}"] = (cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        members = np.argsort(items, kind="stable")
        z[f"members{lvl}"], z[f"bounds{lvl}"] = members, np.searchsorted(items[members], np.arange(g + 1))
        if lvl + 1 < lab.shape[1]:  # the next level's items are this level's groups: each one's parent
            first = np.unique(lab[:, lvl], return_index=True)[1]
            items = lab[first, lvl + 1]
    return z


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k largest scores, the largest first.

    torch.topk (CPU): a partial selection per row, 2-16x faster here than numpy's argpartition
    plus a sort of the k (measured on 207 and 1,656 columns)."""
    import torch

    k = min(k, scores.shape[1])
    v, i = torch.topk(torch.from_numpy(np.ascontiguousarray(scores, np.float32)), k, dim=1, sorted=True)
    return i.numpy().astype(np.int64, copy=False), v.numpy()


def add_routed(index: Any, x: np.ndarray, labels: np.ndarray, router: ListRouter, chunk: int = 65536) -> None:
    """``add_vectors`` with the lists chosen by ``router`` (one matrix product per chunk) instead
    of the quantiser's per-vector search."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    ivf = faiss.extract_index_ivf(index)
    lists = router.route(x, 1)[:, 0].copy()  # in the router's own chunks (``route_chunk``)
    for s in range(0, len(x), chunk):
        xb = np.ascontiguousarray(x[s : s + chunk], np.float32)
        add_preassigned(ivf, xb, lists[s : s + chunk], np.ascontiguousarray(labels[s : s + chunk], np.int64))
    index.ntotal = ivf.ntotal  # a wrapper (IDMap, pre-transform) counts what its IVF holds


def list_major_ok(index: Any) -> bool:
    """Whether ``search_above`` can scan this index list by list: an IVF index on the CPU with the
    inner-product metric whose lists hold float32 vectors (IVF-Flat, the dedup job's default
    candidate index above ``flat_max``) or float16 / 8-bit scalar codes (``ivffp16``,
    ``ivfsq8``: 2x and 4x less disk and page cache, decoded one list at a time)."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return False
    if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return False
    if type(ivf) is faiss.IndexIVFFlat:
        return True
    sq = faiss.ScalarQuantizer
    return type(ivf) is faiss.IndexIVFScalarQuantizer and ivf.sq.qtype in (sq.QT_fp16, sq.QT_8bit)


def _list_products(ivf: Any, q: np.ndarray, centroids: np.ndarray | None = None) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """``products(list, size, rows)``: the inner products of the queries ``q[rows]`` with one
    list's vectors, as FAISS's own scan computes them. IVF-Flat lists are read in place
    (memory-mapped lists are not copied); scalar codes are not decoded: for 8-bit codes c
    (vector = vmin + (c + 0.5) / 255 x vdiff, plus the list's centroid for a residual code) the
    product is ``(q x vdiff / 255) . c`` plus one bias a query, ``q . (vmin + vdiff / 510)``
    (computed once for all of ``q``) plus ``q . centroid``; for float16 codes, ``q . c`` plus
    ``q . centroid``. ``centroids``: the lists' centroids as an array (the router holds them),
    else each is read from the quantiser. Why: FAISS's decode and the centroid added to every
    vector cost ~40 us of a list visit's ~90 us of overhead (255 vectors, 231 dims), and a
    candidate actor visits nearly every list once per block (units x lists visits). The list is
    the product's left side (codes x queries^T, then transposed): a visit has a few dozen
    queries at most, and BLAS multiplies a tall matrix by a thin one ~1.5x faster than the
    other way round here (OpenBLAS, one thread: 9 queries x 235 codes, 19 us against 31)."""
    import faiss

    d, code_size = ivf.d, ivf.code_size

    def codes(lst: int, size: int) -> np.ndarray:
        return faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * code_size)

    if type(ivf) is faiss.IndexIVFFlat:
        return lambda lst, size, rows: (codes(lst, size).view(np.float32).reshape(size, d) @ q[rows].T).T
    if not ivf.by_residual:
        centroid = lambda lst: np.zeros(d, np.float32)  # noqa: E731
    else:
        centroid = (lambda lst: centroids[lst]) if centroids is not None else ivf.quantizer.reconstruct
    if ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        return lambda lst, size, rows: (
            (codes(lst, size).view(np.float16).reshape(size, d).astype(np.float32) @ q[rows].T).T + (q[rows] @ centroid(lst))[:, None]
        )
    vmin, vdiff = faiss.vector_to_array(ivf.sq.trained).reshape(2, d)
    scaled, bias = q * (vdiff / 255), q @ (vmin + vdiff / 510)

    def products(lst: int, size: int, rows: np.ndarray) -> np.ndarray:
        qr = q[rows]
        return (codes(lst, size).reshape(size, d).astype(np.float32) @ scaled[rows].T).T + (bias[rows] + qr @ centroid(lst))[:, None]

    return products


def route_queries(index: Any, queries: np.ndarray, nprobe: int, router: ListRouter | None = None) -> np.ndarray:
    """(queries, nprobe) list numbers each query scans in ``search_above``: by ``router`` when
    given, else by the index's own quantiser (its efSearch set as ``search`` would set it)."""
    import faiss

    q = np.ascontiguousarray(queries, np.float32)
    if router is not None:
        return router.route(q, nprobe)
    _set_nprobe(index, nprobe)
    return faiss.extract_index_ivf(index).quantizer.search(q, nprobe)[1]


def search_above(
    index: Any,
    queries: np.ndarray,
    min_sim: float,
    *,
    nprobe: int,
    per_list: int,
    router: ListRouter | None = None,
    lists: tuple[int, int] | None = None,
    probe: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every hit with inner product >= ``min_sim`` among each query's ``nprobe`` lists (at most
    ``per_list`` per query and list, the best), as flat arrays (query index, label, similarity).

    Why not ``index.search``: FAISS scans one query at a time (one dot product per stored
    vector, then a heap of k per query: ~210 us per query over 8 lists of ~320 here). Grouping
    the block's queries by list turns each list into one matrix product (queries of that list x
    its vectors, BLAS), and a similarity threshold replaces the heap; IVF-Flat lists are read in
    place (a memory-mapped index is not copied), scalar codes multiplied without decoding
    (``_list_products``). ``lists=(a, b)``: only the probes of lists ``a`` to ``b - 1`` are
    scanned (one pass of several over lists larger than memory); ``probe``: the queries' lists
    as ``route_queries`` gave them (routed once for every pass), else routed here.
    Same lists (the index's own quantiser), the products FAISS computes (exact float32 ones for
    IVF-Flat): the hits >= ``min_sim`` that ``search`` returns are among these."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    q = np.ascontiguousarray(queries, np.float32)
    probe = route_queries(index, q, nprobe, router) if probe is None else probe
    qi, probed = np.repeat(np.arange(len(q)), nprobe), probe.ravel()
    keep = probed >= 0
    if lists is not None:
        keep &= (probed >= lists[0]) & (probed < lists[1])
    qi, probed = qi[keep], probed[keep]
    order = np.argsort(probed, kind="stable")
    qi, probed = qi[order], probed[order]
    bounds = np.flatnonzero(np.r_[True, probed[1:] != probed[:-1], True]) if len(probed) else np.zeros(1, np.int64)
    products = _list_products(ivf, q, router.c if router is not None and len(router.c) == ivf.nlist else None)
    out_q, out_l, out_s = [], [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        lst = int(probed[s])
        size = ivf.invlists.list_size(lst)
        if size == 0:
            continue
        rows = qi[s:e]
        sims = products(lst, size, rows)
        r, c = np.nonzero(sims >= min_sim)
        if len(r) > per_list and np.bincount(r).max() > per_list:  # keep the best per_list of a query
            cut = -np.partition(-sims, per_list - 1, axis=1)[:, per_list - 1 : per_list]
            r, c = np.nonzero((sims >= min_sim) & (sims >= cut))
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size)
        out_q.append(rows[r])
        out_l.append(np.array(ids[c], np.int64))
        out_s.append(sims[r, c].astype(np.float32))
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_q), np.concatenate(out_l), np.concatenate(out_s)


# --- storage ---------------------------------------------------------------------------------


def save_index(folder: Path, index_file: str | Path, manifest: Manifest, labels: pa.Table | None = None) -> None:
    """Move the merged index file (``ondisk.merge_index``; its data file, for on-disk lists,
    already in ``folder``) in as index.faiss, then write labels.arrow (label -> row id) and
    manifest.json; each atomically. Data files of earlier indexes there go once the manifest is
    written (a reader that has one mapped keeps reading it: the file lives until it is unmapped)."""
    folder.mkdir(parents=True, exist_ok=True)
    Path(index_file).replace(folder / "index.faiss")
    if labels is not None:
        import pyarrow.feather as feather

        feather.write_feather(labels, str(folder / "labels.arrow.tmp"))
        (folder / "labels.arrow.tmp").replace(folder / "labels.arrow")
    (folder / "manifest.json.tmp").write_text(json.dumps(asdict(manifest), indent=2))
    (folder / "manifest.json.tmp").replace(folder / "manifest.json")
    drop_unused_data(folder)


def drop_unused_data(folder: Path) -> list[str]:
    """Delete the ``*.ivfdata`` files in ``folder`` that its index.faiss does not read (an
    earlier index's, or an abandoned build's); returns their names."""
    from engines.vector.ondisk import ondisk_data_path

    try:
        used = Path(ondisk_data_path(folder / "index.faiss")).name
    except ValueError:  # lists in the file itself
        used = None
    gone = [f.name for f in sorted(folder.glob("*.ivfdata")) if f.name != used]
    for name in gone:
        (folder / name).unlink(missing_ok=True)
    return gone


def load_index(folder: Path, *, with_labels: bool = True) -> tuple[Any, Manifest, pa.Table | None]:
    """The index in ``folder`` (to search: its lists memory-mapped read-only, ``ondisk.read_index``,
    every reader on a machine sharing one copy), its manifest and (``with_labels``) its label
    table."""
    from engines.vector.ondisk import read_index

    if not (folder / "manifest.json").exists():
        raise VectorError(f"no index at {folder}; build one with `curate index build`")
    manifest = Manifest.from_json(json.loads((folder / "manifest.json").read_text()))
    index = read_index(folder / "index.faiss")
    _set_nprobe(index, manifest.config.get("nprobe", 16))
    labels = None
    if with_labels:
        import pyarrow.feather as feather

        labels = feather.read_table(str(folder / "labels.arrow"))
    return index, manifest, labels


def column_fingerprint(ds: Any, column: str) -> str:
    """Identifies the rows and the data of ``column`` in a Lance dataset version: fragment ids,
    row counts, deletion files and the data files holding ``id`` and ``column``. Adding other
    columns keeps it; appending rows, deleting rows or rewriting the column changes it."""
    if column not in {f.name() for f in _lance_fields(ds)}:
        raise VectorError(f"column {column!r} not in the dataset")
    want = field_ids(ds, column) | field_ids(ds, "id")
    h = hashlib.sha1()
    for frag in ds.get_fragments():
        m = frag.metadata
        files = sorted(df.path for df in m.files if want & set(df.fields))
        h.update(json.dumps([m.id, m.physical_rows, str(m.deletion_file), files]).encode())
    return h.hexdigest()[:16]


def _lance_fields(ds: Any):
    return list(ds.lance_schema.fields())


def field_ids(ds: Any, column: str) -> set[int]:
    """Lance field ids of a column and of its children: a data file of a variable-length list
    column names the child (``item``) id, not the list's, so both are needed to find its files."""
    out: set[int] = set()
    stack = [f for f in _lance_fields(ds) if f.name() == column]
    while stack:
        f = stack.pop()
        out.add(f.id())
        stack.extend(f.children())
    return out


def check_fresh(manifest: Manifest, ds: Any, uri: str | None = None) -> None:
    """Raise ``StaleIndexError`` (with the fix) when the dataset's rows or column changed since
    the index was built. A newer version that only added other columns is fine. ``uri``: the
    dataset as the user named it (the manifest keeps the path it was built at, which a copied
    or moved dataset no longer has)."""
    if manifest.column not in ds.schema.names:
        raise StaleIndexError(f"index column {manifest.column!r} is gone from dataset v{ds.version}")
    fp = column_fingerprint(ds, manifest.column)
    if fp != manifest.fingerprint:
        raise StaleIndexError(
            f"index on {manifest.column!r} was built at dataset v{manifest.dataset_version}; dataset is now "
            f"v{ds.version} with changed rows or {manifest.column!r} data. Run `curate index build --dataset "
            f"{uri or manifest.dataset_uri} --column {manifest.column}` (adds new rows; --rebuild if rows changed)"
        )
