"""SemDeDup on real Ray + Lance (``pipelines.semdedup``): the same pairs as the one-process
SemDeDup when k-means sees every row, planted near copies across fragments found, a killed run
resumed from its per-unit and per-bucket checkpoints, and the dedup job's SemDeDup path."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa

from curation.runner import run_stage
from curation.store import Store
from engines.vector.dedup import SemanticConfig, semdedup_pairs
from engines.vector.index import clean_vectors, to_matrix
from engines.vector.synth import clustered_embeddings
from pipelines.dedup import DedupConfig, find_duplicates
from pipelines.descriptors import VisualStage
from pipelines.semdedup import semdedup_on_ray
from tests.helpers import coco_rows, samples_table

N, DIM = 3000, 32


def _planted(rng) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Clustered unit vectors with 40 near copies planted across fragments, and bad rows (null,
    NaN, zero) that SemDeDup must skip the way the in-memory path does."""
    x = next(clustered_embeddings(N, DIM, n_clusters=25, spread=0.9, dup_fraction=0.0, seed=7))
    rows = rng.choice(N - 10, 80, replace=False) + 10
    a, b = rows[:40], rows[40:]
    x[b] = x[a] + 0.003 * rng.standard_normal((40, DIM)).astype(np.float32)
    x[3] = np.nan
    x[4] = 0
    return x, [(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())]


def _store(tmp_path, x: np.ndarray) -> Store:
    """A Lance dataset of (id, emb) in 6 fragments of 500 rows; row 5's vector is null."""
    vals = pa.array(x.ravel(), pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(vals, DIM, mask=pa.array(np.arange(N) == 5))
    t = pa.table({"id": pa.array([f"r{i:05d}" for i in range(N)]), "emb": emb})
    uri = tmp_path / "emb.lance"
    lance.write_dataset(t, str(uri), max_rows_per_file=500)
    return Store(str(uri))


def _pairs_set(p) -> set[tuple[int, int]]:
    return set(zip(p.i.tolist(), p.j.tolist()))


def test_semdedup_on_ray_equals_in_memory_finds_planted_and_resumes(ray_session, tmp_path):
    rng = np.random.default_rng(3)
    x, planted = _planted(rng)
    store = _store(tmp_path, x)
    ds = store.open()
    assert len(ds.get_fragments()) == 6
    cfg = SemanticConfig(method="semdedup", threshold=0.75, seed=2)
    folder = tmp_path / "state"
    got = semdedup_on_ray(store, ds, "emb", cfg, folder, show_progress=False, rows_per_unit=1000)

    e, null = to_matrix(ds.to_table(columns=["emb"]).column("emb"))
    e, valid, skipped = clean_vectors(e, null)
    assert skipped == {"null_vector": 1, "nan_vector": 1, "zero_vector": 1}
    want = semdedup_pairs(e, valid, cfg.threshold, cfg.n_clusters, cfg.seed)
    assert len(want) > 100
    np.testing.assert_array_equal(got.i, want.i)  # k-means saw every row: the same clusters, pairs
    np.testing.assert_array_equal(got.j, want.j)
    np.testing.assert_array_equal(got.sim, want.sim)
    np.testing.assert_array_equal(got.reason, want.reason)
    assert set(planted) <= _pairs_set(got)
    assert not ({3, 4, 5} & set(got.i.tolist() + got.j.tolist()))

    # a run killed after some units and buckets: unit 1's files and bucket 0's pairs are missing
    root = folder / "semdedup"
    assign = sorted((root / "assign").glob("unit-*.npy"))
    assert len(assign) == 6  # 3 units x (records, offsets)
    buckets = sorted((root / "pairs").glob("bucket-*.npz"))
    assert len(buckets) >= 4
    for p in (root / "assign").glob("unit-1.*"):
        p.unlink()
    (root / "pairs" / "bucket-0.npz").unlink()
    kept = {p: p.stat().st_mtime_ns for p in [*assign, *buckets] if p.exists()}
    again = semdedup_on_ray(store, ds, "emb", cfg, folder, show_progress=False, rows_per_unit=1000)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # checkpoints present were not redone
    assert (root / "assign" / "unit-1.offsets.npy").exists() and (root / "pairs" / "bucket-0.npz").exists()
    np.testing.assert_array_equal(again.i, got.i)
    np.testing.assert_array_equal(again.j, got.j)
    np.testing.assert_array_equal(again.sim, got.sim)


def test_semdedup_on_ray_with_centroids_from_a_sample(ray_session, tmp_path):
    """Centroids trained on a sample of rows (larger data): every planted copy is still found,
    and every pair found is above the threshold."""
    rng = np.random.default_rng(4)
    x, planted = _planted(rng)
    store = _store(tmp_path, x)
    cfg = SemanticConfig(method="semdedup", threshold=0.9, n_clusters=20, seed=0)
    got = semdedup_on_ray(store, store.open(), "emb", cfg, tmp_path / "s", show_progress=False, rows_per_unit=700, sample_max=800)
    assert (tmp_path / "s" / "semdedup" / "plan.json").read_text().count('"sample": 800') == 1
    assert set(planted) <= _pairs_set(got)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assert np.all(np.einsum("nd,nd->n", xn[got.i], xn[got.j]) >= cfg.threshold - 1e-5)


def test_dedup_job_semdedup_over_an_explicit_column(ray_session, coco_dir, tmp_path):
    """``dedup`` with ``semantic.method: semdedup`` on ``semantic_column: emb``: the pairs come
    from the Ray SemDeDup, count as semantic pairs in the stats, and its checkpoints are removed."""
    rows = coco_rows(coco_dir, limit=16)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((16, 32)).astype(np.float32)
    v[1] = v[0] + 0.01 * rng.standard_normal(32)  # two different photos, the same content by this embedding
    v[9] = v[12] + 0.01 * rng.standard_normal(32)  # in another fragment
    t = samples_table(rows).append_column("emb", pa.array(v.tolist(), pa.list_(pa.float32())))
    store = Store(str(tmp_path / "s.lance"))
    lance.write_dataset(t, store.uri, max_rows_per_file=8)
    run_stage(store, VisualStage(), show_progress=False)  # a dry run computes no descriptors
    cfg = DedupConfig(semantic_column="emb", semantic={"method": "semdedup"}, dry_run=True)
    res = find_duplicates(store, cfg, show_progress=False)
    assert res["stats"]["semantic_pairs"] == 2
    assert any("SemDeDup" in n for n in res["notes"])
    plan = res["plan"].to_pylist()
    assert plan[0]["dup_group"] is not None and plan[0]["dup_group"] == plan[1]["dup_group"]
    assert plan[9]["dup_group"] is not None and plan[9]["dup_group"] == plan[12]["dup_group"]
    assert {plan[9]["dup_reason"], plan[12]["dup_reason"]} == {None, "semantic"}
    assert not list((store.state_dir / "vector").glob("semdedup-*"))
