"""Near-duplicate detection on real COCO photographs edited the way web copies are, and the
community / keeper logic. Ground truth: each original and its edits form one group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.profiling.cheap import phash
from engines.profiling.decode import decode_image
from engines.vector.dedup import (
    NearDupConfig,
    Pairs,
    assign_clusters,
    cluster_pairs,
    default_clusters,
    exact_pairs,
    group_duplicates,
    near_pairs,
    popcount64,
    semdedup_centroids,
    semdedup_pairs,
)
from engines.vector.descriptor import describe, orb_features, orb_verify, working_gray
from engines.vector.graph import communities, removal_curve
from engines.vector.synth import VARIANT_KINDS, clustered_embeddings, near_dup_variants


@pytest.fixture(scope="module")
def edited(coco_dir: Path):
    """16 originals x (original + 6 edits) = 112 real-photo images with known groups."""
    images, group, kind = [], [], []
    for g, p in enumerate(sorted((coco_dir / "images").glob("*.jpg"))[:16]):
        data = p.read_bytes()
        images.append(data)
        group.append(g)
        kind.append("orig")
        for k, v in near_dup_variants(data, seed=g):
            images.append(v)
            group.append(g)
            kind.append(k)
    grays = [working_gray(decode_image(b).array) for b in images]
    fr = [describe(g) for g in grays]
    full = np.stack([f for f, _ in fr])
    regions = np.stack([r for _, r in fr])
    hashes = np.array([phash(decode_image(b)) for b in images], np.uint64)
    return {"images": images, "group": np.array(group), "kind": kind, "grays": grays, "full": full, "regions": regions, "phash": hashes}


def _pair_scores(labels: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    iu = np.triu_indices(len(labels), 1)
    pred = (labels[:, None] == labels[None, :])[iu]
    true = (truth[:, None] == truth[None, :])[iu]
    tp = (pred & true).sum()
    return tp / max(pred.sum(), 1), tp / true.sum()


def _local_verify(grays):
    cache = {}

    def feat(i):
        if i not in cache:
            cache[i] = orb_features(grays[i])
        return cache[i]

    def verify(i, j):
        out = [orb_verify(feat(a), feat(b)) for a, b in zip(i.tolist(), j.tolist())]
        return [o[0] for o in out], [o[2] for o in out]

    return verify


def test_near_duplicates_of_real_photos_precision_recall_and_better_than_phash(edited):
    n = len(edited["images"])
    pairs, stats = near_pairs(
        edited["full"], edited["regions"], np.ones(n, bool), edited["phash"], NearDupConfig(k=6), _local_verify(edited["grays"])
    )
    res = group_duplicates(n, pairs, np.zeros(n))
    labels = np.where(res.group >= 0, res.group, -1 - np.arange(n))
    precision, recall = _pair_scores(labels, edited["group"])
    assert precision >= 0.98 and recall >= 0.90, (precision, recall, stats)
    # every kind of edit is found (not only the easy re-encodes)
    kinds = np.array(edited["kind"])
    for k in VARIANT_KINDS:
        rows = np.flatnonzero(kinds == k)
        origs = np.flatnonzero(kinds == "orig")[edited["group"][rows]]
        assert (labels[rows] == labels[origs]).mean() >= 0.85, k
    # pHash alone (Hamming <= 8, transitive groups) misses crops and heavy edits
    h = edited["phash"]
    ham = popcount64(np.bitwise_xor(h[:, None], h[None, :]).ravel()).reshape(n, n)
    i, j = np.nonzero(np.triu(ham <= 8, 1))
    ph_labels = communities(n, i, j, method="components")
    _, ph_recall = _pair_scores(ph_labels, edited["group"])
    assert recall - ph_recall >= 0.2, (recall, ph_recall)


def test_shared_watermark_is_not_a_duplicate(edited):
    """Two different photos with the same stock watermark: matches on the mark only, few cells."""
    kinds = np.array(edited["kind"])
    wm = np.flatnonzero(kinds == "watermark")[:6]
    cfg = NearDupConfig()
    for a, b in zip(wm[:-1], wm[1:]):
        inl, _, cov = orb_verify(orb_features(edited["grays"][a]), orb_features(edited["grays"][b]))
        assert not ((inl >= cfg.min_inliers and cov >= cfg.min_coverage) or inl >= cfg.strong_inliers)


def test_best_quality_row_is_kept_not_the_first(edited):
    n = 14  # two groups
    pairs, _ = near_pairs(
        edited["full"][:n],
        edited["regions"][:n],
        np.ones(n, bool),
        edited["phash"][:n],
        NearDupConfig(k=6),
        _local_verify(edited["grays"][:n]),
    )
    rng = np.random.default_rng(0)
    quality = rng.random(n)
    res = group_duplicates(n, pairs, quality)
    for g in (0, 1):
        members = np.flatnonzero(edited["group"][:n] == g)
        best = members[np.argmax(quality[members])]
        assert res.keep[best] and res.keep[members].sum() == 1
        others = members[members != best]
        assert (res.dup_of[others] == best).all()
        assert all(res.reason[o] == "near" for o in others)
        assert np.all((res.sim[others] > 0.5) & (res.sim[others] <= 1.0))
    # lower-is-better scores (e.g. BRISQUE) flip the choice
    low = group_duplicates(n, pairs, quality, higher_is_better=False)
    members = np.flatnonzero(edited["group"][:n] == 0)
    assert low.keep[members[np.argmin(quality[members])]]


def test_exact_copies_and_communities_do_not_chain():
    # rows 0,1,2 exact copies; 3-6 a dense group; 7-10 a dense group; one stray edge 6-7
    pairs = exact_pairs(["a", "a", "b", "a", None, "c", "c"][:3] + [None] * 8)
    dense = [(a, b) for grp in ((3, 4, 5, 6), (7, 8, 9, 10)) for x, a in enumerate(grp) for b in grp[x + 1 :]]
    near = Pairs.of([a for a, _ in dense] + [6], [b for _, b in dense] + [7], [0.95] * len(dense) + [0.81], "near")
    res = group_duplicates(11, pairs + near, np.arange(11, dtype=float))
    assert res.group[0] == res.group[1] and res.reason[0] == "exact" and res.keep[1]
    assert res.group[2] == -1 and res.keep[2]
    assert res.group[3] == res.group[6] != res.group[7] == res.group[10]
    comp = communities(11, np.r_[near.i], np.r_[near.j], method="components")
    assert comp[3] == comp[10]  # components would have merged them through the stray edge
    curve = removal_curve(11, near.i, near.j, near.sim, [0.8, 0.9, 0.99])
    assert [c["removed"] for c in curve] == [6, 6, 0]
    # determinism: the same seed gives the same partition
    again = group_duplicates(11, pairs + near, np.arange(11, dtype=float), seed=0)
    assert np.array_equal(again.group, res.group)


def test_louvain_fallback_and_semdedup():
    near = Pairs.of([0, 0, 1, 3], [1, 2, 2, 4], [0.9] * 4, "near")
    res = group_duplicates(6, near, np.zeros(6), method="louvain")
    assert res.group[0] == res.group[1] == res.group[2] != res.group[3] == res.group[4]
    assert res.group[5] == -1
    x = next(clustered_embeddings(2000, 64, n_clusters=20, dup_fraction=0.05, dup_noise=0.01, seed=2))
    sem = semdedup_pairs(x, np.ones(len(x), bool), 0.995, n_clusters=20, seed=0)
    assert len(sem) > 50
    assert np.all(np.einsum("nd,nd->n", x[sem.i], x[sem.j]) >= 0.995 - 1e-5)


def _semdedup_reference(emb: np.ndarray, valid: np.ndarray, threshold: float, n_clusters, seed: int):
    """SemDeDup as it was before it was split into pieces (one k-means, one matrix per cluster)."""
    import faiss

    pos = np.flatnonzero(valid)
    x = np.ascontiguousarray(emb[pos], np.float32)
    c = min(int(n_clusters or max(1, round(np.sqrt(len(pos))))), len(pos))
    km = faiss.Kmeans(x.shape[1], c, niter=20, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(x)
    lab = km.index.search(x, 1)[1].ravel()
    i_l, j_l, s_l = [], [], []
    for cl in np.unique(lab):
        m = np.flatnonzero(lab == cl)
        s = x[m] @ x[m].T
        a, b = np.nonzero(np.triu(s >= threshold, 1))
        i_l += [pos[m[a]]]
        j_l += [pos[m[b]]]
        s_l += [s[a, b]]
    i, j, s = np.concatenate(i_l), np.concatenate(j_l), np.concatenate(s_l)
    o = np.lexsort((j, i))
    return i[o], j[o], s[o]


def test_semdedup_pieces_equal_the_one_process_semdedup_and_tiles_equal_one_matrix():
    """The pieces the Ray job runs (centroids, assignment, per-cluster pass) composed give the
    pairs of the former one-function SemDeDup; the tiled pass over clusters larger than the tile
    gives the pairs of one matrix per cluster."""
    rng = np.random.default_rng(5)
    x = next(clustered_embeddings(3000, 48, n_clusters=30, spread=0.9, dup_fraction=0.0, seed=4))
    src = rng.choice(3000, 60, replace=False)
    x[src[30:]] = x[src[:30]] + 0.003 * rng.standard_normal((30, 48)).astype(np.float32)  # planted near copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    valid = np.ones(len(x), bool)
    valid[::101] = False
    for n_clusters in (None, 4):
        want = _semdedup_reference(x, valid, 0.75, n_clusters, seed=1)
        got = semdedup_pairs(x, valid, 0.75, n_clusters, seed=1)
        assert len(got) > 300
        np.testing.assert_array_equal(got.i, want[0])
        np.testing.assert_array_equal(got.j, want[1])
        np.testing.assert_allclose(got.sim, want[2], atol=1e-5)
        assert np.all(got.i < got.j) and set(got.reason.tolist()) == {2}
    planted = {(min(a, b), max(a, b)) for a, b in zip(src[:30].tolist(), src[30:].tolist()) if valid[a] and valid[b]}
    assert planted <= set(zip(got.i.tolist(), got.j.tolist()))
    # tiles: 4 clusters of ~750 rows compared in 64-row tiles, rows handed over in shuffled order
    pos = np.flatnonzero(valid)
    lab = assign_clusters(x[pos], semdedup_centroids(x[pos], 4, seed=1))
    assert np.bincount(lab).max() > 64
    shuffle = rng.permutation(len(pos))
    tiled = cluster_pairs(x[pos][shuffle], pos[shuffle], lab[shuffle], 0.75, block=64)
    np.testing.assert_array_equal(tiled.i, got.i)
    np.testing.assert_array_equal(tiled.j, got.j)
    np.testing.assert_allclose(tiled.sim, got.sim, atol=1e-5)
    assert default_clusters(len(pos)) == round(np.sqrt(len(pos)))


def test_mirrored_and_rotated_descriptors_come_from_the_stored_vector(coco_dir: Path):
    """The 8 dihedral variants computed from one stored descriptor equal the descriptors of the
    mirrored / turned images themselves (so no image is decoded to find such copies)."""
    from engines.vector.descriptor import DIHEDRAL, dihedral_descriptors, dihedral_images, global_descriptor

    for p in sorted((coco_dir / "images").glob("*.jpg"))[:4]:
        g = working_gray(decode_image(p.read_bytes()).array)
        truth = np.stack([global_descriptor(x) for x in dihedral_images(g)])
        pred = dihedral_descriptors(global_descriptor(g)[None])[:, 0]
        assert pred.shape == (len(DIHEDRAL), truth.shape[1])
        assert np.all(np.einsum("td,td->t", truth, pred) > 0.999)
        assert (truth[1:] @ truth[0]).min() < 0.9  # and without them a mirror or a turn looks different


def test_verification_is_symmetric_and_sees_mirrors(edited):
    from engines.vector.descriptor import orb_verify_mirrored, verify_features

    g = edited["grays"]
    for a, b in [(0, 1), (0, 4), (0, 7), (7, 14), (1, 30)]:  # same photo edited, and different photos
        fa, fb = orb_features(g[a]), orb_features(g[b])
        assert orb_verify(fa, fb) == orb_verify(fb, fa)
    mirrored = working_gray(np.ascontiguousarray(decode_image(edited["images"][0]).array[:, ::-1]))
    plain = orb_verify(orb_features(g[0]), orb_features(mirrored))[0]
    a, b = verify_features(g[0]), verify_features(mirrored)
    assert orb_verify_mirrored(a[0], b[0], b[1])[0] >= NearDupConfig().strong_inliers > plain


def test_development_set_all_edit_kinds_precision_recall(coco_dir: Path):
    """Mirrors, quarter turns, strong crops, text bands, screenshots in a window, aspect changes,
    heavy re-encodes and combinations of 8 photos, among 12 other COCO photos (hard negatives:
    the same kinds of scenes). Pairwise precision and recall of the near-duplicate groups."""
    from engines.vector.descriptor import verify_features, verify_pairs
    from engines.vector.synth import ALL_VARIANT_KINDS

    files = sorted((coco_dir / "images").glob("*.jpg"))
    images, group, kind = [], [], []
    for g, p in enumerate(files[:8]):
        data = p.read_bytes()
        images.append(data)
        group.append(g)
        kind.append("orig")
        for k, v in near_dup_variants(data, ALL_VARIANT_KINDS, seed=g):
            images.append(v)
            group.append(g)
            kind.append(k)
    for g, p in enumerate(files[8:20]):
        images.append(p.read_bytes())
        group.append(100 + g)
        kind.append("negative")
    grays = [working_gray(decode_image(b).array) for b in images]
    fr = [describe(x) for x in grays]
    n = len(images)
    feats: dict = {}

    def verify(i, j):
        for x in set(i.tolist()) | set(j.tolist()):
            feats.setdefault(x, verify_features(grays[x]))
        return verify_pairs(feats, i.tolist(), j.tolist())

    hashes = np.array([phash(decode_image(b)) for b in images], np.uint64)
    pairs, stats = near_pairs(np.stack([f for f, _ in fr]), np.stack([r for _, r in fr]), np.ones(n, bool), hashes, NearDupConfig(), verify)
    labels = group_duplicates(n, pairs, np.zeros(n)).group
    labels = np.where(labels >= 0, labels, -1 - np.arange(n))
    precision, recall = _pair_scores(labels, np.array(group))
    kinds, truth = np.array(kind), np.array(group)
    origs = np.flatnonzero(kinds == "orig")
    per_kind = {k: float((labels[kinds == k] == labels[origs[truth[kinds == k]]]).mean()) for k in ALL_VARIANT_KINDS}
    print(f"\ndevelopment set: precision {precision:.3f} recall {recall:.3f}; per kind {per_kind}; {stats}")
    assert precision >= 0.98 and recall >= 0.95, (precision, recall, per_kind)
    for k in ("mirror", "rotate", "mirror_combo", "rotate_combo", "strong_crop", "banner", "frame", "aspect", "heavy_reencode"):
        assert per_kind[k] == 1.0, (k, per_kind)


def test_communities_per_component_give_the_same_groups(edited):
    """The large-graph path (components first, then Leiden per component, batches through a map
    function as the job does on Ray) partitions a real duplicate graph exactly as one Leiden run."""
    from engines.vector.graph import communities_by_component

    n = len(edited["images"])
    pairs, _ = near_pairs(
        edited["full"], edited["regions"], np.ones(n, bool), edited["phash"], NearDupConfig(), _local_verify(edited["grays"])
    )
    noise = Pairs.of([0, 7, 20], [50, 60, 90], [0.3, 0.2, 0.15], "near")  # weak stray edges between groups
    allp = pairs + noise
    whole = communities(n, allp.i, allp.j, allp.sim, resolution=0.1)
    batches = []

    def recording_map(fn, items):
        items = list(items)
        batches.append(len(items))
        return [fn(x) for x in items]

    split = communities_by_component(n, allp.i, allp.j, allp.sim, resolution=0.1, map_fn=recording_map, batch_edges=50)
    assert np.array_equal(whole, split) and batches[0] > 1
    one = group_duplicates(n, allp, np.zeros(n))
    two = group_duplicates(n, allp, np.zeros(n), by_component=True, map_fn=recording_map)
    assert np.array_equal(one.group, two.group) and np.array_equal(one.keep, two.keep)


def test_screenshots_keep_a_candidate_quota_for_the_photo_they_show():
    """A screenshot's full-frame hits are other screenshots (same window chrome, cosine ~0.93);
    the photo it shows is found from its centre region as a whole frame (slot 0) at ~0.85. The
    quota of centre hits keeps that pair; hits of the centre on other rows' regions do not count."""
    from engines.vector.dedup import split_top_owners

    k, shot, photo = 3, 0, 9
    full_owner = np.array([1, 2, 3, 4, photo])  # 4 other screenshots outrank the photo
    full_sim = np.array([0.95, 0.94, 0.93, 0.92, 0.85], np.float32)
    centre_owner = np.array([1, 2, photo, 5])
    centre_slot = np.array([3, 1, 0, 2])  # other screenshots' centre regions, then the photo's full frame
    centre_sim = np.array([0.97, 0.96, 0.86, 0.84], np.float32)
    q = np.zeros(len(full_owner) + len(centre_owner), np.int64) + shot
    owner = np.r_[full_owner, centre_owner]
    slot = np.r_[np.zeros(len(full_owner), np.int64), centre_slot]
    sim = np.r_[full_sim, centre_sim]
    _, without, _ = split_top_owners(q, owner, slot, sim, len(full_owner), k, 0, 0.8)
    assert photo not in without.tolist()
    _, with_quota, _ = split_top_owners(q, owner, slot, sim, len(full_owner), k, 1, 0.8)
    assert sorted(with_quota.tolist()) == [1, 2, 3, photo]


def test_best_owners_of_passes_over_list_ranges_are_those_of_one_pass():
    """The candidate phase over lists larger than memory searches range by range of lists and
    keeps each pass's best owners per row; their best (``top_owners_of_parts``) must be exactly
    what one pass over every list keeps, ties (equal similarities, a row's copies in several
    lists) and both quotas included."""
    from engines.vector.dedup import CONTENT_SLOT, split_top_owners, split_top_owners_flagged, top_owners_of_parts

    rng = np.random.default_rng(3)
    n_hits, n_full, k, k_centre = 20_000, 14_000, 4, 2
    q = np.sort(rng.integers(0, 300, n_hits))
    q = np.r_[np.sort(q[:n_full]), np.sort(q[n_full:])]  # full-frame queries' hits first, as searched
    owner = rng.integers(-1, 300, n_hits)
    slot = rng.choice([0, 1, 3, CONTENT_SLOT], n_hits)
    sim = np.round(rng.uniform(0.75, 1.0, n_hits), 2).astype(np.float32)  # rounded: many ties
    lst = rng.integers(0, 50, n_hits)  # the list each hit was found in
    want = split_top_owners(q, owner, slot, sim, n_full, k, k_centre, 0.8)
    for cuts in ([0, 50], [0, 17, 50], [0, 5, 6, 30, 49, 50]):
        parts = []
        for a, b in zip(cuts, cuts[1:]):
            m = (lst >= a) & (lst < b)
            parts.append(split_top_owners_flagged(q[m], owner[m], slot[m], sim[m], int(m[:n_full].sum()), k, k_centre, 0.8))
        got = top_owners_of_parts(*(np.concatenate(x) for x in zip(*parts)), k, k_centre, 0.8)
        assert len(want[0]) > 1000
        assert sorted(zip(*(x.tolist() for x in got))) == sorted(zip(*(x.tolist() for x in want))), cuts


def test_a_hit_on_the_content_box_counts_as_a_hit_on_the_whole_photo():
    """The centre quota counts hits on another row's content box (``CONTENT_SLOT``: the photo
    that row shows, e.g. two screenshots of one photo) as it counts full frames; other regions not."""
    from engines.vector.dedup import CONTENT_SLOT, split_top_owners
    from engines.vector.descriptor import CONTENT_REGION, N_REGIONS

    assert CONTENT_REGION == N_REGIONS - 1 and CONTENT_SLOT == N_REGIONS
    shot, other_shot, stray = 0, 7, 8
    q = np.zeros(3, np.int64) + shot
    owner = np.array([stray, other_shot, stray])
    slot = np.array([0, CONTENT_SLOT, 4])  # the full-frame query's hit, then two centre hits
    sim = np.array([0.81, 0.95, 0.99], np.float32)
    a, b, _ = split_top_owners(q, owner, slot, sim, 1, 1, 1, 0.8)
    assert sorted(zip(a.tolist(), b.tolist())) == [(shot, other_shot), (shot, stray)]


def test_exact_copies_are_counted_even_when_their_group_keeps_a_larger_near_copy():
    # rows 0 and 1 share bytes; row 2 is a larger near copy of them, so the group keeps row 2 and
    # both copies are removed as "near": the count of byte-identical rows must still say 1
    pairs = exact_pairs(["a", "a", "b", "c"]) + Pairs.of([0, 1], [2, 2], [0.97, 0.97], "near")
    res = group_duplicates(4, pairs, np.array([1.0, 1.0, 4.0, 1.0]))
    assert res.keep.tolist() == [False, False, True, True]
    assert res.stats["removed_by_reason"]["exact"] == 0 and res.stats["removed_by_reason"]["near"] == 2
    assert res.stats["exact_copies"] == 1
