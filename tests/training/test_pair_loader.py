"""The loader over real pair shards (``curate pairs render`` on coco-mini photos, then ``curate
pairs export`` at 256): it yields (source, target, instruction) with one batcher whose token budget
counts every segment, text + source image + target image.

- Every batch: batch size x longest sequence <= the budget, where a sequence is the source's
  tokens + the target's + the chosen instruction's, each checked against the shard's columns.
- Every pair exactly once per epoch, over two ranks and two epochs.
- A budget that fits target + text but not the source too drops every pair (``over_token_budget``):
  the source is counted, not just carried.
- Source and target of a pair are cropped at the same place (a render pair differs only in its box).
"""

from __future__ import annotations

import json
import math

import lance
import numpy as np
import pytest
from typer.testing import CliRunner

from curation.buckets import estimate_caption_tokens
from tests.pipelines.test_pairs_export import make_pair_tables
from training.loader import Loader, LoaderConfig, MixedLoader, ShardDataset

BUDGET = 1600  # at 256 a pair is 2 x ~250 image tokens + ~12 text tokens: ~3 pairs a batch


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory, coco_sample_rows, coco_dir, ray_session) -> str:
    from cli.main import app

    root = tmp_path_factory.mktemp("pair-loader")
    store = make_pair_tables(root, coco_sample_rows, coco_dir, synth=False)
    out = str(root / "pairs-256.lance")
    res = CliRunner().invoke(app, ["pairs", "export", "--dataset", store.uri, "--out", out, "--resolution", "256"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def shard(pair_shards) -> dict[str, dict]:
    return {r["id"]: r for r in lance.dataset(pair_shards).to_table(columns=None).to_pylist()}


def _check_batch(b: dict, shard: dict[str, dict]) -> None:
    n = len(b["ids"])
    assert n == len(b["images"]) == len(b["sources"]) == len(b["captions"]) == len(b["kinds"])
    assert n * int(b["seq_lens"].max()) <= BUDGET
    for i, pid in enumerate(b["ids"]):
        row = shard[pid]
        tgt, src, text = int(b["image_tokens"][i]), int(b["source_tokens"][i]), int(b["caption_tokens"][i])
        assert (tgt, src) == (row["image_tokens"], row["src_image_tokens"]) and src > 0 and text > 0
        assert int(b["seq_lens"][i]) == tgt + src + text
        assert text == estimate_caption_tokens(b["captions"][i]) and b["captions"][i] in [c["text"] for c in row["captions"]]
        (w, h), (sw, sh) = b["buckets"][i], b["source_buckets"][i]
        assert tuple(b["images"][i].shape) == (3, h, w) and tuple(b["sources"][i].shape) == (3, sh, sw)
        assert b["kinds"][i] == row["kind"]


@pytest.mark.parametrize("epoch", [0, 1])
def test_batches_count_every_segment_and_every_pair_comes_once(pair_shards, shard, epoch):
    cfg = LoaderConfig(token_budget=BUDGET, weighted=False, seed=1)
    seen = []
    for rank in range(2):
        loader = Loader(ShardDataset(pair_shards, cfg, rank=rank, world_size=2), num_workers=0)
        loader.set_epoch(epoch)
        for b in loader:
            _check_batch(b, shard)
            seen += b["ids"]
        assert loader.report()["skipped"] == {}
    assert sorted(seen) == sorted(shard)


def test_a_budget_without_room_for_the_source_drops_every_pair(pair_shards, shard):
    longest = max(r["image_tokens"] + max(r["caption_tokens"]) for r in shard.values())
    shortest_pair = min(r["image_tokens"] + r["src_image_tokens"] + min(r["caption_tokens"]) for r in shard.values())
    assert longest < shortest_pair
    ds = ShardDataset(pair_shards, LoaderConfig(token_budget=longest, weighted=False), rank=0, world_size=1)
    plan = ds.plan(0)
    assert len(plan.rows) == 0 and plan.dropped == {"over_token_budget": len(shard)}


def test_source_and_target_are_cropped_at_the_same_place(pair_shards, shard):
    cfg = LoaderConfig(token_budget=BUDGET, weighted=False, random_crop=True, seed=5)
    loader = Loader(ShardDataset(pair_shards, cfg, rank=0, world_size=1), num_workers=0)
    for b in loader:
        for src, tgt in zip(b["sources"], b["images"]):
            same = (src == tgt).all(dim=0).float().mean().item()
            assert same > 0.5, same  # a render pair differs in its box only; misaligned crops differ nearly everywhere


def test_pair_shards_refuse_pre_encoded(pair_shards):
    with pytest.raises(ValueError, match="pre_encoded: false"):
        ShardDataset(pair_shards, LoaderConfig(pre_encoded=True))
    assert np.array_equal(ShardDataset(pair_shards).meta().row_tokens(), ShardDataset(pair_shards).meta().image_tokens * 2)


def test_training_inputs_for_omni_mode(pair_shards, coco_shards):
    """Pair shards train (alone, or mixed in with --pairs) once a VAE can encode their images; the
    two inputs must be what they claim to be."""
    from pipelines.train import TrainRunConfig, check_training_inputs

    with pytest.raises(ValueError, match="set vae_path"):
        check_training_inputs(TrainRunConfig(shards=pair_shards))
    check_training_inputs(TrainRunConfig(shards=pair_shards, tiny_encoders=True))
    check_training_inputs(TrainRunConfig(shards=coco_shards, pairs=pair_shards, tiny_encoders=True))
    with pytest.raises(ValueError, match="holds single images, not pairs"):
        check_training_inputs(TrainRunConfig(shards=coco_shards, pairs=coco_shards, tiny_encoders=True))
    with pytest.raises(ValueError, match="holds pairs too"):
        check_training_inputs(TrainRunConfig(shards=pair_shards, pairs=pair_shards, tiny_encoders=True))
    with pytest.raises(ValueError, match="give them with --pairs"):
        check_training_inputs(TrainRunConfig(shards=coco_shards, edit_ratio=0.5))


def _mixed(coco_shards, pair_shards, seed=3) -> MixedLoader:
    main = Loader(ShardDataset(coco_shards, LoaderConfig(token_budget=1024, weighted=False, seed=1)), num_workers=0)
    edits = Loader(ShardDataset(pair_shards, LoaderConfig(token_budget=BUDGET, weighted=False, seed=1)), num_workers=0)
    return MixedLoader(main, edits, 0.4, seed=seed)


def test_mixed_loader_draws_both_kinds_and_resumes_the_same_draws(coco_shards, pair_shards):
    mixed = _mixed(coco_shards, pair_shards)
    kinds, state, after = [], None, []
    for i, b in enumerate(mixed):
        kinds.append("edit" if "sources" in b else "t2i")
        if i == 5:
            state = mixed.state_dict()
        elif i > 5:
            after.append(tuple(b["ids"]))
    t2i = kinds.count("t2i")
    assert t2i == len(mixed.main) and 0.2 < kinds.count("edit") / len(kinds) < 0.6, kinds
    assert mixed.report()["edit_batch_fraction"] == round(kinds.count("edit") / len(kinds), 4)
    again = _mixed(coco_shards, pair_shards)
    again.load_state_dict(state)
    assert [tuple(b["ids"]) for b in again] == after  # the same kinds in the same order, the same batches


def test_omni_training_mixes_editing_batches_into_a_run(tmp_path, coco_shards, pair_shards, tiny_encoders):
    from training.config import TrainConfig
    from training.loop import train

    cfg = TrainConfig(
        model="tiny", steps=6, lr=1e-3, log_every=3, ckpt_every=1000, sample_count=2, sample_steps=2, out_dir=str(tmp_path / "omni")
    )
    res = train(cfg, _mixed(coco_shards, pair_shards), encoders=tiny_encoders, log=lambda _m: None)
    m = [json.loads(line) for line in (tmp_path / "omni" / "metrics.jsonl").read_text().splitlines()]
    assert res["step"] == 6 and all(math.isfinite(x["loss"]) for x in m)
    assert 0 < m[-1]["edit_batch_fraction"] < 1, m[-1]  # both kinds of batch were trained on
    from PIL import Image

    t2i, edit = tmp_path / "omni" / "samples" / "step_00000006.png", tmp_path / "omni" / "samples" / "step_00000006-edit.png"
    assert Image.open(t2i).width > 0
    caps = json.loads(edit.with_suffix(".json").read_text())["captions"]
    assert len(caps) == 2 and Image.open(edit).width > Image.open(t2i).width  # each edit shows its source beside it
