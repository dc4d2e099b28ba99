"""The mergeable summary behind whole-dataset statistics computed without the rows on one machine
(review mining's scales, ranks and quality bins): exact while small, within about one run of
``1 / cap`` beyond, the same whatever the blocks when merged in block order."""

from __future__ import annotations

import numpy as np

from curation.quantiles import Quantiles


def _exact_rank(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    s = np.sort(x[~np.isnan(x)])
    return np.where(np.isnan(v), np.nan, np.searchsorted(s, v, side="left") / max(len(s) - 1, 1))


def test_small_summaries_are_exact_and_blocks_merge_to_the_whole():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=3000)
    x[::17] = np.nan
    whole = Quantiles.of(x)
    merged = Quantiles.of(x[:1]).merge(Quantiles.of(x[1:900])).merge(Quantiles.empty()).merge(Quantiles.of(x[900:]))
    ok = x[~np.isnan(x)]
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.99, 1.0]
    for s in (whole, merged):
        assert s.count == len(ok)
        assert np.allclose(s.quantile(qs), np.quantile(ok, qs), rtol=0, atol=1e-12)
        assert np.allclose(s.rank(x), _exact_rank(x, x), equal_nan=True)
        assert np.isclose(s.std, ok.std()) and np.isclose(s.mean, ok.mean())
    assert np.isnan(whole.rank(np.array([np.nan]))[0]) and whole.rank(np.array([ok.min(), ok.max()])).tolist() == [0.0, 1.0]


def test_large_summaries_stay_small_and_within_a_run_of_the_truth():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.lognormal(size=150_000), np.full(20_000, 3.0), rng.normal(-5, 0.1, 30_000)])  # skew, ties, a far mode
    rng.shuffle(x)
    s = Quantiles.empty(cap=1024)
    for part in np.array_split(x, 37):
        s = s.merge(Quantiles.of(part, cap=1024))
    assert len(s.values) <= 1024 and s.count == len(x)
    probe = rng.choice(x, 5000)
    assert np.abs(s.rank(probe) - _exact_rank(x, probe)).max() < 2.5 / 1024
    qs = np.linspace(0.01, 0.99, 99)
    exact_at = _exact_rank(x, np.quantile(x, qs))  # where each quantile of the summary lands, against where it should
    assert np.abs(_exact_rank(x, s.quantile(qs)) - exact_at).max() < 2.5 / 1024
    assert np.isclose(s.std, x.std()) and np.isclose(s.mean, x.mean())


def test_the_same_blocks_in_the_same_order_give_the_same_summary():
    rng = np.random.default_rng(2)
    parts = [rng.normal(size=n) for n in (5000, 1, 7000, 0, 3000)]

    def fold():
        s = Quantiles.empty(cap=512)
        for p in parts:
            s = s.merge(Quantiles.of(p, cap=512))
        return s

    a, b = fold(), fold()
    assert np.array_equal(a.values, b.values) and np.array_equal(a.weights, b.weights) and a.count == b.count == 15001
