"""Proximity graphs from k-NN similarities, and their communities (Leiden; Louvain fallback).

The report (section 2.2) deduplicates by community detection: keep the k-NN edges whose
similarity clears a threshold, then find communities; dense communities are duplicate groups.
Why communities and not connected components: components chain (A~B, B~C, so A, C and
everything reachable fall into one group even when A and C are unrelated); one stray edge
between two groups merges them. Leiden with the Constant Potts Model (CPM) only keeps a set of
nodes together when its internal edge weight beats ``resolution`` x (pairs in the set), i.e. it
asks for *dense* groups, and it guarantees each community is connected.

Pure NumPy in, NumPy out; igraph (C) does the work, so 1M nodes / 10M edges takes seconds.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

__all__ = [
    "threshold_edges",
    "symmetric_edges",
    "communities",
    "communities_by_component",
    "components_by_partition",
    "community_sizes",
    "removal_curve",
]

log = logging.getLogger(__name__)


def threshold_edges(src: np.ndarray, dst: np.ndarray, sim: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges with similarity >= threshold, de-duplicated as undirected (i < j, max similarity)."""
    keep = (sim >= threshold) & (src != dst) & (dst >= 0)
    return symmetric_edges(src[keep], dst[keep], sim[keep])


def symmetric_edges(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected simple edge list: (min, max) pairs, each once, with the largest weight seen."""
    if len(src) == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), np.zeros(0, np.float32)
    a = np.minimum(src, dst).astype(np.int64)
    b = np.maximum(src, dst).astype(np.int64)
    key = a * (int(max(a.max(), b.max())) + 1) + b
    order = np.lexsort((-w, key))  # per key, the heaviest first
    key, a, b, w = key[order], a[order], b[order], w[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return a[first], b[first], w[first].astype(np.float32)


def communities(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    method: Literal["leiden", "louvain", "components"] = "leiden",
    objective: Literal["CPM", "modularity"] = "CPM",
    resolution: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Community label (0..C-1) per node; isolated nodes get their own label.

    ``leiden`` uses igraph (``community_leiden``); when igraph is missing it falls back to
    ``louvain`` (networkx), logging the fallback. ``components`` = connected components (no
    density requirement; used for quick what-if curves). Deterministic for a given ``seed``.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    weight = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
    if len(src) == 0:
        return np.arange(n, dtype=np.int64)
    if method == "components":
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        m = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
        return connected_components(m, directed=False)[1].astype(np.int64)
    if method == "leiden":
        try:
            import igraph
        except ImportError:
            log.warning("python-igraph is not installed: falling back to Louvain (networkx)")
            method = "louvain"
    if method == "leiden":
        import random

        g = igraph.Graph(n=n, edges=np.column_stack([src, dst]).astype(np.int64), directed=False)
        state = random.getstate()
        random.seed(seed)  # igraph draws from Python's `random`
        try:
            part = g.community_leiden(
                objective_function=objective,
                weights=weight.astype(np.float64),
                resolution=resolution,
                beta=0.01,
                n_iterations=-1,
            )
        finally:
            random.setstate(state)
        return _relabel(np.asarray(part.membership, np.int64))
    if method == "louvain":
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), weight.tolist()))
        # networkx Louvain optimises modularity; its resolution has another scale than CPM's,
        # so the default (1.0) is used: it never merges disconnected duplicate groups.
        comms = nx.community.louvain_communities(g, weight="weight", seed=seed)
        lab = np.empty(n, np.int64)
        for c, members in enumerate(sorted(comms, key=min)):
            lab[list(members)] = c
        return _relabel(lab)
    raise ValueError(f"unknown community method {method!r}; use leiden, louvain or components")


def communities_by_component(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    map_fn=map,
    batch_edges: int = 200_000,
    **kw,
) -> np.ndarray:
    """``communities`` computed per connected component: components first (over edge partitions,
    ``components_by_partition``), then Leiden (or Louvain) on each component's subgraph, batches
    of components handed to ``map_fn`` (the builtin ``map`` here; the dedup job passes one that
    runs each task on Ray).

    Why the groups are the same as one run over the whole graph: under CPM a community that
    spans two components has no edge between its two parts, so splitting it loses no internal
    weight and gains ``resolution x n1 x n2`` of the size penalty; every community of an optimum
    therefore lies inside one component (Leiden also guarantees connected communities), and a
    component's communities depend only on its own edges. The partition is the same up to
    label numbering, and labels are renumbered by first appearance, as ``communities`` does.
    (Tested on real duplicate graphs; Leiden is a heuristic, so on large tangled components the
    two could reach different local optima of equal kind, never communities across components.)
    """
    if n == 0:
        return np.zeros(0, np.int64)
    if len(src) == 0:
        return np.arange(n, dtype=np.int64)
    weight = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
    comp = components_by_partition(n, src, dst, map_fn=map_fn, part_edges=batch_edges)
    order = np.argsort(comp[src], kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    bounds = np.flatnonzero(np.r_[True, comp[src][1:] != comp[src][:-1], True])
    batches, cur, size = [], [], 0
    for s, e in zip(bounds[:-1], bounds[1:]):
        cur.append((src[s:e], dst[s:e], weight[s:e]))
        size += e - s
        if size >= batch_edges:
            batches.append((cur, kw))
            cur, size = [], 0
    if cur:
        batches.append((cur, kw))
    lab = np.full(n, -1, np.int64)
    nxt = 0
    for parts in map_fn(_component_batch, batches):
        for nodes, local in parts:
            lab[nodes] = nxt + local
            nxt += int(local.max()) + 1
    alone = lab < 0
    lab[alone] = nxt + np.arange(int(alone.sum()))
    return _relabel(lab)


def components_by_partition(n: int, src: np.ndarray, dst: np.ndarray, *, map_fn=map, part_edges: int = 200_000) -> np.ndarray:
    """Connected-component label per node, computed over partitions of the edge list by ``map_fn``
    (one Ray task per partition in the dedup job), never the whole graph in one process.

    Each partition is reduced to a star forest (every node it touches -> the smallest node of its
    component within the partition): at most one edge per touched node, and the same components.
    Forests are then merged two by two (the union of two forests, reduced again) until one is
    left, whose edges point every touched node at the smallest node of its global component.
    Labels are numbered by first appearance, as ``communities(method="components")`` numbers them
    up to that same renumbering, so the two give equal arrays."""
    if n == 0:
        return np.zeros(0, np.int64)
    step = max(1, int(part_edges))
    forests = list(map_fn(_star_forest, [(src[s : s + step], dst[s : s + step]) for s in range(0, len(src), step)]))
    while len(forests) > 1:
        pairs = [(np.r_[a[0], b[0]], np.r_[a[1], b[1]]) for a, b in zip(forests[::2], forests[1::2])]
        forests = list(map_fn(_star_forest, pairs)) + ([forests[-1]] if len(forests) % 2 else [])
    lab = np.arange(n, dtype=np.int64)
    if forests:
        lab[forests[0][0]] = forests[0][1]
    return _relabel(lab)


def _star_forest(edges: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(node, smallest node of its component) for every node the edges touch, roots left out."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = edges
    nodes, inv = np.unique(np.r_[a, b].astype(np.int64), return_inverse=True)
    m = len(nodes)
    if m == 0:
        return nodes, nodes.copy()
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (inv[: len(a)], inv[len(a) :])), shape=(m, m)), directed=False)
    _, first = np.unique(comp, return_index=True)  # nodes are sorted: the first of a label is its smallest
    root = nodes[first][comp]
    keep = root != nodes
    return nodes[keep], root[keep]


def _component_batch(batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """(nodes, community label within the component) for each component of a batch."""
    parts, kw = batch
    out = []
    for a, b, w in parts:
        nodes, inv = np.unique(np.r_[a, b], return_inverse=True)
        out.append((nodes, communities(len(nodes), inv[: len(a)], inv[len(a) :], w, **kw)))
    return out


def attach_orphans(lab: np.ndarray, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Labels where each node alone in its community but with edges joins the community of its
    heaviest edge (ties: the smaller neighbour). Why: CPM asks a row joining a group of ``m`` for
    edges worth ``resolution x m``; a copy verified against only one member of a large group
    (a screenshot that matches one copy of its photo) stays alone, although a verified pair says
    it is a duplicate. Attaching it never merges two communities, so the density rule's guard
    against chaining holds; the result depends only on the partition and the edges."""
    if len(src) == 0:
        return lab
    size = np.bincount(lab)
    x, y = np.r_[src, dst], np.r_[dst, src]
    w = np.r_[weight, weight]
    orphan = (size[lab[x]] == 1) & (size[lab[y]] > 1)
    if not orphan.any():
        return lab
    x, y, w = x[orphan], y[orphan], w[orphan]
    order = np.lexsort((y, -w, x))  # per orphan: heaviest edge first, then the smaller neighbour
    x, y = x[order], y[order]
    first = np.r_[True, x[1:] != x[:-1]]
    out = lab.copy()
    out[x[first]] = lab[y[first]]
    return _relabel(out)


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Labels numbered by first appearance, so equal partitions give equal label arrays."""
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].astype(np.int64)


def community_sizes(labels: np.ndarray) -> np.ndarray:
    """Size of the community of each node."""
    counts = np.bincount(labels)
    return counts[labels]


def removal_curve(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    sim: np.ndarray,
    thresholds: list[float],
    *,
    by_component: bool = False,
    map_fn=map,
    total: int | None = None,
    **community_kw,
) -> list[dict]:
    """For each threshold: groups, rows in groups, and the fraction of rows a dedup would remove
    (every community keeps one row). Lets a user choose the threshold before applying it.
    ``by_component``: communities per connected component (``communities_by_component``).
    ``total``: the rows the fraction is of when the ``n`` nodes are only the rows with a pair
    (``dedup.rows_with_pairs``); default ``n``."""
    total = n if total is None else total
    out = []
    for t in sorted(thresholds):
        a, b, w = threshold_edges(src, dst, sim, t)
        lab = (
            communities_by_component(n, a, b, w, map_fn=map_fn, **community_kw) if by_component else communities(n, a, b, w, **community_kw)
        )
        lab = attach_orphans(lab, a, b, w)  # as the dedup job groups (``dedup.group_duplicates``)
        sizes = np.bincount(lab) if n else np.zeros(0, np.int64)
        removed = int((sizes[sizes > 1] - 1).sum())
        out.append(
            {
                "threshold": float(t),
                "edges": int(len(a)),
                "groups": int((sizes > 1).sum()),
                "rows_in_groups": int(sizes[sizes > 1].sum()),
                "removed": removed,
                "removed_fraction": removed / total if total else 0.0,
            }
        )
    return out
