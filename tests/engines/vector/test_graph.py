"""Connected components over edge partitions (the dedup job's large-graph path) against one
in-memory run."""

from __future__ import annotations

import numpy as np

from engines.vector.graph import communities, components_by_partition


def _recording_map(calls: list):
    def fn_map(fn, items):
        items = list(items)
        calls.append([len(x[0]) for x in items])
        return [fn(x) for x in items]

    return fn_map


def test_components_over_partitions_equal_one_run():
    rng = np.random.default_rng(3)
    n = 5000
    src, dst = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    # a path 0-1-2-...-999 in shuffled order: every partition sees pieces of it, only the merges join it
    path = rng.permutation(999)
    src, dst = np.r_[src, path], np.r_[dst, path + 1]
    whole = communities(n, src, dst, method="components")
    calls: list = []
    split = components_by_partition(n, src, dst, map_fn=_recording_map(calls), part_edges=300)
    assert np.array_equal(whole, split)
    assert len(calls[0]) == 14 and max(calls[0]) <= 300  # partitions of at most 300 edges
    assert len(calls) >= 4  # merged two by two: 14 -> 7 -> 4 -> 2 -> 1
    assert len(np.unique(split[:1000])) == 1  # the path is one component


def test_components_over_partitions_edge_cases():
    assert components_by_partition(0, np.zeros(0, np.int64), np.zeros(0, np.int64)).size == 0
    lab = components_by_partition(4, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert lab.tolist() == [0, 1, 2, 3]
    lab = components_by_partition(5, np.array([3, 1]), np.array([4, 3]), part_edges=1)
    assert lab.tolist() == [0, 1, 2, 1, 1]


def test_orphans_join_the_group_of_their_strongest_pair_and_never_merge_groups():
    """Two dense groups of 6 (weights 0.9), one stray edge between them, and a row verified
    against one member of each group: CPM leaves it alone; attached, it joins the group of its
    stronger pair, and the two groups stay apart."""
    from engines.vector.graph import attach_orphans

    g1, g2, orphan = list(range(6)), list(range(6, 12)), 12
    dense = [(a, b) for grp in (g1, g2) for x, a in enumerate(grp) for b in grp[x + 1 :]]
    src = np.array([a for a, _ in dense] + [5, orphan, orphan])
    dst = np.array([b for _, b in dense] + [6, 2, 9])
    w = np.array([0.9] * len(dense) + [0.82, 0.86, 0.84], np.float32)
    lab = communities(13, src, dst, w, resolution=0.2)
    assert (lab == lab[orphan]).sum() == 1  # the density rule leaves it alone
    out = attach_orphans(lab, src, dst, w)
    assert out[orphan] == out[2] and len(set(out[g1])) == 1 and len(set(out[g2])) == 1 and out[0] != out[6]
    assert np.array_equal(attach_orphans(out, src, dst, w), out)  # nothing left to attach
