"""Duplicates of three kinds, found as graph communities, with the best row of each group kept.

- exact: same image bytes (SHA-256).
- near: the same photograph after edits (crop, resize, re-encode, watermark, colour change).
  Candidates come from the training-free regional descriptors (``descriptor.py``) searched in
  FAISS and from perceptual-hash neighbours; a candidate pair is accepted when its pHash
  distance is small and the descriptors agree, or when ORB + RANSAC finds enough geometrically
  consistent matches spread over the frame, or when the descriptors are all but identical.
- semantic: the same content in a different shot: cosine similarity of real image embeddings
  (CLIP-style; only meaningful with real weights) above a threshold, or SemDeDup (k-means, then
  pairwise cosine within each cluster).

All accepted pairs become edges of one proximity graph; its Leiden (CPM) communities are the
duplicate groups (see ``graph.py`` for why communities rather than components). Within a group
the original is kept over its derivatives (no frame or screenshot around it, more pixels, then
more bytes per pixel, then a higher JPEG quality, each with a margin: ``Originality``), then the
best quality score, not the first seen; ties go to the earlier row.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engines.vector.descriptor import CONTENT_REGION
from engines.vector.graph import attach_orphans, communities, communities_by_component, symmetric_edges

__all__ = [
    "NearDupConfig",
    "SemanticConfig",
    "Pairs",
    "exact_pairs",
    "rows_with_pairs",
    "hash_pairs",
    "region_candidates",
    "top_owners",
    "candidate_queries",
    "accept_near",
    "needs_verification",
    "near_pairs",
    "semantic_pairs",
    "semdedup_pairs",
    "default_clusters",
    "semdedup_centroids",
    "assign_clusters",
    "cluster_pairs",
    "DupResult",
    "group_duplicates",
    "Originality",
    "encoding_info",
    "KEEPER_WHY",
    "ijg_quality",
    "encoding_signals",
    "popcount64",
]

REASONS = ("exact", "near", "semantic")  # strongest first


class NearDupConfig(BaseModel):
    """Thresholds of the near-duplicate path (defaults measured on edited real photographs)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(
        16, ge=1, le=1000, description="descriptor candidates per image (a viral photo has many copies: each must reach one of them)"
    )
    min_candidate_sim: float = Field(0.80, ge=-1, le=1, description="regional descriptor cosine to be a candidate")
    accept_sim: float = Field(0.985, ge=-1, le=1, description="descriptor cosine accepted without local verification")
    phash_max: int = Field(8, ge=0, le=64, description="pHash Hamming distance that, with min_candidate_sim, accepts a pair")
    hash_k: int = Field(8, ge=0, le=1000, description="pHash neighbours per image searched as extra candidates")
    min_inliers: int = Field(15, ge=4, description="RANSAC inliers to accept a pair (with min_coverage)")
    min_coverage: float = Field(0.12, ge=0, le=1, description="share of 4x4 cells holding inliers (a shared watermark covers few)")
    strong_inliers: int = Field(60, ge=4, description="inliers that accept a pair whatever the coverage")
    dihedral: bool = Field(True, description="also find mirrored copies and copies turned by 90, 180 or 270 degrees")
    k_centre: int = Field(
        4, ge=0, le=1000, description="extra candidates per image from its centre regions (a screenshot finds the photo it shows)"
    )


class SemanticConfig(BaseModel):
    """Semantic duplicates over an embedding column."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.95, ge=-1, le=1, description="cosine similarity of image embeddings")
    k: int = Field(10, ge=1, le=1000)
    method: str = Field("knn", pattern="^(knn|semdedup)$", description="knn graph or SemDeDup (k-means clusters)")
    n_clusters: int | None = Field(None, ge=1, description="SemDeDup clusters (default ~sqrt(rows))")
    seed: int = 0


@dataclass
class Pairs:
    """Candidate or accepted pairs (row positions), with their similarity and kind."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    reason: np.ndarray  # index into REASONS per pair

    @classmethod
    def empty(cls) -> Pairs:
        z = np.zeros(0, np.int64)
        return cls(z, z.copy(), np.zeros(0, np.float32), np.zeros(0, np.int8))

    @classmethod
    def of(cls, i, j, sim, reason: str) -> Pairs:
        i = np.asarray(i, np.int64)
        return cls(i, np.asarray(j, np.int64), np.asarray(sim, np.float32), np.full(len(i), REASONS.index(reason), np.int8))

    def __len__(self) -> int:
        return len(self.i)

    def __add__(self, o: Pairs) -> Pairs:
        return Pairs(
            np.concatenate([self.i, o.i]),
            np.concatenate([self.j, o.j]),
            np.concatenate([self.sim, o.sim]),
            np.concatenate([self.reason, o.reason]),
        )

    def select(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.i[mask], self.j[mask], self.sim[mask], self.reason[mask])


def exact_pairs(sha256) -> Pairs:
    """Star edges from each row to the first row with the same bytes (rows without a hash skipped).

    ``sha256``: a list or an Arrow (chunked) array of hex strings. Vectorised over the hashes'
    dictionary codes: a dict keyed by Python strings cost the driver ~200 bytes per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = sha256.combine_chunks() if isinstance(sha256, pa.ChunkedArray) else pa.array(sha256, pa.string())
    codes = pc.dictionary_encode(arr).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    pos = np.flatnonzero(codes >= 0)
    _, first_at = np.unique(codes[pos], return_index=True)
    first = np.full(int(codes.max()) + 1 if len(pos) else 0, -1, np.int64)
    first[codes[pos[first_at]]] = pos[first_at]
    later = pos[first[codes[pos]] != pos]
    return Pairs.of(first[codes[later]], later, np.ones(len(later)), "exact")


def rows_with_pairs(pairs: Pairs) -> tuple[np.ndarray, Pairs]:
    """The rows that have a pair (ascending positions) and the pairs renumbered over them.

    Why: a row without a pair is in no group, so the communities, the keeper and the removal
    curve need only these rows, and the dedup job's driver reads sizes and quality for them
    alone. Their order is kept, so ties to "the earlier row" fall as they do over all rows."""
    rows = np.unique(np.concatenate([pairs.i, pairs.j]))
    return rows, Pairs(np.searchsorted(rows, pairs.i), np.searchsorted(rows, pairs.j), pairs.sim, pairs.reason)


_POP8 = np.array([bin(x).count("1") for x in range(256)], np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (vectorised, no Python loop)."""
    b = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    return _POP8[b].sum(1).astype(np.int32)


def hash_pairs(hashes: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest pHashes of each row by Hamming distance (FAISS binary index): (i, j, dist)."""
    import faiss

    pos = np.flatnonzero(valid)
    if len(pos) < 2 or k == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.zeros(0, np.int32)
    codes = np.ascontiguousarray(hashes[pos].astype(">u8")).view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    kk = min(k + 1, len(pos))
    dist, nn = index.search(codes, kk)
    src = np.repeat(pos, kk)
    ok = nn.ravel() >= 0
    dst = pos[np.where(ok, nn.ravel(), 0)]
    ok &= src != dst
    return src[ok], dst[ok], dist.ravel()[ok].astype(np.int32)


def top_owners(q: np.ndarray, owner: np.ndarray, sim: np.ndarray, k: int, min_sim: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search hits (query row, owner row of the hit entry, similarity) reduced to each query's
    ``k`` best *other* rows: the best entry per (query, owner) first (a row owns its full frame,
    its regions, and is queried in 8 orientations), self-hits and hits under ``min_sim`` dropped."""
    keep = (owner != q) & (sim >= min_sim) & (owner >= 0)
    q, o, v = q[keep], owner[keep], sim[keep]
    order = np.lexsort((-v, o, q))
    q, o, v = q[order], o[order], v[order]
    first = np.ones(len(q), bool)
    first[1:] = (q[1:] != q[:-1]) | (o[1:] != o[:-1])
    q, o, v = q[first], o[first], v[first]
    order = np.lexsort((-v, q))
    q, o, v = q[order], o[order], v[order]
    rank = np.arange(len(q)) - np.searchsorted(q, q, side="left")
    top = rank < k
    return q[top], o[top], v[top]


def split_top_owners(
    q: np.ndarray, owner: np.ndarray, slot: np.ndarray, sim: np.ndarray, n_full: int, k: int, k_centre: int, min_sim: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top_owners`` with its own quota for the hits of centre-region queries (those after the
    first ``n_full`` hits, which come from full-frame queries), counting only their hits on other
    rows' whole photos (``slot`` 0, the full frame, or ``CONTENT_SLOT``). Why: screenshots share their window chrome, so a screenshot's
    full-frame top ``k`` fills up with other screenshots, and its centre matches other
    screenshots' centres too; the photo it shows is found as a whole frame from its middle, in a
    quota of its own. A pair can come back from both quotas; ``symmetric_edges`` keeps it once."""
    return split_top_owners_flagged(q, owner, slot, sim, n_full, k, k_centre, min_sim)[:3]


def split_top_owners_flagged(
    q: np.ndarray, owner: np.ndarray, slot: np.ndarray, sim: np.ndarray, n_full: int, k: int, k_centre: int, min_sim: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``split_top_owners`` with a fourth array: which of its pairs came from the centre quota."""
    a = top_owners(q[:n_full], owner[:n_full], sim[:n_full], k, min_sim)
    if k_centre <= 0 or n_full >= len(q):
        return (*a, np.zeros(len(a[0]), bool))
    c = slice(n_full, None)
    whole = (slot[c] == 0) | (slot[c] == CONTENT_SLOT)
    b = top_owners(q[c], np.where(whole, owner[c], -1), sim[c], k_centre, min_sim)
    return (*(np.concatenate([x, y]) for x, y in zip(a, b)), np.arange(len(a[0]) + len(b[0])) >= len(a[0]))


def top_owners_of_parts(
    q: np.ndarray, owner: np.ndarray, sim: np.ndarray, centre: np.ndarray, k: int, k_centre: int, min_sim: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``split_top_owners`` of all hits, from its results over parts of the hits (the candidate
    phase's passes, each over a range of lists), concatenated with their ``centre`` flags.

    Why it is the same: a row's top ``k`` owners rank by (similarity down, owner up), one total
    order; an owner in the top ``k`` of all hits is in the top ``k`` of the part holding its best
    hit, as every owner ranked above it there is ranked above it overall. So the top ``k`` of the
    parts' top ``k`` is the top ``k`` of all, quota by quota."""
    return owners_of_parts(q, owner, sim, centre, k, k_centre, min_sim)[:3]


def owners_of_parts(
    q: np.ndarray, owner: np.ndarray, sim: np.ndarray, centre: np.ndarray, k: int, k_centre: int, min_sim: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``top_owners_of_parts`` with the fourth array of ``split_top_owners_flagged`` (which pairs
    came from the centre quota): owners that can be merged again with another part later (the
    dedup job keeps each row's owners for the rows appended next)."""
    a = top_owners(q[~centre], owner[~centre], sim[~centre], k, min_sim)
    b = top_owners(q[centre], owner[centre], sim[centre], k_centre, min_sim)
    return (*(np.concatenate([x, y]) for x, y in zip(a, b)), np.arange(len(a[0]) + len(b[0])) >= len(a[0]))


CENTRE_REGIONS = (0, 5, CONTENT_REGION)
"""Regions queried for a photo shown inside other pixels, in ``describe``'s region order: the
centre regions (80% and 70% of each side) and the content box (the photo a screenshot shows)."""
CONTENT_SLOT = CONTENT_REGION + 1
"""Slot of the content box among a row's index entries (0 = full frame, 1.. = regions): a hit
there is a hit on the whole photo (the full frame again for a picture with no surroundings)."""


CONTENT_SAME = 2 / 127
"""A content box within this of the full frame (every component, both unit vectors) is the full
frame again: the regions are stored as int8 (``descriptor.to_int8``: a step is 1/127 of the
largest component), the full frame as float16, so a repeat no longer reads back bit for bit."""


def has_content_box(full: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Per row: is its content box another picture than its full frame? (``describe`` stores the
    full frame there when nothing surrounds the photo: most rows.)"""
    return np.abs(np.asarray(regions)[:, CONTENT_REGION] - np.asarray(full)).max(axis=1, initial=0) > CONTENT_SAME


def entry_table(
    full: np.ndarray, regions: np.ndarray, rows: np.ndarray, slots: int, *, repeats: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The index entries of some rows (``full`` / ``regions`` hold those rows, ``rows`` their
    positions): full frame and regions, labelled ``row x slots + slot``, without the content box
    of a row that has none unless ``repeats``. Why leave it out: it would repeat the full frame in
    the same list, and each repeat takes a second place in every top-k and per-list quota it
    reaches. ``repeats`` keeps a fixed count per row (the job's training sample needs that)."""
    n, r, d = regions.shape
    x = np.concatenate([full[:, None, :], regions], axis=1).reshape(-1, d)
    labels = (np.asarray(rows, np.int64)[:, None] * slots + np.arange(r + 1)[None, :]).ravel()
    if repeats:
        return np.ascontiguousarray(x, np.float32), labels
    keep = np.ones((n, r + 1), bool)
    keep[:, CONTENT_SLOT] = has_content_box(full, regions)
    keep = keep.ravel()
    return np.ascontiguousarray(x[keep], np.float32), labels[keep]


def candidate_queries(full: np.ndarray, dihedral: bool = True, centres: np.ndarray | None = None) -> np.ndarray:
    """The query vectors of some rows, as (B * n, d) in blocks of n (row r of block b at
    ``b * n + r``): their full-frame descriptor; with ``dihedral`` its 7 mirrored / rotated
    variants (``descriptor.dihedral_descriptors``); with ``centres`` (n x C x d) their centre
    regions too, so a screenshot or a framed copy (the photo shrunk inside other pixels) finds the
    photo's full frame from its own middle."""
    from engines.vector.descriptor import dihedral_descriptors

    f = np.ascontiguousarray(full, np.float32)
    blocks = [dihedral_descriptors(f).reshape(-1, f.shape[1])] if dihedral else [f]
    if centres is not None:
        blocks.append(np.asarray(centres, np.float32).transpose(1, 0, 2).reshape(-1, f.shape[1]))
    return np.ascontiguousarray(np.concatenate(blocks))


def content_queries_kept(queries: np.ndarray, rows: np.ndarray, regions: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``candidate_queries``' output (blocks of len(rows), the content box's block last) without
    the content query of rows that have no box (it would repeat their full-frame query), and the
    row of each query kept."""
    n = len(rows)
    keep = np.ones(len(queries), bool)
    keep[len(queries) - n :] = has_content_box(full, regions)
    return queries[keep], np.tile(rows, len(queries) // max(n, 1))[keep]


def region_candidates(
    full: np.ndarray, regions: np.ndarray, valid: np.ndarray, k: int, min_sim: float, *, dihedral: bool = True, k_centre: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs whose full-frame descriptor matches a region (or the full frame) of the other, in
    any of the 8 orientations when ``dihedral``.

    Every row contributes its full descriptor and its R regional ones to one FAISS index; each
    full descriptor (and its mirrored / rotated variants) is queried for the nearest entries,
    aggregated to rows by the maximum. A crop of B matches the region of B it was cut from even
    when B's full frame looks different; a mirrored or rotated copy of B matches B's full frame
    through the variant that undoes the transform. Returns (i, j, sim) with i < j, sim = max
    over both directions. Exact search in one process: the dedup job runs the same reduction
    (``top_owners``) on Ray workers over an approximate index.
    """
    import faiss

    pos = np.flatnonzero(valid)
    if len(pos) < 2:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.zeros(0, np.float32)
    f = np.ascontiguousarray(full[pos], np.float32)
    r = regions[pos].astype(np.float32)
    n, R, d = r.shape
    table, labels = entry_table(f, r, np.arange(n), R + 1)
    index = faiss.IndexFlatIP(d)
    index.add(table)
    kk = min((k + 1) * (R + 1), len(table))
    src_l, dst_l, sim_l = [], [], []
    for s in range(0, n, 2048):
        block = f[s : s + 2048]
        queries, q = content_queries_kept(
            candidate_queries(block, dihedral, r[s : s + 2048][:, list(CENTRE_REGIONS)]),
            np.arange(s, s + len(block)),
            r[s : s + 2048],
            block,
        )
        sims, nn = index.search(queries, kk)
        hit = np.where(nn.ravel() >= 0, labels[np.maximum(nn.ravel(), 0)], -1)
        hit_owner = np.where(hit >= 0, hit // (R + 1), -1)
        n_full = (8 if dihedral else 1) * len(block) * kk
        a, b, w = split_top_owners(np.repeat(q, kk), hit_owner, hit % (R + 1), sims.ravel(), n_full, k, k_centre, min_sim)
        src_l.append(a)
        dst_l.append(b)
        sim_l.append(w)
    a, b, w = symmetric_edges(np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(sim_l))
    return pos[a], pos[b], w


def accept_near(sim: np.ndarray, ham: np.ndarray, inliers: np.ndarray, coverage: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """Which candidate pairs are near duplicates. ``ham`` < 0 = no hash; ``inliers`` < 0 = not verified."""
    by_hash = (ham >= 0) & (ham <= cfg.phash_max) & (sim >= cfg.min_candidate_sim)
    by_desc = sim >= cfg.accept_sim
    by_orb = ((inliers >= cfg.min_inliers) & (coverage >= cfg.min_coverage)) | (inliers >= cfg.strong_inliers)
    return by_hash | by_desc | by_orb


def needs_verification(sim: np.ndarray, ham: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """Candidates that only local features can decide (the cheap signals neither accept them)."""
    by_hash = (ham >= 0) & (ham <= cfg.phash_max) & (sim >= cfg.min_candidate_sim)
    return ~(by_hash | (sim >= cfg.accept_sim))


def semantic_pairs(src: np.ndarray, dst: np.ndarray, sim: np.ndarray, threshold: float) -> Pairs:
    """k-NN edges (from the embedding index) above the semantic threshold."""
    keep = (src >= 0) & (dst >= 0) & (src != dst) & (sim >= threshold)
    a, b, w = symmetric_edges(src[keep], dst[keep], sim[keep])
    return Pairs.of(a, b, w, "semantic")


def default_clusters(n_valid: int) -> int:
    """SemDeDup's default number of k-means clusters: ~sqrt(rows), so clusters hold ~sqrt(rows)
    rows each and the pairwise pass costs ~rows^1.5 rather than rows^2."""
    return int(max(1, round(np.sqrt(n_valid))))


def semdedup_centroids(x: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Unit-norm k-means centroids (c x d, float32) of unit vectors ``x`` (spherical k-means:
    clusters by cosine, the similarity SemDeDup thresholds). ``x`` may be a sample: FAISS itself
    trains on at most 256 points per centroid, so a sample of that size loses nothing."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    c = min(int(n_clusters), len(x))
    km = faiss.Kmeans(x.shape[1], c, niter=20, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return np.ascontiguousarray(km.centroids, np.float32)


def assign_clusters(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (largest inner product) of each row, as int64 labels: the same search
    k-means ran on its own index, so rows seen in training get the labels training gave them."""
    import faiss

    if len(x) == 0:
        return np.zeros(0, np.int64)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    _, lab = index.search(np.ascontiguousarray(x, np.float32), 1)
    return lab.ravel().astype(np.int64)


def cluster_pairs(x: np.ndarray, positions: np.ndarray, labels: np.ndarray, threshold: float, block: int = 2048) -> Pairs:
    """Every pair of rows in the same cluster with cosine >= ``threshold`` (rows of ``x`` are unit
    vectors; ``positions`` are their row numbers in the dataset). A cluster is compared in tiles of
    ``block`` x ``block`` rows above the diagonal, so a 50k-row cluster never makes a 50k x 50k
    matrix. Pairs come sorted by (i, j) with i < j, whatever the order of the input rows.

    The products run on one BLAS thread: OpenBLAS's threaded sgemm sums in another order on some
    CPUs (1 ulp apart in 6% of products on session 18's machine), and the job's pairs on Ray (one
    thread a worker) must carry the similarities of the in-memory path to the bit."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _cluster_pairs(x, positions, labels, threshold, block)


def _cluster_pairs(x: np.ndarray, positions: np.ndarray, labels: np.ndarray, threshold: float, block: int) -> Pairs:
    positions = np.asarray(positions, np.int64)
    labels = np.asarray(labels, np.int64)
    order = np.lexsort((positions, labels))  # by cluster, then by row: i < j within a cluster
    cut = np.flatnonzero(np.diff(labels[order])) + 1
    i_l, j_l, s_l = [], [], []
    for m in np.split(order, cut):
        if len(m) < 2:
            continue
        xm = np.ascontiguousarray(x[m], np.float32)
        pm = positions[m]
        for r in range(0, len(m), block):
            for c in range(r, len(m), block):
                s = xm[r : r + block] @ xm[c : c + block].T
                hit = s >= threshold
                a, b = np.nonzero(np.triu(hit, 1) if c == r else hit)
                i_l.append(pm[r + a])
                j_l.append(pm[c + b])
                s_l.append(s[a, b])
    if not i_l:
        return Pairs.empty()
    i, j, s = np.concatenate(i_l), np.concatenate(j_l), np.concatenate(s_l)
    o = np.lexsort((j, i))
    return Pairs.of(i[o], j[o], s[o], "semantic")


def semdedup_pairs(emb: np.ndarray, valid: np.ndarray, threshold: float, n_clusters: int | None = None, seed: int = 0) -> Pairs:
    """SemDeDup (Abbas et al. 2023): k-means the embeddings, then within each cluster every pair
    with cosine >= ``threshold`` is a semantic duplicate. Cost is sum of squared cluster sizes.
    In one process; the dedup job runs the same pieces on Ray (``pipelines.semdedup``)."""
    pos = np.flatnonzero(valid)
    if len(pos) < 2:
        return Pairs.empty()
    x = np.ascontiguousarray(emb[pos], np.float32)
    centroids = semdedup_centroids(x, n_clusters or default_clusters(len(pos)), seed)
    return cluster_pairs(x, pos, assign_clusters(x, centroids), threshold)


@dataclass
class DupResult:
    """Per row: group id (-1 = no duplicate), keep flag, kept row, reason, similarity to the kept row."""

    group: np.ndarray
    keep: np.ndarray
    dup_of: np.ndarray  # row position of the kept row, -1 for kept / unique rows
    reason: list
    sim: np.ndarray
    stats: dict = field(default_factory=dict)
    why: list = field(default_factory=list)  # per removed row, what made the kept row win (KEEPER_WHY)


def group_duplicates(
    n: int,
    pairs: Pairs,
    quality: np.ndarray,
    *,
    method: str = "leiden",
    resolution: float = 0.1,
    seed: int = 0,
    higher_is_better: bool = True,
    pair_sim=None,
    by_component: bool = False,
    map_fn=map,
    originality: Originality | None = None,
    captioned: np.ndarray | None = None,
) -> DupResult:
    """Communities of the accepted-pair graph; the original of each is kept, else its best-quality row.

    ``originality``: per-row signals of which copy is the original (``_keepers``); None = the
    best ``quality`` alone decides. ``captioned``: per row, whether it has a caption (a group
    with one keeps a captioned row; None: not known, not asked). ``quality``: one score per row (NaN = unknown, ranks last).
    ``resolution`` is the CPM
    density a group must beat: with edge weights ~0.9, 0.1 keeps a star of up to ~17 edits of one
    original together while two groups joined by a single stray edge stay apart. A row that the
    density rule leaves alone although it has accepted pairs then joins the group of its
    strongest pair (``graph.attach_orphans``: a screenshot often matches one copy of its photo). ``pair_sim(i, j)``, if given,
    computes a member's similarity to its kept row when the two share no edge. ``by_component``:
    communities per connected component, batches of components through ``map_fn`` (the same
    groups; see ``graph.communities_by_component``), for graphs too large for one process.
    """
    rep = _exact_representatives(n, pairs)
    ex = pairs.reason == REASONS.index("exact")
    a, b, w = symmetric_edges(rep[pairs.i[~ex]], rep[pairs.j[~ex]], pairs.sim[~ex].astype(np.float32))
    keep_e = a != b
    community = partial(communities_by_component, map_fn=map_fn) if by_component else communities
    a, b, w = a[keep_e], b[keep_e], np.clip(w[keep_e], 0.01, 1)
    lab = attach_orphans(community(n, a, b, w, method=method, resolution=resolution, seed=seed), a, b, w)
    lab = lab[rep]
    keeper, lost = _keepers(lab, quality, higher_is_better, originality, captioned)
    in_group = np.bincount(lab)[lab] > 1
    keep = ~in_group | (keeper == np.arange(n))
    group = np.full(n, -1, np.int64)
    if in_group.any():  # group ids in the order of their kept rows
        labels = np.unique(lab[in_group])
        order = labels[np.argsort(keeper[_first_of(lab, labels)], kind="stable")]
        gid = np.full(int(lab.max()) + 1, -1, np.int64)
        gid[order] = np.arange(len(order))
        group[in_group] = gid[lab[in_group]]
    reason, sim, dup_of = _member_reasons(pairs, lab, rep, keeper, keep, in_group, pair_sim)
    removed = ~keep
    reasons = np.array(reason, dtype=object)
    why = [KEEPER_WHY[c] if r else None for c, r in zip(lost.tolist(), removed.tolist())]
    stats = {
        "rows": n,
        "groups": int(group.max()) + 1 if n else 0,
        "rows_in_groups": int(in_group.sum()),
        "removed": int(removed.sum()),
        "removed_fraction": float(removed.sum() / n) if n else 0.0,
        "removed_by_reason": {r: int((removed & (reasons == r)).sum()) for r in REASONS},
        # rows with the bytes of an earlier row, whatever the reason they were removed under (an
        # exact pair whose group keeps a larger near copy is removed as "near" on both sides)
        "exact_copies": int((rep != np.arange(n)).sum()),
        "removed_by_keeper_rule": {w: int((removed & (lost == c)).sum()) for c, w in enumerate(KEEPER_WHY)},
    }
    return DupResult(group, keep, dup_of, reason, sim, stats, why)


def _exact_representatives(n: int, pairs: Pairs) -> np.ndarray:
    """Per row, the first row of its exact-copy set: exact copies are one graph node (a star of
    exact edges is not "dense", and a clique of them would be quadratic); communities expand back."""
    rep = np.arange(n, dtype=np.int64)
    ex = pairs.reason == REASONS.index("exact")
    if ex.any():
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        m = coo_matrix((np.ones(int(ex.sum())), (pairs.i[ex], pairs.j[ex])), shape=(n, n))
        comp = connected_components(m, directed=False)[1]
        first_of = np.full(comp.max() + 1, n, np.int64)
        np.minimum.at(first_of, comp, np.arange(n))
        rep = first_of[comp]
    return rep


def _first_of(lab: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The first row of each label in ``labels`` (any row would do: all share one keeper)."""
    first = np.full(int(lab.max()) + 1, -1, np.int64)
    rows = np.arange(len(lab))[::-1]
    first[lab[::-1]] = rows
    return first[labels]


# --- the keeper: the original over its derivatives ----------------------------------------------

# JPEG Annex K tables, which libjpeg (and PIL, and most web encoders) scale by the quality setting
IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    np.float64,
)  # fmt: skip
IJG_CHROMA = np.array([17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 99, 47, 66, 99, 99] + [99] * 48, np.float64)
# IJG_CHROMA: the top-left 4x4 of Annex K's chrominance table, row by row (the order is irrelevant
# to ijg_quality, which compares sums); every other entry is 99

KEEPER_WHY = ("no caption", "framed", "resolution", "bytes per pixel", "JPEG quality", "crop of it", "quality", "earlier row")
"""Why a removed row lost to its kept row, in the order the keeper rule asks (``_keepers``)."""


@dataclass
class Originality:
    """Per-row signals of which copy of a picture is the original (NaN = unknown, loses to known).

    Why these: a derivative (re-encode, resize, crop, screenshot) almost never has more pixels or
    more bytes per pixel than what it was made from, and a re-encode's quantisation is at least as
    coarse. A quality score does not know this: a 26 KB quality-20 re-encode can score a hair above
    its 144 KB original. Each signal wins only by a clear ``margin`` (a ratio, or a difference for
    the JPEG quality), so noise between two equal copies falls through to the next signal.
    """

    pixels: np.ndarray  # width x height
    bytes_per_pixel: np.ndarray  # encoded bytes / pixels
    jpeg_quality: np.ndarray  # ijg_quality of JPEGs; 100 for other formats
    margins: tuple[float, float, float] = (1.10, 1.5, 5.0)
    crops: tuple[np.ndarray, np.ndarray] | None = None  # (crop row, row it was cut from), from verification
    framed: np.ndarray | None = None  # 1.0 = flat surroundings (frame, screenshot, bars), 0.0 = none, NaN = unknown
    planes: np.ndarray | None = None  # colour planes of a JPEG (components: 1 grey, 3, 4 CMYK); 0 = not a JPEG

    @classmethod
    def of(cls, width, height, nbytes, jpeg_quality, framed=None, planes=None) -> Originality:
        """From per-row width, height, encoded size and JPEG quality (non-positive sizes = unknown),
        and optionally surroundings (``has_content_box``) and colour planes (``encoding_info``)."""
        w, h = (np.asarray(x, np.float64) for x in (width, height))
        px = np.where((w > 0) & (h > 0), w * h, np.nan)
        b = np.asarray(nbytes, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            bpp = np.where(b > 0, b / px, np.nan)
        opt = {k: None if v is None else np.asarray(v, np.float64) for k, v in (("framed", framed), ("planes", planes))}
        return cls(px, bpp, np.asarray(jpeg_quality, np.float64), **opt)

    def criteria(self):
        """(values, margin, is_ratio, within) per signal, in the order of KEEPER_WHY after
        "framed" (``framed_copies``); ``within`` (or None): a per-row class, the signal compares
        rows of one class of a group only.

        Bytes per pixel compare only copies of one encoding: JPEGs with as many colour planes (a
        CMYK JPEG stores four full planes, 2.8 times the bytes of the same picture in RGB,
        measured on a COCO photo), and lossless or other formats among themselves (a JPEG saved
        again as PNG takes several times its bytes). JPEG quality compares JPEGs only (other
        formats count 100, which says nothing of a PNG made from a JPEG). Across encodings, what
        decides is what follows: a crop, the quality score, the earlier row."""
        m = self.margins
        planes = None if self.planes is None else np.nan_to_num(np.asarray(self.planes, np.float64), nan=3.0).astype(np.int64)
        jpeg = None if planes is None else (planes > 0).astype(np.int64)
        return [(self.pixels, m[0], True, None), (self.bytes_per_pixel, m[1], True, planes), (self.jpeg_quality, m[2], False, jpeg)]

    def framed_copies(self, lab: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Alive rows with flat surroundings (``has_content_box``: a frame, a screenshot's window,
        bars) and clearly more pixels (``margins[0]``) than the largest bare copy of their group:
        that copy with a frame. Why: a border of 5% a side adds 20% pixels, so by size alone the
        framed copy would win. Only when it is larger: a photo on a flat background that a copy
        made noisy or cropped tight is the original, and it keeps its place in the size rule."""
        if self.framed is None:
            return np.zeros(len(lab), bool)
        framed = np.asarray(self.framed, np.float64)
        px = np.where(np.isfinite(self.pixels), self.pixels, -np.inf)
        bare = alive & (framed == 0)
        largest = np.full(int(lab.max()) + 1, -np.inf)
        np.maximum.at(largest, lab[bare], px[bare])
        return alive & (framed == 1) & np.isfinite(largest[lab]) & (px > largest[lab] * self.margins[0])


def ijg_quality(tables) -> float:
    """Estimated libjpeg quality (1..100) of JPEG quantisation tables (PIL's ``Image.quantization``).

    libjpeg scales the Annex K tables by s = 5000/q percent below q 50, else 200 - 2q; the ratio of
    the sums of the tables to those of the standard ones inverts it (table 0 is luma, the others
    chroma). Encoders with their own tables (cameras, Photoshop) get the libjpeg quality of the
    same coarseness, which is what tells a re-encode from its source.
    """
    if not tables:
        return math.nan
    got = sum(float(np.sum(t)) for t in tables.values())
    base = sum(float((IJG_LUMA if k == 0 else IJG_CHROMA).sum()) for k in tables)
    s = 100.0 * got / base
    return float(np.clip(5000.0 / s if s > 100 else (200.0 - s) / 2, 1, 100))


def encoding_signals(data: bytes | None, fmt: str | None = None) -> tuple[float, float]:
    """(encoded bytes, estimated JPEG quality) of one image, NaN where unknown (``encoding_info``)."""
    return encoding_info(data, fmt)[:2]


def encoding_info(data: bytes | None, fmt: str | None = None) -> tuple[float, float, float]:
    """(encoded bytes, estimated JPEG quality, colour planes) of one image, NaN where unknown.

    Only the headers are parsed: PIL reads the quantisation tables and the components without
    decoding pixels. Other formats count as quality 100 (lossless, or of unknown loss: no sign of
    a re-encode) and 0 planes (not a JPEG: their bytes compare only with other such copies,
    ``Originality.criteria``). ``fmt`` (the ``format`` column) answers for rows whose bytes are
    not stored.
    """
    if data is None:
        jpeg = fmt in (None, "JPEG", "MPO")
        return math.nan, (math.nan if jpeg else 100.0), (math.nan if jpeg else 0.0)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            jpeg = im.format in ("JPEG", "MPO")
            q = ijg_quality(getattr(im, "quantization", None)) if jpeg else 100.0
            planes = (float(len(getattr(im, "layer", None) or [])) or math.nan) if jpeg else 0.0
    except Exception:  # undecodable or hostile bytes: the size still counts
        q, planes = math.nan, math.nan
    return float(len(data)), q, planes


def _near_best(lab: np.ndarray, v: np.ndarray, alive: np.ndarray, margin: float, ratio: bool) -> np.ndarray:
    """Rows whose value is within ``margin`` of the best alive row of their group (unknown = -inf)."""
    v = np.where(np.isfinite(v), v, -np.inf)
    best = np.full(int(lab.max()) + 1, -np.inf)
    np.maximum.at(best, lab[alive], v[alive])
    b = best[lab]
    return v >= (b / margin if ratio else b - margin)  # all unknown: -inf >= -inf, all stay


def _keepers(
    lab: np.ndarray, quality: np.ndarray, higher_is_better: bool, orig: Originality | None = None, captioned: np.ndarray | None = None
):
    """Per row, the kept row of its community, and why each other row lost (index into KEEPER_WHY).

    First, where a group has a row with a caption, its rows without one are out (``captioned``):
    the kept row is the one training sees, and an export leaves out a row with no caption, so
    keeping the bare copy of a captioned photo lost the photo. Then each ``orig`` signal in turn
    drops the rows that are clearly behind the best row of their group (a filter, not a sort, so
    a margin never makes the order depend on which rows are compared); the best quality (NaN
    ranks last) of the rows left is kept, ties to the earlier row.
    """
    n = len(lab)
    lost = np.full(n, -1, np.int64)
    if n == 0:
        return np.zeros(0, np.int64), lost
    alive = np.ones(n, bool)
    if captioned is not None:
        has = np.asarray(captioned, bool)
        any_of = np.zeros(int(lab.max()) + 1, bool)
        any_of[lab[has]] = True
        bare = any_of[lab] & ~has
        lost[bare] = KEEPER_WHY.index("no caption")
        alive &= ~bare
    if orig is not None:
        framed = orig.framed_copies(lab, alive)
        lost[framed] = KEEPER_WHY.index("framed")
        alive &= ~framed
    for c, (v, margin, ratio, within) in enumerate(orig.criteria() if orig is not None else [], start=KEEPER_WHY.index("resolution")):
        ok = _near_best(lab if within is None else _sub_groups(lab, within), v, alive, margin, ratio)
        lost[alive & ~ok] = c
        alive &= ok
    if orig is not None and orig.crops is not None:
        cropped = _crops_of_alive(lab, alive, *orig.crops)
        lost[cropped] = KEEPER_WHY.index("crop of it")
        alive &= ~cropped
    q = np.asarray(quality, np.float64).copy()
    q = q if higher_is_better else -q
    q[~np.isfinite(q)] = -np.inf
    order = np.lexsort((np.arange(n), -q, ~alive, lab))  # by group, alive first, best first, then earlier row
    first = np.ones(n, bool)
    first[1:] = lab[order][1:] != lab[order][:-1]
    keeper_of = np.zeros(int(lab.max()) + 1, np.int64)
    keeper_of[lab[order[first]]] = order[first]
    keeper = keeper_of[lab]
    rest = alive & (keeper != np.arange(n))
    lost[rest] = np.where(q[rest] < q[keeper[rest]], KEEPER_WHY.index("quality"), KEEPER_WHY.index("earlier row"))
    return keeper, lost


def _sub_groups(lab: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Labels of the (group, class) pairs: rows compare with the rows of their group and class."""
    return np.unique(np.stack([lab, np.asarray(within, np.int64)]), axis=1, return_inverse=True)[1].ravel()


def _crops_of_alive(lab: np.ndarray, alive: np.ndarray, crop: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Rows still in the running that are a crop of another such row of their group: the picture
    they were cut from shows more of the scene (``descriptor.containment``). Only among rows the
    size and encoding signals left tied, so an upscaled crop with clearly more pixels, or a
    screenshot, is decided before (or by) this."""
    crop, whole = np.asarray(crop, np.int64), np.asarray(whole, np.int64)
    live = alive[crop] & alive[whole] & (lab[crop] == lab[whole])
    out = np.zeros(len(lab), bool)
    out[crop[live]] = True
    return out


def _strongest_edges(pairs: Pairs) -> tuple[dict, dict]:
    """Per undirected pair, the strongest kind (exact < near < semantic) and its best similarity."""
    edge: dict = {}
    kinds: dict = {}
    for x, y, s, r in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.sim.tolist(), pairs.reason.tolist()):
        key = (min(x, y), max(x, y))
        if key not in edge or r < kinds[key] or (r == kinds[key] and s > edge[key]):
            edge[key], kinds[key] = s, r
    return edge, kinds


def _member_reasons(pairs: Pairs, lab, rep, keeper, keep, in_group, pair_sim):
    """Reason and similarity of each removed row to its kept row: the direct edge if any, else the
    row's strongest edge inside the group (the reason is then the kind of that edge)."""
    n = len(lab)
    edge, kinds = _strongest_edges(pairs)
    best_in_group: dict[int, tuple[int, float]] = {}
    for (x, y), r in kinds.items():
        if lab[x] != lab[y]:
            continue
        for u in (x, y):
            cur = best_in_group.get(u)
            if cur is None or (r, -edge[(x, y)]) < (cur[0], -cur[1]):
                best_in_group[u] = (r, edge[(x, y)])
    reason: list = [None] * n
    sim = np.full(n, np.nan, np.float32)
    dup_of = np.full(n, -1, np.int64)
    for u in np.flatnonzero(in_group & ~keep):
        k = int(keeper[u])
        dup_of[u] = k
        key = (min(u, k), max(u, k))
        if rep[u] == rep[k]:
            reason[u], sim[u] = "exact", 1.0
        elif key in kinds:
            reason[u], sim[u] = REASONS[kinds[key]], edge[key]
        else:
            r, s = best_in_group.get(int(u), (REASONS.index("semantic"), np.nan))
            reason[u] = REASONS[r]
            sim[u] = pair_sim(int(u), k) if pair_sim is not None else s
    return reason, sim, dup_of


def near_pairs(
    full: np.ndarray,
    regions: np.ndarray,
    valid: np.ndarray,
    phash: np.ndarray | None,
    cfg: NearDupConfig,
    verify,
    phash_valid: np.ndarray | None = None,
) -> tuple[Pairs, dict]:
    """Accepted near-duplicate pairs and counters.

    ``verify(i, j) -> (inliers, coverage)`` runs local-feature verification of the candidate
    pairs that the cheap signals cannot decide (a local loop in tests, Ray workers in the job).
    ``phash`` may be None (no hash column): the descriptor and local features decide alone.
    """
    i, j, sim = region_candidates(full, regions, valid, cfg.k, cfg.min_candidate_sim, dihedral=cfg.dihedral, k_centre=cfg.k_centre)
    stats = {"desc_candidates": int(len(i))}
    if phash is not None:
        hvalid = valid & (np.ones(len(phash), bool) if phash_valid is None else phash_valid)
        hi, hj, hd = hash_pairs(phash, hvalid, cfg.hash_k)
        close = hd <= cfg.phash_max
        if close.any():  # hash neighbours the descriptor search missed join the candidates
            a, b, _ = symmetric_edges(hi[close], hj[close], np.ones(int(close.sum()), np.float32))
            known = set(zip(i.tolist(), j.tolist()))
            extra = [(x, y) for x, y in zip(a.tolist(), b.tolist()) if (x, y) not in known]
            if extra:
                ea = np.array([e[0] for e in extra], np.int64)
                eb = np.array([e[1] for e in extra], np.int64)
                es = np.einsum("nd,nd->n", full[ea].astype(np.float32), full[eb].astype(np.float32))
                i, j, sim = np.concatenate([i, ea]), np.concatenate([j, eb]), np.concatenate([sim, es])
                stats["hash_only_candidates"] = len(extra)
        ham = popcount64(np.bitwise_xor(phash[i].astype(np.uint64), phash[j].astype(np.uint64)))
        ham = np.where(hvalid[i] & hvalid[j], ham, -1)
    else:
        ham = np.full(len(i), -1, np.int32)
    inl = np.full(len(i), -1, np.int32)
    cov = np.zeros(len(i), np.float32)
    todo = np.flatnonzero(needs_verification(sim, ham, cfg))
    stats["verified_pairs"] = int(len(todo))
    if len(todo):
        vi, vc = verify(i[todo], j[todo])
        inl[todo] = np.asarray(vi, np.int32)
        cov[todo] = np.asarray(vc, np.float32)
    ok = accept_near(sim, ham, inl, cov, cfg)
    stats["accepted_pairs"] = int(ok.sum())
    return Pairs.of(i[ok], j[ok], np.clip(sim[ok], 0, 1), "near"), stats
