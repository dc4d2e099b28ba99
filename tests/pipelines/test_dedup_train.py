"""The dedup job's index training task (``pipelines.dedup_candidates._train``): its sample read in
chunks and, when large, assembled in a memory-mapped file, trains the same index as the sample
read whole (what the task did before its memory was bounded)."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.schema import VEC_DESC_DIM, VEC_REGIONS
from engines.vector.index import IndexConfig, clean_vectors, serialize, to_matrix, train_index, train_points, training_subset
from pipelines.dedup_candidates import SLOTS, _slot_vectors, _train


class _Store:
    def __init__(self, uri: str):
        self.uri = uri

    def open(self, version=None):
        return lance.dataset(self.uri, version=version)


def _dataset(path, n: int, bad: bool, seed: int = 0) -> _Store:
    """``n`` rows of float16 descriptors (11 per row); ``bad``: some of them unusable (null, NaN or
    zero full frames: not in the training sample) and null regions (zeros, as the task reads them)."""
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((n, VEC_DESC_DIM)).astype(np.float32)
    reg = rng.standard_normal((n, VEC_REGIONS * VEC_DESC_DIM)).astype(np.float32)
    null_desc, null_reg = np.zeros(n, bool), np.zeros(n, bool)
    if bad:
        full[3::29] = np.nan
        full[5::31] = 0
        null_desc[7::23] = True
        null_reg[11::37] = True
    desc = pa.FixedSizeListArray.from_arrays(pa.array(full.astype(np.float16).ravel()), VEC_DESC_DIM)
    regs = pa.FixedSizeListArray.from_arrays(pa.array(reg.astype(np.float16).ravel()), VEC_REGIONS * VEC_DESC_DIM)
    desc = pa.FixedSizeListArray.from_arrays(desc.values, VEC_DESC_DIM, mask=pa.array(null_desc))
    regs = pa.FixedSizeListArray.from_arrays(regs.values, VEC_REGIONS * VEC_DESC_DIM, mask=pa.array(null_reg))
    uri = str(path / "d.lance")
    lance.write_dataset(pa.table({"vec_desc": desc, "vec_regions": regs}), uri, max_rows_per_file=500)
    return _Store(uri)


def _train_whole(store, n: int, cfg: IndexConfig) -> bytes:
    """The task as it was: every sampled row read at once, then the slot matrix, then the subset."""
    ds = store.open()
    want = max(1, train_points(n * SLOTS, cfg) // SLOTS + 1)
    pos = np.sort(np.random.default_rng(cfg.seed).choice(n, min(want, n), replace=False))
    t = ds.take(pos.tolist(), columns=["vec_desc", "vec_regions"])
    full, null = to_matrix(t.column("vec_desc"))
    full, valid, _ = clean_vectors(full, null)
    reg, _ = to_matrix(t.column("vec_regions"), unit=full.shape[1])  # each region a unit vector, as the job reads them
    x, _ = _slot_vectors(full, reg.reshape(len(full), -1, full.shape[1]), valid, 0)
    return serialize(train_index(x, n * SLOTS, cfg)[0])


@pytest.mark.parametrize(
    "n,bad,cfg,subset",
    [
        # one-level k-means; the sampled rows give a few more vectors than the training set: a drawn subset
        (400, False, IndexConfig(kind="ivfflat", nlist=20, train_size=1000), True),
        # unusable rows in the sample: fewer vectors than the training set, all of them trained on
        (400, True, IndexConfig(kind="ivfflat", nlist=20, train_size=1000), False),
        # two-level k-means (>= 1024 lists) and an HNSW quantiser, as at scale
        (4000, False, IndexConfig(kind="ivfflat", nlist=1024, hnsw_lists=1024, train_size=1000), True),
    ],
)
def test_training_in_chunks_and_spilled_gives_the_index_of_the_whole_sample(tmp_path, n, bad, cfg, subset):
    store = _dataset(tmp_path, n, bad)
    ref = _train_whole(store, n, cfg)
    _train(store, None, n, cfg, str(tmp_path / "i1.faiss"), str(tmp_path / "r1.npz"), None, read_rows=7)
    what = _train(
        store, None, n, cfg, str(tmp_path / "i2.faiss"), str(tmp_path / "r2.npz"), str(tmp_path / "job"), read_rows=13, spill_bytes=0
    )
    assert what.endswith(f"trained on {train_points(n * SLOTS, cfg):,}") == subset
    assert (tmp_path / "i1.faiss").read_bytes() == ref  # the index file the workers read
    assert (tmp_path / "i2.faiss").read_bytes() == ref
    assert not (tmp_path / "job" / "train-sample.npy").exists()  # the spilled sample is removed
    r1, r2 = np.load(tmp_path / "r1.npz"), np.load(tmp_path / "r2.npz")  # the same router
    assert sorted(r1.files) == sorted(r2.files) and all((r1[k] == r2[k]).all() for k in r1.files)


def test_training_subset_is_the_one_train_index_draws():
    cfg = IndexConfig(kind="ivfflat", nlist=20, train_size=1000)
    assert training_subset(900, 10_000, cfg) is None
    pick = training_subset(1500, 10_000, cfg)
    assert len(pick) == len(set(pick.tolist())) == train_points(10_000, cfg) == 1000
    assert (pick == np.random.default_rng(cfg.seed).choice(1500, 1000, replace=False)).all()
