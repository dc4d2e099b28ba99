"""k-NN graph blocks and recall measurement.

The k-NN graph (the report uses 100-NN) is built block by block: a block of query rows is
searched against the index and turned into edge columns (source label, neighbour label,
similarity) with the query itself removed. Each block is independent, so blocks run on any
worker in any order and memory is bounded by one block, whatever the dataset size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.vector.index import search

__all__ = ["knn_block", "merge_neighbours", "recall_at_k", "exact_knn"]


def knn_block(index: Any, queries: np.ndarray, labels: np.ndarray, k: int, *, nprobe: int | None = None) -> dict[str, np.ndarray]:
    """Edges of ``queries`` (with their own ``labels``) to their k nearest other rows.

    Searches k+1 so that dropping the row itself still leaves k; rows with fewer than k
    neighbours (tiny datasets, sparse IVF lists) just get fewer edges, never label -1 edges."""
    sims, nn = search(index, queries, k + 1, nprobe=nprobe)
    lab = np.asarray(labels, np.int64)
    ok = (nn >= 0) & (nn != lab[:, None])
    ok &= np.cumsum(ok, axis=1) <= k  # at most k per row (when the row itself was not a hit)
    src = np.repeat(lab, nn.shape[1])[ok.ravel()]
    dst = nn[ok]
    sim = sims[ok]
    return {"src": src, "dst": dst, "sim": sim.astype(np.float32)}


def merge_neighbours(old: tuple, cand: tuple, k: int) -> tuple[tuple, int]:
    """Old lists plus candidate edges, cut back to the best ``k`` per source.

    ``old`` and ``cand`` are (source, neighbour, similarity) arrays. Why a merge is enough for
    an incremental graph: the old list holds a row's k nearest old rows and the candidates its
    k nearest new rows, so their best k are its k nearest in the union. A candidate enters only
    when its similarity is above the source's k-th (ties keep the old edge: the sort is stable
    and old edges come first). Returns ((src, dst, sim, rank), number of sources whose list
    changed)."""
    src = np.concatenate([np.asarray(old[0], object), np.asarray(cand[0], object)])
    dst = np.concatenate([np.asarray(old[1], object), np.asarray(cand[1], object)])
    sim = np.concatenate([np.asarray(old[2], np.float32), np.asarray(cand[2], np.float32)])
    is_new = np.r_[np.zeros(len(old[0]), bool), np.ones(len(cand[0]), bool)]
    if not len(src):
        return (src, dst, sim, np.zeros(0, np.int16)), 0
    _, code = np.unique(src.astype(str), return_inverse=True)
    order = np.lexsort((-sim, code))  # by source, then most similar first (stable: old before new)
    code, src, dst, sim, is_new = code[order], src[order], dst[order], sim[order], is_new[order]
    change = np.r_[True, code[1:] != code[:-1]]
    starts = np.maximum.accumulate(np.where(change, np.arange(len(code)), 0))
    rank = np.arange(len(code)) - starts + 1
    keep = rank <= k
    changed = len(np.unique(code[keep & is_new]))
    return (src[keep], dst[keep], sim[keep], rank[keep].astype(np.int16)), changed


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force (FAISS flat): (similarities, positions in ``base``)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1]) if metric == "ip" else faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Share of the exact k nearest found among the approximate k nearest (mean over queries)."""
    a, e = approx[:, :k], exact[:, :k]
    hits = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, e))
    return hits / float(e.size) if e.size else 1.0
