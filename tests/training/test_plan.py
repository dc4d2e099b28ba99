"""Epoch planning: exactly-once, token budget, balance across ranks, weights, determinism.

Pure NumPy over ``ShardMeta`` (what the loader reads from a shard's light columns), so thousands
of samples and many configurations run in well under a second; test_loader.py checks the same
properties through real shards, spawned workers and decoded images.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from curation.buckets import RESOLUTIONS, assign_bucket, choose_resolution, crop_sizes, image_tokens
from training.loader import LoaderConfig, ShardMeta, padded_fraction, plan_epoch


def realistic_meta(n: int, seed: int = 0, weights: np.ndarray | None = None, target: int = 1024) -> ShardMeta:
    """Rows like a web crawl: mixed sizes (so mixed resolution levels), aspect ratios and caption
    variants (short alt text to long descriptions)."""
    rng = np.random.default_rng(seed)
    side = rng.choice([300, 480, 640, 800, 1200, 2000, 4000], size=n, p=[0.1, 0.15, 0.25, 0.15, 0.15, 0.1, 0.1])
    aspect = np.exp(rng.normal(0, 0.35, n))
    tokens, bucket = [], []
    for s, a in zip(side, aspect):
        w, h = int(s * np.sqrt(a)), int(s / np.sqrt(a))
        res = choose_resolution(w, h, target)
        bw, bh = assign_bucket(w, h, crop_sizes(res))
        tokens.append(image_tokens(bw, bh))
        bucket.append(bw * 65536 + bh)
    nvar = rng.integers(1, 4, n)
    caps = np.concatenate([rng.integers(5, 300, k) for k in nvar])
    return ShardMeta(
        positions=np.arange(n, dtype=np.int64),
        image_tokens=np.array(tokens, np.int64),
        cap_offsets=np.concatenate([[0], np.cumsum(nvar)]).astype(np.int64),
        cap_tokens=caps.astype(np.int64),
        cap_kinds=np.array(rng.choice(["short", "long", "tags"], size=len(caps)), dtype=object),
        weight=np.ones(n) if weights is None else weights,
        bucket=np.array(bucket, np.int64),
    )


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("same_bucket", [False, True])
def test_each_sample_exactly_once_per_epoch_across_ranks(world_size, same_bucket):
    meta = realistic_meta(3000)
    cfg = LoaderConfig(token_budget=12000, weighted=False, pool_size=500, same_bucket=same_bucket)
    for epoch in (0, 1):
        plans = [plan_epoch(meta, cfg, epoch, r, world_size) for r in range(world_size)]
        seen = np.concatenate([p.rows for p in plans])
        assert sorted(seen.tolist()) == list(range(3000))
        assert len({len(p) for p in plans}) == 1  # every rank runs the same number of steps
        assert all(not p.dropped for p in plans)


@pytest.mark.parametrize("budget", [4500, 8192, 20000])
def test_token_budget_is_never_exceeded(budget):
    meta = realistic_meta(3000, seed=1)
    for same_bucket in (False, True):
        cfg = LoaderConfig(token_budget=budget, max_batch_size=64, same_bucket=same_bucket, pool_size=1000)
        plan = plan_epoch(meta, cfg, 0, 0, 1)
        for b in range(len(plan)):
            seq = plan.seq_lens[plan.batch(b)]
            assert 1 <= len(seq) <= 64
            assert len(seq) * seq.max() <= budget
        if not same_bucket:  # dynamic batch size: short sequences come in larger batches than long ones
            sizes = plan.batch_sizes()
            longest = np.array([plan.seq_lens[plan.batch(b)].max() for b in range(len(plan))])
            assert sizes[longest < 1000].mean() > 2 * sizes[longest > 3000].mean()
        else:
            for b in range(len(plan)):
                assert len(set(meta.bucket[plan.rows[plan.batch(b)]].tolist())) == 1


def test_sample_longer_than_the_budget_is_left_out_with_a_reason():
    meta = realistic_meta(500, seed=2)
    cfg = LoaderConfig(token_budget=2000, weighted=False)
    plan = plan_epoch(meta, cfg, 0)
    seq = meta.image_tokens  # + at least 5 caption tokens
    too_long = int((seq + 5 > 2000).sum())
    assert too_long > 0
    assert plan.dropped["over_token_budget"] >= too_long
    assert len(plan.rows) + plan.dropped["over_token_budget"] == 500


def test_length_aware_batching_pads_far_less_than_fixed_size_batches():
    meta = realistic_meta(4000, seed=3)
    cfg = LoaderConfig(token_budget=32768, weighted=False)
    plan = plan_epoch(meta, cfg, 0)
    assert plan.padded_fraction() <= 0.05
    bs = max(1, cfg.token_budget // int(plan.seq_lens.max()))  # a fixed size that always fits
    shuffled = np.random.default_rng(0).permutation(plan.seq_lens)
    fixed = padded_fraction([shuffled[i : i + bs] for i in range(0, len(shuffled), bs)])
    assert fixed > 4 * plan.padded_fraction()


def test_plan_is_deterministic_by_seed_and_epoch():
    meta = realistic_meta(1000, seed=4)
    cfg = LoaderConfig(token_budget=16384, seed=7)
    a, b = plan_epoch(meta, cfg, 3, 1, 2), plan_epoch(meta, cfg, 3, 1, 2)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.bounds, b.bounds)
    assert np.array_equal(a.caption_idx, b.caption_idx)
    c = plan_epoch(meta, cfg, 4, 1, 2)
    d = plan_epoch(meta, cfg.model_copy(update={"seed": 8}), 3, 1, 2)
    assert not np.array_equal(a.rows[:50], c.rows[:50])
    assert not np.array_equal(a.rows[:50], d.rows[:50])


def test_weights_are_respected_statistically():
    n = 400
    rng = np.random.default_rng(5)
    weights = rng.choice([0.25, 1.0, 3.0], size=n)
    meta = realistic_meta(n, seed=5, weights=weights)
    cfg = LoaderConfig(token_budget=40000, seed=11)
    counts = Counter()
    epochs = 40
    for epoch in range(epochs):
        for rank in range(2):
            counts.update(plan_epoch(meta, cfg, epoch, rank, 2).rows.tolist())
    observed = np.array([counts[i] for i in range(n)], float)
    expected = epochs * n * weights / weights.sum()
    # per weight class, the share of draws matches the weights' share within 3%
    for w in (0.25, 1.0, 3.0):
        sel = weights == w
        assert abs(observed[sel].sum() / observed.sum() - expected[sel].sum() / expected.sum()) < 0.03
    # and per row, counts are consistent with the expected ones (chi-square, not rejected at 1%)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, n - 1) > 0.01
    # stochastic rounding: a row never strays more than one draw from its expectation per epoch
    assert (np.abs(observed - expected) <= epochs).all()


def test_zero_weight_rows_are_never_drawn_and_unweighted_mode_ignores_weights():
    weights = np.ones(200)
    weights[:50] = 0
    meta = realistic_meta(200, weights=weights)
    rows = plan_epoch(meta, LoaderConfig(token_budget=40000), 0).rows
    assert set(rows.tolist()).isdisjoint(range(50))
    rows = plan_epoch(meta, LoaderConfig(token_budget=40000, weighted=False), 0).rows
    assert sorted(rows.tolist()) == list(range(200))


def test_caption_kind_weights_choose_variants():
    meta = realistic_meta(2000, seed=6)
    plan = plan_epoch(meta, LoaderConfig(token_budget=40000, caption_kind_weights={"tags": 0, "long": 1, "short": 1}), 0)
    kinds = meta.cap_kinds[meta.cap_offsets[plan.rows] + plan.caption_idx]
    has_other = np.array([set(meta.cap_kinds[meta.cap_offsets[r] : meta.cap_offsets[r + 1]]) - {"tags"} != set() for r in plan.rows])
    assert not (kinds[has_other] == "tags").any()
    # the sequence length includes exactly the chosen caption's tokens
    cap = meta.cap_tokens[meta.cap_offsets[plan.rows] + plan.caption_idx]
    assert np.array_equal(plan.seq_lens, meta.image_tokens[plan.rows] + np.where(plan.caption_idx >= 0, cap, 0))


def test_a_rank_outside_the_world_is_an_error():
    with pytest.raises(ValueError, match="rank 2"):
        plan_epoch(realistic_meta(10), LoaderConfig(), 0, rank=2, world_size=2)


def test_resolution_levels_in_realistic_mix():
    meta = realistic_meta(2000)
    levels = Counter((meta.image_tokens // 100).tolist())
    assert len(levels) >= 3  # 256, 512 and 1024 levels all present
    assert set(RESOLUTIONS) == {256, 512, 1024}
