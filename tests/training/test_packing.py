"""Sequence packing: the packed model equals the padded one, samples do not see each other, the
loader's budget counts the tokens the model really runs (segments padded to 32), and a training
step with packing gives the padded path's loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.flow import flow_loss
from training.loader import Loader, LoaderConfig, ShardDataset, ShardMeta, plan_epoch
from training.loop import BatchList, TrainConfig, train
from training.model import S3DiT, make_layout, tiny
from training.packing import pack_layout


def _inputs(seed=0):
    """Three samples of different resolutions and caption lengths (one caption over 32 tokens)."""
    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 6, 6, generator=g), torch.randn(16, 10, 4, generator=g)]
    cap = [torch.randn(5, 32, generator=g), torch.randn(40, 32, generator=g), torch.randn(33, 32, generator=g)]
    return lat, cap, torch.tensor([0.3, 0.7, 0.9])


def _model(seed=0, **kw) -> S3DiT:
    """A tiny model with random non-zero gates and output layer, so attention and masks matter."""
    torch.manual_seed(seed)
    model = S3DiT(tiny(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _run(model, lat, cap, t, packing: bool, backend: str = "auto", pack_to: int = 1):
    model.packing, model.attn_backend, model.pack_to = packing, backend, pack_to
    with torch.no_grad():
        return model(lat, t, cap)


def test_layout_positions_match_the_padded_layout_and_padding_is_only_at_the_end():
    grids, caps = [(4, 6), (3, 3), (5, 2)], [5, 40, 33]
    pad, lay = make_layout(grids, caps), pack_layout(grids, caps, pad_to=128)
    assert lay.img.lengths == [32, 32, 32, 32] and lay.cap.lengths == [32, 64, 64, 96]  # + end padding to 128
    assert lay.uni.lengths == [64, 96, 96]  # 256 is a multiple of 128 already: no end padding
    for b, s in enumerate(lay.img_start):  # per sample: the same positions as the padded layout
        n = pad.uni_len[b]
        assert torch.equal(lay.uni_pos[0, s : s + n], pad.uni_pos[b, :n])
    assert lay.img.cu_seqlens.tolist() == [0, 32, 64, 96, 128]
    assert (lay.img_pos[0, 96:] == 0).all()  # the end padding: one extra document, position 0


@pytest.mark.parametrize("backend", ["varlen", "sdpa", "flex"])
@pytest.mark.parametrize("pack_to", [1, 128])
def test_packed_equals_padded_per_sample(backend, pack_to):
    model = _model()
    lat, cap, t = _inputs()
    ref = _run(model, lat, cap, t, packing=False)
    try:
        out = _run(model, lat, cap, t, packing=True, backend=backend, pack_to=pack_to)
    except Exception as e:  # FlexAttention is optional on CPU builds
        if backend == "flex":
            pytest.skip(f"FlexAttention unavailable here: {type(e).__name__}: {e}")
        raise
    assert [o.shape for o in out] == [x.shape for x in lat]
    for o, r in zip(out, ref):
        assert torch.allclose(o, r, atol=2e-5, rtol=1e-4), (o - r).abs().max()
    assert max((o - r).abs().max().item() for o, r in zip(out, ref)) < 2e-5
    assert ref[0].abs().mean() > 1e-3  # a real output, not zeros


def test_packed_equals_padded_with_gqa_and_one_sample():
    model = _model(n_heads=4, n_kv_heads=2, dim=128, axes_dims=(8, 12, 12))
    lat, cap, t = _inputs(1)
    for sl in (slice(0, 3), slice(1, 2)):
        ref = _run(model, lat[sl], cap[sl], t[sl], packing=False)
        out = _run(model, lat[sl], cap[sl], t[sl], packing=True)
        assert all(torch.allclose(o, r, atol=2e-5, rtol=1e-4) for o, r in zip(out, ref))


@pytest.mark.parametrize("backend", ["varlen", "sdpa"])
def test_attention_does_not_leak_across_samples(backend):
    """Changing sample 2 (its latent, caption and t) leaves samples 1 and 3 exactly as they were."""
    model = _model()
    lat, cap, t = _inputs()
    before = _run(model, lat, cap, t, packing=True, backend=backend)
    lat2, cap2, t2 = list(lat), list(cap), t.clone()
    lat2[1], cap2[1], t2[1] = lat[1] + 3.0, torch.randn(40, 32), 0.1
    after = _run(model, lat2, cap2, t2, packing=True, backend=backend)
    assert torch.allclose(before[0], after[0], atol=1e-6) and torch.allclose(before[2], after[2], atol=1e-6)
    assert (before[1] - after[1]).abs().max() > 1e-2  # the perturbed sample did change
    alone = _run(model, lat[:1], cap[:1], t[:1], packing=True, backend=backend)
    assert torch.allclose(alone[0], before[0], atol=2e-5)  # alone or packed with others: the same


def test_loss_and_gradients_equal_on_both_paths():
    model = _model().train()
    lat, cap, t = _inputs()
    res = {}
    for packing in (False, True):
        model.packing = packing
        model.zero_grad()
        loss, _ = flow_loss(model, lat, cap, t, torch.Generator().manual_seed(0))
        loss.backward()
        res[packing] = loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}
    assert np.isfinite(res[True][0]) and abs(res[True][0] - res[False][0]) < 1e-5
    for n, g in res[False][1].items():
        assert torch.allclose(res[True][1][n], g, atol=1e-5, rtol=1e-3), n  # pad tokens, gates, everything


def test_training_steps_with_packing_match_the_padded_path(tmp_path):
    lat, cap, _ = _inputs()
    batches = [{"latents": lat, "cap_feats": cap}, {"latents": lat[1:], "cap_feats": cap[1:]}] * 2
    losses = {}
    for packing in (False, True):
        cfg = TrainConfig(
            model="tiny",
            model_overrides={"packing": packing},
            steps=4,
            lr=1e-2,
            warmup_steps=0,
            caption_dropout=0.0,
            ema_decay=0.0,
            log_every=1,
            sample_count=0,
            ckpt_final=False,
            out_dir=str(tmp_path / f"packing-{packing}"),
        )
        train(cfg, BatchList(batches), device="cpu", log=lambda _m: None)
        lines = (tmp_path / f"packing-{packing}" / "metrics.jsonl").read_text().splitlines()
        losses[packing] = [json.loads(line)["loss"] for line in lines]
    assert len(losses[True]) == 4 and all(np.isfinite(losses[True]))
    assert np.allclose(losses[True], losses[False], atol=1e-5, rtol=1e-4), losses


# --- the loader's budget -------------------------------------------------------------------------


def _model_len(image: np.ndarray, caption: np.ndarray, *sources: np.ndarray) -> np.ndarray:
    """Tokens the model runs, computed here from scratch: every segment rounded up to 32."""
    up = lambda n: (n + 31) // 32 * 32  # noqa: E731
    return up(image) + up(np.maximum(caption, 1)) + sum(up(s) for s in sources)


def _check_plan(plan, meta: ShardMeta, budget: int, packing: bool, sources=()) -> None:
    assert len(plan) > 0
    assert np.array_equal(plan.seq_lens, meta.row_tokens()[plan.rows] + _caption_tokens(plan, meta))
    model = _model_len(meta.image_tokens[plan.rows], _caption_tokens(plan, meta), *(s[plan.rows] for s in sources))
    assert np.array_equal(plan.model_lens, model)
    for b in range(len(plan)):
        m = model[plan.batch(b)]
        assert (m.sum() if packing else len(m) * m.max()) <= budget


def _caption_tokens(plan, meta: ShardMeta) -> np.ndarray:
    idx = meta.cap_offsets[plan.rows] + np.maximum(plan.caption_idx, 0)
    return np.where(plan.caption_idx >= 0, meta.cap_tokens[np.minimum(idx, len(meta.cap_tokens) - 1)], 0)


def _shards(request) -> str:
    return request.getfixturevalue("demo_shards" if request.param == "demo" else "coco_shards")


@pytest.fixture(params=["coco", "demo"])
def shards(request) -> str:
    return _shards(request)


@pytest.mark.parametrize("packing", [False, True])
def test_loader_budget_counts_32_padded_segments(shards, packing):
    meta = ShardDataset(shards, rank=0, world_size=1).meta()
    longest = int(_model_len(meta.image_tokens.max(), meta.cap_tokens.max(), *(s.max() for s in meta.segments)))  # fits all
    for budget in (longest, 2 * longest + 40, 6 * longest):
        ds = ShardDataset(shards, LoaderConfig(token_budget=budget, weighted=False, packing=packing, seed=2), rank=0, world_size=1)
        plan = ds.plan(0)
        assert not plan.dropped
        _check_plan(plan, ds.meta(), budget, packing, sources=ds.meta().segments)
        runs = [plan.model_lens[plan.batch(b)] for b in range(len(plan))]
        runs = sum(int(m.sum()) if packing else len(m) * int(m.max()) for m in runs)
        assert plan.real_padding_fraction() == pytest.approx(1 - int(plan.seq_lens.sum()) / runs)  # 32-padding included
        assert plan.padded_fraction() == pytest.approx(1 - int(plan.model_lens.sum()) / runs)  # batch padding only
        assert plan.padded_fraction() < plan.real_padding_fraction()
    loader = Loader(ds, num_workers=0)
    for batch in loader:  # what the loader yields says the same
        src = [batch["source_tokens"].numpy()] if "source_tokens" in batch else []
        m = _model_len(batch["image_tokens"].numpy(), batch["caption_tokens"].numpy(), *src)
        assert np.array_equal(batch["model_lens"].numpy(), m)
        assert (m.sum() if packing else len(m) * m.max()) <= ds.config.token_budget
    report = loader.report()
    if not report["skipped"]:
        assert report["padded_token_fraction"] == pytest.approx(plan.padded_fraction(), abs=1e-4)
        assert report["real_padding_fraction"] == pytest.approx(plan.real_padding_fraction(), abs=1e-4)
        assert report["tokens_per_batch"] <= ds.config.token_budget


def test_pair_segments_are_padded_one_by_one():
    """A pair's source segment is rounded up to 32 on its own, like the target and the caption."""
    rng = np.random.default_rng(0)
    n = 400
    img, src = rng.integers(200, 1100, n), rng.integers(200, 1100, n)
    caps = rng.integers(0, 90, n)  # 0: a row without a usable caption counts the null caption
    meta = ShardMeta(
        positions=np.arange(n),
        image_tokens=img,
        cap_offsets=np.arange(n + 1),
        cap_tokens=caps,
        cap_kinds=None,
        weight=np.ones(n),
        bucket=np.zeros(n, np.int64),
        segment_tokens=src,
        segments=(src,),
    )
    for packing in (False, True):
        cfg = LoaderConfig(token_budget=6000, weighted=False, packing=packing, pool_size=128)
        plan = plan_epoch(meta, cfg, 0)
        _check_plan(plan, meta, 6000, packing, sources=(src,))
        assert sorted(plan.rows.tolist()) == list(range(n))  # nothing dropped, nothing repeated
