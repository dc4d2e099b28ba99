"""A mergeable summary of one numeric column: quantiles and percentile ranks without the column.

Why: whole-dataset statistics (a signal's interquartile range, a row's percentile rank, quality
bins) were computed on the driver from every row's value, so the driver grew with the dataset
(review mining: ~420 bytes a row at the peak). A :class:`Quantiles` of a block is built on the
worker that reads it, and the driver merges the blocks' summaries: at most ``cap`` weighted points
a column, whatever the row count.

Exact while it holds at most ``cap`` values (every value kept with weight 1: quantiles are
``np.quantile``'s, ranks count the values below); beyond, the sorted values are pooled into
``cap`` runs of about equal weight, each kept as its mean and weight, so a rank is off by at most
about one run (``1 / cap`` of the rows). Merging in a fixed order (block order) gives the same
summary on every run. Count, mean and variance are kept exactly (Chan's pairwise update).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Quantiles"]

CAP = 65536  # 1 MiB a column; a rank off by at most ~1.5e-5


@dataclass(frozen=True)
class Quantiles:
    values: np.ndarray  # ascending
    weights: np.ndarray  # how many values each point stands for
    count: int  # values summarised (NaN excluded)
    mean: float
    m2: float  # sum of squared deviations from the mean
    cap: int = CAP

    @classmethod
    def of(cls, x: np.ndarray, cap: int = CAP) -> Quantiles:
        """The summary of ``x``'s non-NaN values."""
        v = np.sort(np.asarray(x, np.float64)[~np.isnan(np.asarray(x, np.float64))])
        n = len(v)
        mean = float(v.mean()) if n else 0.0
        m2 = float(np.square(v - mean).sum()) if n else 0.0
        return cls(v, np.ones(n), n, mean, m2, cap)._pooled()

    @classmethod
    def empty(cls, cap: int = CAP) -> Quantiles:
        return cls.of(np.zeros(0), cap)

    def merge(self, other: Quantiles) -> Quantiles:
        """Both summaries as one (exact while the total is at most ``cap``)."""
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        v = np.concatenate([self.values, other.values])
        w = np.concatenate([self.weights, other.weights])
        order = np.argsort(v, kind="stable")
        return Quantiles(v[order], w[order], n, mean, m2, self.cap)._pooled()

    def _pooled(self) -> Quantiles:
        if len(self.values) <= self.cap:
            return self
        cw = np.cumsum(self.weights)
        run = np.minimum(((cw - self.weights / 2) / cw[-1] * self.cap).astype(np.int64), self.cap - 1)
        w = np.bincount(run, weights=self.weights, minlength=self.cap)
        s = np.bincount(run, weights=self.values * self.weights, minlength=self.cap)
        keep = w > 0
        return Quantiles(s[keep] / w[keep], w[keep], self.count, self.mean, self.m2, self.cap)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def quantile(self, q) -> np.ndarray:
        """Quantiles at ``q`` (linear interpolation between order statistics, as ``np.quantile``)."""
        q = np.asarray(q, np.float64)
        if self.count == 0:
            return np.full(q.shape, np.nan)
        centre = np.cumsum(self.weights) - (self.weights + 1) / 2  # the index of each point's middle value
        return np.interp(q * (self.count - 1), centre, self.values)

    def rank(self, x: np.ndarray) -> np.ndarray:
        """Percentile rank in [0, 1] of each value of ``x``: the share of the other summarised
        values below it (the values it was built from: 0 for the least, 1 for the greatest, ties
        share the lower rank). NaN stays NaN."""
        x = np.asarray(x, np.float64)
        below = np.concatenate([[0.0], np.cumsum(self.weights)])[np.searchsorted(self.values, x, side="left")]
        out = below / max(self.count - 1, 1)
        return np.where(np.isnan(x), np.nan, np.clip(out, 0.0, 1.0))
