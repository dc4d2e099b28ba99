"""FAISS index engine: checked vectors, approximate vs exact recall, shards, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from engines.vector.index import IndexConfig, VectorError, add_vectors, clean_vectors, search, to_matrix, train_index
from engines.vector.knn import exact_knn, knn_block, recall_at_k
from engines.vector.ondisk import empty_like, merge_index, read_index, write_shard
from engines.vector.synth import clustered_embeddings


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """The test machine is shared and oversubscribed: OpenMP spin-waits make 2 threads slower than 1."""
    import faiss

    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return next(clustered_embeddings(30_000, 128, n_clusters=300, seed=3))


def test_bad_vectors_are_skipped_by_reason_and_wrong_dim_is_an_error():
    col = pa.array([[1, 2, 3], None, [float("nan"), 1, 1], [0, 0, 0], [3, 4, 0]], pa.list_(pa.float32(), 3))
    x, null = to_matrix(col)
    clean, valid, skipped = clean_vectors(x, null)
    assert valid.tolist() == [True, False, False, False, True]
    assert skipped == {"null_vector": 1, "nan_vector": 1, "zero_vector": 1}
    assert np.allclose(np.linalg.norm(clean[valid], axis=1), 1)
    assert np.isfinite(clean).all()
    with pytest.raises(VectorError, match="dimension 3, expected 4"):
        to_matrix(col, dim=4)
    with pytest.raises(VectorError, match="different lengths"):
        to_matrix(pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]]))
    with pytest.raises(VectorError, match="no valid vectors"):
        train_index(np.zeros((0, 3), np.float32), 10, IndexConfig())


def test_int8_descriptors_read_back_as_unit_vectors_with_their_cosines():
    """Descriptors are stored as int8 directions (``to_int8``: no scale kept) and read back
    normalised, a region at a time; cosines stay within a few thousandths of float32's."""
    from engines.vector.descriptor import to_int8

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 231)).astype(np.float32) * rng.uniform(0.1, 5, (300, 1)).astype(np.float32)
    x[:150, :168] = np.abs(x[:150, :168])  # histogram cells are non-negative, as the descriptor's are
    q = to_int8(x)
    assert q.dtype == np.int8 and (np.abs(q.astype(np.int32)).max(axis=1) == 127).all()
    col = pa.FixedSizeListArray.from_arrays(pa.array(q.ravel()), 231)
    got, null = to_matrix(col)
    assert not null.any() and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    ref = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.abs(got @ got.T - ref @ ref.T).max() < 5e-3
    # two descriptors a row (as vec_regions holds 11): each normalised on its own, a null row zeros
    two = pa.FixedSizeListArray.from_arrays(pa.array(to_int8(x[:20]).reshape(10, 462).ravel()), 462, mask=pa.array([False] * 9 + [True]))
    parts, null = to_matrix(two, unit=231)
    assert null.tolist() == [False] * 9 + [True] and not parts[9].any()
    assert np.allclose(np.linalg.norm(parts[:9].reshape(18, 231), axis=1), 1, atol=1e-6)
    whole, _ = to_matrix(two)  # without ``unit`` an integer row is one vector
    assert np.allclose(np.linalg.norm(whole[:9], axis=1), 1, atol=1e-6)
    assert to_int8(np.zeros((1, 4))).tolist() == [[0, 0, 0, 0]]  # a blank descriptor stays blank, no NaN
    with pytest.raises(VectorError, match="do not split into vectors of 100"):
        to_matrix(col, unit=100)


def test_ivf_recall_against_exact_search(vectors):
    base, queries = vectors[:28_000], vectors[28_000:28_500]
    idx, kind, spec = train_index(base, len(base), IndexConfig(kind="ivfsq8", nprobe=16))
    add_vectors(idx, base, np.arange(len(base)))
    _, approx = search(idx, queries, 10)
    _, exact = exact_knn(base, queries, 10)
    r = recall_at_k(approx, exact, 10)
    assert kind == "ivfsq8" and spec.startswith("IVF")
    assert r >= 0.95, f"recall@10 {r:.3f}"
    # PQ trades recall for 16x smaller codes; it must still find most true neighbours. PQ encodes
    # the residual to the list centroid, so it wants lists finer than the data's clusters
    pq, _, _ = train_index(base, len(base), IndexConfig(kind="ivfpq", pq_m=32, nlist=512, nprobe=16, train_size=20_000))
    add_vectors(pq, base, np.arange(len(base)))
    assert recall_at_k(search(pq, queries, 10)[1], exact, 10) >= 0.6
    with pytest.raises(VectorError, match="query dimension"):
        search(idx, queries[:, :64], 10)


def test_sharded_add_and_merge_equals_one_add_and_seed_is_deterministic(vectors, tmp_path):
    """Shards written by workers and merged on disk (``merge_index``, as the index build does)
    answer as one index with every row added."""
    import faiss

    base = vectors[:20_000]
    cfg = IndexConfig(kind="ivfflat", nlist=64, seed=7)
    one, _, _ = train_index(base, len(base), cfg)
    trained = empty_like(one)
    faiss.write_index(trained, str(tmp_path / "trained.faiss"))
    add_vectors(one, base, np.arange(len(base)))
    shards = []
    for s in range(0, len(base), 6000):
        sh = empty_like(trained)
        add_vectors(sh, base[s : s + 6000], np.arange(s, min(s + 6000, len(base))))
        shards.append(str(tmp_path / f"unit-{s}.faiss"))
        write_shard(sh, shards[-1])
    assert merge_index(str(tmp_path / "trained.faiss"), shards, str(tmp_path / "index.faiss")) == len(base)
    merged = read_index(tmp_path / "index.faiss")
    faiss.extract_index_ivf(merged).nprobe = faiss.extract_index_ivf(one).nprobe
    assert merged.ntotal == one.ntotal == len(base)
    q = vectors[25_000:25_200]
    s1, l1 = search(one, q, 10)
    s2, l2 = search(merged, q, 10)
    assert np.array_equal(l1, l2) and np.allclose(s1, s2)
    again, _, _ = train_index(base, len(base), cfg)  # same data + seed -> same lists -> same answers
    add_vectors(again, base, np.arange(len(base)))
    assert np.array_equal(search(again, q, 10)[1], l1)


@pytest.mark.parametrize("kind", ["ivfflat", "ivfsq8", "ivffp16", "flat"])
def test_shards_written_without_their_quantiser_merge_on_disk_to_the_same_lists(vectors, tmp_path, kind):
    """``write_shard`` leaves the coarse quantiser out of an IVF shard (an HNSW one here, as the
    dedup job's): smaller files, and ``merge_ondisk`` builds byte-identical lists from them. The
    shard in memory keeps its quantiser; a flat index is written whole."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    base, q = vectors[:12_000], vectors[25_000:25_100]
    cfg = IndexConfig(kind=kind, nlist=256, hnsw_lists=128, nprobe=16)
    trained = empty_like(train_index(base, len(base), cfg)[0])
    whole, lists = [], []
    for k, s in enumerate(range(0, len(base), 4000)):
        sh = empty_like(trained)
        add_vectors(sh, base[s : s + 4000], np.arange(s, s + 4000))
        before = search(sh, q, 5)
        whole.append(str(tmp_path / f"whole-{k}.faiss"))
        lists.append(str(tmp_path / f"lists-{k}.faiss"))
        faiss.write_index(sh, whole[-1])
        write_shard(sh, lists[-1])
        after = search(sh, q, 5)
        assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])
    sizes = [Path(p).stat().st_size for p in whole], [Path(p).stat().st_size for p in lists]
    if kind == "flat":
        assert sizes[0] == sizes[1] and np.array_equal(
            search(faiss.read_index(lists[0]), q, 5)[1], search(faiss.read_index(whole[0]), q, 5)[1]
        )
        return
    quantiser = faiss.serialize_index(faiss.extract_index_ivf(trained).quantizer).size
    assert all(w - l >= quantiser * 0.9 for w, l in zip(*sizes)), (sizes, quantiser)
    merged = []
    for name, paths in (("whole", whole), ("lists", lists)):
        index = empty_like(trained)
        merge_ondisk(index, paths, str(tmp_path / f"{name}.ivfdata"))
        merged.append((index.ntotal, search(index, q, 10), (tmp_path / f"{name}.ivfdata").read_bytes()))
    (n1, (s1, l1), b1), (n2, (s2, l2), b2) = merged
    assert n1 == n2 == len(base) and b1 == b2 and np.array_equal(l1, l2) and np.array_equal(s1, s2)


def test_knn_block_drops_self_and_keeps_k():
    x = next(clustered_embeddings(500, 32, n_clusters=10, seed=1))
    idx, _, _ = train_index(x, len(x), IndexConfig(kind="flat"))
    add_vectors(idx, x, np.arange(1000, 1500))
    e = knn_block(idx, x[:50], np.arange(1000, 1050), 5)
    assert len(e["src"]) == 250
    assert not np.any(e["src"] == e["dst"])
    assert np.all(np.bincount(e["src"] - 1000) == 5)
    _, ex = exact_knn(x, x[:50], 6)
    assert set(e["dst"][e["src"] == 1000].tolist()) == set((ex[0][1:] + 1000).tolist())


@pytest.mark.parametrize(("kind", "exact_tol"), [("ivfflat", 1e-5), ("ivffp16", 5e-4), ("ivfsq8", 1e-2)])
def test_list_major_scan_finds_every_hit_the_faiss_search_finds_above_the_threshold(vectors, tmp_path, kind, exact_tol):
    """``search_above`` (the dedup job's candidate scan: queries grouped by list, one matrix product
    per list, a threshold instead of a heap) on a memory-mapped IVF file returns exactly the
    hits >= the threshold that FAISS's own search returns, with the same similarities: for
    float32 lists and for float16 / 8-bit residual codes (decoded per list, centroid added back),
    whose cosines stay near the exact ones (fp16 ~1e-4, SQ8 ~3e-3 here)."""
    import faiss

    from engines.vector.index import list_major_ok, search_above

    base, queries = vectors[:20_000], vectors[20_000:20_600]
    idx, got_kind, _ = train_index(base, len(base), IndexConfig(kind=kind, nlist=64, nprobe=4))
    add_vectors(idx, base, np.arange(len(base)) * 11)
    faiss.write_index(idx, str(tmp_path / "ivf.faiss"))
    mapped = faiss.read_index(str(tmp_path / "ivf.faiss"), faiss.IO_FLAG_MMAP_IFC)
    assert got_kind == kind and list_major_ok(mapped)
    flat, _, _ = train_index(base[:100], 100, IndexConfig(kind="flat"))
    assert not list_major_ok(flat)  # flat and GPU indexes keep FAISS's search
    k, thr = 400, 0.6  # a query's cluster (~65 rows above 0.6): FAISS returns every hit above thr
    sims, labels = search(mapped, queries, k, nprobe=4)
    assert (sims[:, -1] < thr).all()
    want = {(q, int(lab)): s for q in range(len(queries)) for lab, s in zip(labels[q], sims[q]) if s >= thr and lab >= 0}
    qi, lab, sim = search_above(mapped, queries, thr, nprobe=4, per_list=k)
    got = dict(zip(zip(qi.tolist(), lab.tolist()), sim.tolist()))
    assert len(want) > 1000 and set(got) == set(want)
    assert max(abs(got[key] - want[key]) for key in want) < 1e-4
    exact = np.einsum("ij,ij->i", queries[qi], base[lab // 11])
    assert np.abs(sim - exact).max() < exact_tol
    # per_list caps the hits of one query in one list (the best kept)
    qi2, lab2, sim2 = search_above(mapped, queries, thr, nprobe=4, per_list=5)
    assert 0 < len(qi2) < len(qi) and np.bincount(qi2).max() <= 5 * 4
    # a pass no query probes, and no queries at all (a candidate group with nothing in a pass's
    # lists): no hits, not an error
    probe = faiss.extract_index_ivf(mapped).quantizer.search(queries, 4)[1]
    for q, p, lists in ((queries, probe, (probe.max() + 1, 64)), (queries[:0], probe[:0], (0, 64))):
        got = search_above(mapped, q, thr, nprobe=4, per_list=k, lists=(int(lists[0]), int(lists[1])), probe=p)
        assert [len(x) for x in got] == [0, 0, 0]


def test_list_router_routes_like_the_quantiser_and_fills_the_same_lists(vectors, tmp_path):
    """``ListRouter``: below ROUTER_TREE_LISTS the exact nprobe best lists (one product per block);
    above, through groups of centroids, the quantiser's best list for nearly every vector. An
    index filled through it (``add_routed``) holds every vector in the list the router names,
    and a saved router routes as the original."""
    import faiss

    from engines.vector.index import ROUTER_TREE_LISTS, ListRouter, add_routed

    base = vectors[:20_000]
    idx, _, _ = train_index(base, len(base), IndexConfig(kind="ivfflat", nlist=64, nprobe=4))
    router = ListRouter.of(idx)
    assert router.levels == 0  # 64 lists: exact
    _, want = faiss.extract_index_ivf(idx).quantizer.search(base[:2000], 4)
    assert np.array_equal(router.route(base[:2000], 4), want)
    add_routed(idx, base, np.arange(len(base)), router)
    assert idx.ntotal == len(base)
    ivf = faiss.extract_index_ivf(idx)
    one = router.route(base, 1)[:, 0]
    for lst in (0, 17, 63):
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst))
        assert set(ids.tolist()) == set(np.flatnonzero(one == lst).tolist())
    # many lists (the tree cut lowered from ROUTER_TREE_LISTS to keep the test short): k-means centroids
    km = faiss.Kmeans(128, 1024, niter=10, seed=0, spherical=True, verbose=False)
    km.train(vectors)
    tree = ListRouter(km.centroids, tree_lists=min(ROUTER_TREE_LISTS, 1024))
    cents = km.centroids
    exact = np.argmax(base[:3000] @ cents.T, axis=1)
    routed = tree.route(base[:3000], 8)
    assert tree.levels == 1 and (routed[:, 0] == exact).mean() >= 0.97
    tree.save(tmp_path / "router.npz")
    assert np.array_equal(ListRouter.load(tmp_path / "router.npz").route(base[:500], 8), routed[:500])


def test_list_router_levels_keep_a_copy_in_its_originals_lists(vectors, tmp_path):
    """Two levels of groups (as from ~47k lists, 1M dedup rows): the best list of nearly every
    vector, a near copy's probes still include the list its original is stored in (what the
    dedup candidates need), and a saved two-level router (or one written before the levels, with
    one exact level of groups) routes as the original."""
    import faiss

    from engines.vector.index import ROUTER_MIN_GROUP, ListRouter, router_levels

    km = faiss.Kmeans(128, 2048, niter=8, seed=0, spherical=True, verbose=False)
    km.train(vectors)
    cents, base = km.centroids, vectors[:3000]
    two = ListRouter(cents, levels=2)
    assert two.levels == 2 and two.upper.levels == 1 and two.upper.upper.levels == 0
    assert len(two.c) > len(two.upper.c) > len(two.upper.upper.c) > 8
    routed = two.route(base, 8)
    assert (routed[:, 0] == np.argmax(base @ cents.T, axis=1)).mean() >= 0.9
    assert (routed >= 0).all() and all(len(set(r)) == 8 for r in routed.tolist())
    rng = np.random.default_rng(1)
    near = base + rng.standard_normal(base.shape).astype(np.float32) * 0.05 * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(128)
    stored = two.route(base, 1)[:, 0]
    assert (two.route(near, 8) == stored[:, None]).any(axis=1).mean() >= 0.99
    two.save(tmp_path / "two.npz")
    assert np.array_equal(ListRouter.load(tmp_path / "two.npz").route(base[:500], 8), routed[:500])
    one = ListRouter(cents, tree_lists=1024)  # a router of sessions 10-14: "c", "coarse", "members", "bounds"
    np.savez(tmp_path / "old.npz", c=one.c, groups=np.array(8), coarse=one.upper.c, members=one.members, bounds=one.bounds)
    assert np.array_equal(ListRouter.load(tmp_path / "old.npz").route(base[:500], 8), one.route(base[:500], 8))
    # the levels chosen by size: exact below the cut, more levels as the lists grow, groups kept large
    assert router_levels(4095, 8) == 0 and router_levels(14_000, 8) == 1
    assert router_levels(47_000, 8) == router_levels(141_000, 8) == 2 and 3 <= router_levels(50_000_000, 8) <= 5
    for n in (4096, 14_000, 141_000, 50_000_000):
        L = router_levels(n, 8)
        assert L == 1 or (8**L * n) ** (1 / (L + 1)) / 8 >= ROUTER_MIN_GROUP


def test_list_router_built_top_down_nests_balanced_groups_and_routes_as_bottom_up(vectors):
    """The default top-down build (``nested_groups``): every group of a level lies inside one
    group of the level above, the group counts are near the requested ones, the largest group
    (the dense routing table's width) is about as large as the bottom-up build's, which
    clusters each level's items exactly (its cost grows as lists x groups), and it routes about
    as well."""
    import faiss

    from engines.vector.index import ListRouter, _split, group_counts, nested_groups

    km = faiss.Kmeans(128, 2048, niter=8, seed=0, spherical=True, verbose=False)
    km.train(vectors)
    cents, base = km.centroids, vectors[:3000]
    counts = group_counts(len(cents), 8, 2)
    assert counts[0] > counts[1] > 8
    lab = nested_groups(cents, counts, seed=0)
    assert lab.shape == (2048, 2)
    for lvl in range(2):
        sizes = np.bincount(lab[:, lvl])
        assert (sizes > 0).all() and 0.7 * counts[lvl] <= len(sizes) <= 1.3 * counts[lvl]
        assert sizes.max() <= 2 * len(cents) / counts[lvl]  # capped: k-means alone left 4x the mean here
    parents = {}
    for low, high in lab.tolist():
        assert parents.setdefault(low, high) == high  # a lower group never straddles two upper ones
    exact = np.argmax(base @ cents.T, axis=1)
    top_down, bottom_up = ListRouter(cents, levels=2), ListRouter(cents, levels=2, build="bottom-up")
    assert top_down.levels == bottom_up.levels == 2
    for a, b in ((top_down, bottom_up), (top_down.upper, bottom_up.upper)):  # the largest group: as wide as bottom-up's
        assert np.diff(a.bounds).max() <= 1.5 * np.diff(b.bounds).max()
    hit = {name: (r.route(base, 8)[:, 0] == exact).mean() for name, r in (("top", top_down), ("bottom", bottom_up))}
    assert hit["top"] >= 0.9 and hit["top"] >= hit["bottom"] - 0.03, hit
    with pytest.raises(ValueError, match="top-down"):
        ListRouter(cents, levels=2, build="sideways")
    same = np.tile(cents[:1], (100, 1))  # k-means cannot split identical points: cut along an axis instead
    parts = _split(same, 10, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100)) and max(len(p) for p in parts) <= 20


def test_list_router_keeps_no_tiny_group_over_dense_clusters_and_scattered_lists(monkeypatch):
    """List centroids of real descriptors mix dense clusters with scattered lists, and k-means
    over them leaves many clusters of one or two lists (the 10M job's router: median 2 lists a
    group where ~39 were asked). The top-down build folds a cluster under ``ROUTER_GROUP_FLOOR``
    of its level's mean into its nearest kept one: no tiny group is left, the group counts stay
    near the requested ones (so a vector's chosen groups hold the lists they should), and a near
    copy's probes still hold its original's list about as often as with the tiny groups kept
    (scattered lists are the hard case: a folded list is routed to through a group mean it is
    far from)."""
    from engines.vector import index as vi

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 64)).astype(np.float32)
    dense = centres[rng.integers(0, 8, 3000)] + 0.15 * rng.standard_normal((3000, 64)).astype(np.float32)
    cents = np.concatenate([dense, rng.standard_normal((1000, 64)).astype(np.float32)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    counts = vi.group_counts(len(cents), 8, 2)
    lab = vi.nested_groups(cents, counts, seed=0)
    for lvl in range(2):
        sizes = np.bincount(lab[:, lvl])
        mean = len(cents) / counts[lvl]
        assert 0.7 * counts[lvl] <= len(sizes) <= 1.3 * counts[lvl], (lvl, len(sizes), counts)
        assert mean / 4 <= sizes.min() and sizes.max() <= 2 * mean, (lvl, sizes.min(), sizes.max(), mean)
    base = cents[rng.integers(0, len(cents), 3000)] + 0.3 / 8 * rng.standard_normal((3000, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base + 0.05 / 8 * rng.standard_normal(base.shape).astype(np.float32)

    def copies_found() -> float:
        router = vi.ListRouter(cents, levels=2)
        stored = router.route(base, 1)[:, 0]
        return float((router.route(near, 8) == stored[:, None]).any(axis=1).mean())

    folded = copies_found()
    monkeypatch.setattr(vi, "ROUTER_GROUP_FLOOR", 0.0)
    assert np.bincount(vi.nested_groups(cents, counts, seed=0)[:, 0]).min() < 3  # k-means alone: tiny groups
    kept = copies_found()
    assert folded >= 0.96 and folded >= kept - 0.01, (folded, kept)


def test_every_ivf_kind_gets_an_hnsw_quantiser_from_hnsw_lists_on():
    """A flat quantiser over many lists costs more than the lists, at search and when residual
    codes are trained (each training vector is assigned to its list: 1.7M x 43k x 231 at 1M
    dedup rows): IVF-Flat, float16 and 8-bit lists all switch to HNSW at ``hnsw_lists``."""
    from engines.vector.index import factory_string

    cfg = IndexConfig(hnsw_lists=4096, list_size=256)
    for kind, codes in (("ivfflat", "Flat"), ("ivffp16", "SQfp16"), ("ivfsq8", "SQ8")):
        assert factory_string(kind, 231, 4000 * 256, cfg, 10**8) == f"IVF4000,{codes}"
        assert factory_string(kind, 231, 5000 * 256, cfg, 10**8) == f"IVF5000_HNSW32,{codes}"
    assert factory_string("ivfhnsw", 231, 4000 * 256, cfg, 10**8) == "IVF4000_HNSW32,SQ8"


def test_three_levels_of_kmeans_give_k_unit_centroids_whose_lists_recall_like_two(vectors, monkeypatch):
    """``nested_kmeans`` in three levels (each cluster split in proportion to its size) returns
    exactly k unit centroids, the same twice for one seed, and an index whose lists come from them
    finds neighbours as well as one whose lists come from two levels (the default before)."""
    import engines.vector.index as vi
    from engines.vector.index import nested_kmeans

    base, queries = vectors[:28_000], vectors[28_000:28_500]
    three = nested_kmeans(base, 500, 3, 10, 7, spherical=True)
    assert three.shape == (500, base.shape[1])
    np.testing.assert_allclose(np.linalg.norm(three, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(three, nested_kmeans(base, 500, 3, 10, 7, spherical=True))
    lopsided = np.concatenate([base[:27_000], base[27_000:27_050] * -1])  # a tiny far cluster: a share under 4
    assert nested_kmeans(lopsided, 333, 3, 10, 7, spherical=True).shape == (333, base.shape[1])

    _, exact = exact_knn(base, queries, 10)
    monkeypatch.setattr(vi, "TWO_LEVEL_LISTS", 256)  # nested k-means from 256 lists, as from 1024 in the job
    recalls = {}
    for levels, three_from in ((2, 10**9), (3, 256)):
        cfg = IndexConfig(kind="ivfsq8", nlist=512, nprobe=8, three_level_lists=three_from)
        idx, _, spec = train_index(base, len(base), cfg)
        assert spec.startswith("IVF512")
        add_vectors(idx, base, np.arange(len(base)))
        recalls[levels] = recall_at_k(search(idx, queries, 10)[1], exact, 10)
    assert recalls[3] >= 0.9 and recalls[3] >= recalls[2] - 0.02, recalls


def test_two_levels_of_kmeans_are_faiss_s_and_give_a_tiny_first_level_cluster_no_centroid(vectors):
    """Two levels give FAISS's ``two_level_clustering`` centroids exactly, and where a first-level
    cluster's share of the centroids rounds to none (a few far points) they still give all k:
    FAISS's own trained a k-means of 0 centroids there and raised, which ended a dedup of 330k
    rows with an error."""
    from faiss.contrib.clustering import two_level_clustering

    from engines.vector.index import nested_kmeans

    base = np.ascontiguousarray(vectors[:20_000])
    want = two_level_clustering(base, 20, 400, rebalance=True, clustering_niter=10, seed=3, spherical=True)[0]
    np.testing.assert_array_equal(nested_kmeans(base, 400, 2, 10, 3, spherical=True), want)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16)).astype(np.float32) * 100
    x = np.vstack([c + rng.standard_normal((n, 16)).astype(np.float32) for c, n in zip(centres, [3000] * 3 + [2] * 5)])
    with pytest.raises(RuntimeError, match="clus"):
        two_level_clustering(x, 8, 100, rebalance=True, clustering_niter=10, seed=0, spherical=False)
    assert nested_kmeans(x, 100, 2, 10, 0, spherical=False).shape == (100, 16)
