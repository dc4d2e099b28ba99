"""The loader over real COCO shards: spawned workers, ranks, resume, decode + crop, corrupt images."""

from __future__ import annotations

import pickle

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.helpers import write_shards
from training.loader import Loader, LoaderConfig, ShardDataset, decode_and_crop, to_unit_range

BUDGET = 2048  # at 256 a sample is ~250 image + ~12 caption tokens: ~7 per batch


def _collect(loader: Loader) -> list[dict]:
    return [
        {"ids": b["ids"], "seq": b["seq_lens"].tolist(), "sums": [int(im.sum()) for im in b["images"]], "index": b["batch_index"]}
        for b in loader
    ]


@pytest.fixture(scope="module")
def rank_loaders(coco_shards):
    """Two ranks, each with two spawned workers that persist across the epochs of the test."""
    cfg = LoaderConfig(token_budget=BUDGET, weighted=False, seed=3)
    loaders = {
        rank: Loader(ShardDataset(coco_shards, cfg, rank=rank, world_size=2), num_workers=2, multiprocessing_context="spawn")
        for rank in range(2)
    }
    loaders["orders"] = []
    yield loaders
    for rank in range(2):
        loaders[rank].close()


@pytest.mark.parametrize("epoch", [1, 2])
def test_two_ranks_two_spawned_workers_see_every_sample_once(coco_shards, rank_loaders, epoch):
    total = lance.dataset(coco_shards).count_rows()
    per_rank, ids = [], []
    for rank in range(2):
        loader = rank_loaders[rank]  # epoch 2 reuses the workers spawned for epoch 1
        loader.set_epoch(epoch)
        batches, rank_ids = [], []
        for b in loader:
            assert len(b["ids"]) == len(b["images"]) == len(b["captions"]) == len(b["seq_lens"])
            assert len(b["ids"]) * int(b["seq_lens"].max()) <= BUDGET
            for img, (w, h) in zip(b["images"], b["buckets"]):
                assert img.dtype == torch.uint8 and tuple(img.shape) == (3, h, w)
            assert all(isinstance(c, str) and c for c in b["captions"])
            batches.append(b["batch_index"])
            rank_ids.append(b["ids"])
            ids += b["ids"]
        assert batches == list(range(len(batches)))  # the plan order, whatever worker made them
        per_rank.append(len(batches))
        report = loader.report()
        assert report["samples"] == sum(len(b) for b in rank_ids) and report["batches"] == len(batches)
        assert sum(report["batch_size"]["histogram"].values()) == len(batches)
        assert 0 <= report["padded_token_fraction"] < 0.1 and report["skipped"] == {}
    assert sorted(ids) == sorted(lance.dataset(coco_shards).to_table(columns=["id"]).column("id").to_pylist())
    assert len(ids) == total == 80
    assert per_rank[0] == per_rank[1]  # equal steps on both ranks
    rank_loaders["orders"].append(ids)
    if epoch == 2:
        assert rank_loaders["orders"][0] != rank_loaders["orders"][1]  # reshuffled by epoch


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(coco_shards):
    cfg = LoaderConfig(token_budget=BUDGET, seed=5)

    def fresh(workers: int) -> Loader:
        loader = Loader(ShardDataset(coco_shards, cfg, rank=1, world_size=2), num_workers=workers)
        loader.set_epoch(2)
        return loader

    full = _collect(fresh(0))
    assert len(full) >= 5
    # interrupted run with a spawned worker prefetching ahead: stop after 3 delivered batches
    first = fresh(1)
    it = iter(first)
    got = [next(it) for _ in range(3)]
    state = pickle.loads(pickle.dumps(first.state_dict()))  # what a checkpoint stores
    del it
    assert state["batches_done"] == 3 and state["epoch"] == 2
    assert [b["ids"] for b in got] == [b["ids"] for b in full[:3]]

    # the same loader, its persistent worker still holding prefetched batches, rewound to the state
    first.load_state_dict(state)
    assert _collect(first) == full[3:]
    first.close()

    resumed = Loader(ShardDataset(coco_shards, cfg, rank=1, world_size=2), num_workers=0)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 3
    rest = _collect(resumed)
    assert rest == full[3:]  # same ids, lengths, random crops (pixel sums) and order
    assert resumed.state_dict()["batches_done"] == len(full)

    nxt = fresh(0)
    nxt.set_epoch(3)  # a new epoch starts from its first batch with a new order
    assert _collect(nxt)[0]["ids"] != full[0]["ids"]


def test_resume_refuses_a_different_plan(coco_shards):
    loader = Loader(ShardDataset(coco_shards, LoaderConfig(token_budget=BUDGET), world_size=2, rank=0), num_workers=0)
    state = loader.state_dict()
    other = Loader(ShardDataset(coco_shards, LoaderConfig(token_budget=4096), world_size=2, rank=0), num_workers=0)
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(state)
    other = Loader(ShardDataset(coco_shards, LoaderConfig(token_budget=BUDGET), world_size=4, rank=0), num_workers=0)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)


def test_corrupt_image_is_skipped_with_a_counted_reason(tmp_path, coco_sample_rows):
    rows = [dict(r) for r in coco_sample_rows[:12]]
    bad_ids = {rows[2]["id"], rows[7]["id"]}
    uri = write_shards(rows, tmp_path / "bad.lance")
    # shards from an older export or another writer: export itself now refuses bytes that do not open
    t = lance.dataset(uri).to_table()
    images = t.column("image").to_pylist()
    images[2] = images[2][:2000]  # truncated JPEG: header fine, pixels missing
    images[7] = b"<html>not an image</html>"
    t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.large_binary()))
    lance.write_dataset(t, uri, mode="overwrite", max_rows_per_file=20)
    loader = Loader(ShardDataset(uri, LoaderConfig(token_budget=BUDGET, weighted=False)), num_workers=0)
    seen = [i for b in loader for i in b["ids"]]
    assert sorted(seen) == sorted({r["id"] for r in rows} - bad_ids)
    report = loader.report()
    assert report["skipped"] == {"decode_error": 2}
    assert report["samples"] == 10 and report["batches"] >= 2


def test_filter_and_extra_columns(coco_shards):
    cfg = LoaderConfig(token_budget=BUDGET, weighted=False, filter="bucket_w > bucket_h", columns=["width", "height"])
    loader = Loader(ShardDataset(coco_shards, cfg), num_workers=0)
    batches = list(loader)
    landscape = lance.dataset(coco_shards).count_rows(filter="bucket_w > bucket_h")
    assert 0 < sum(len(b["ids"]) for b in batches) == landscape < 80
    for b in batches:
        assert all(w > h for w, h in b["buckets"])
        assert all(w > h for w, h in zip(b["width"], b["height"]))


def test_decode_and_crop_random_and_centre(coco_sample_rows):
    data = coco_sample_rows[0]["image"]
    a = decode_and_crop(data, 304, 208, np.random.default_rng(0))
    b = decode_and_crop(data, 304, 208, np.random.default_rng(0))
    c = decode_and_crop(data, 304, 208, None)
    assert a.shape == c.shape == (208, 304, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    x = to_unit_range(torch.from_numpy(c).permute(2, 0, 1))
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    assert 20 < c.mean() < 235  # a photo, not a blank


def test_not_a_shard_is_a_clear_error(coco_store):
    with pytest.raises(ValueError, match="curate export"):
        ShardDataset(coco_store.uri)


def test_pre_encoded_columns_come_as_arrays(tmp_path, coco_sample_rows):
    uri = write_shards(coco_sample_rows[:6], tmp_path / "lat.lance")
    ds = lance.dataset(uri)
    t = ds.to_table()
    lat = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6 * 8, dtype=np.float32)), 8)
    t = t.append_column("cap_feats", lat)
    lance.write_dataset(t, uri, mode="overwrite")
    loader = Loader(ShardDataset(uri, LoaderConfig(token_budget=BUDGET, weighted=False, columns=["cap_feats"])), num_workers=0)
    feats = {i: f for b in loader for i, f in zip(b["ids"], b["cap_feats"])}
    order = t.column("id").to_pylist()
    assert len(feats) == 6
    for k, rid in enumerate(order):
        assert feats[rid].dtype == np.float32 and feats[rid].tolist() == list(range(8 * k, 8 * k + 8))
