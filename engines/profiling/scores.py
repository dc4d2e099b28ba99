"""Composite scores built from the profile: quality, complexity, and a curriculum bin.

Each component is mapped to [0, 1] by a fixed, documented transform (not by dataset ranks, so a
score means the same thing across datasets and versions), then combined as a weighted mean over
the components present for the row: a missing signal (stage not run, model not configured)
drops out and the remaining weights are renormalised. Rows with no component get null.

The curriculum bin is the quantile bin of complexity over the dataset (``curriculum_edges`` on
the driver, ``curriculum_bins`` per batch): 0 = simplest, ``n_bins - 1`` = most complex, so a
trainer can start on easy images and widen, as the report builds curricula from profiles.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "QUALITY_WEIGHTS",
    "COMPLEXITY_WEIGHTS",
    "quality_score",
    "complexity_score",
    "curriculum_edges",
    "curriculum_bins",
    "input_columns",
    "with_watermark_score",
    "WATERMARK_INPUTS",
    "random_quality_inputs",
]

WATERMARK_INPUTS = ("prof_watermark", "prof_watermark_overlay", "prof_ocr_boxes", "prof_ocr_conf", "prof_ocr_text")
"""Columns ``prof_watermark_score`` is built from (``engines.profiling.watermark``)."""


def _clip01(x):
    return np.clip(x, 0.0, 1.0)


# column -> (weight, transform to [0, 1] where 1 is good)
QUALITY_WEIGHTS: dict[str, tuple[float, callable]] = {
    "prof_sharpness": (0.25, lambda v: _clip01((v - 1.0) / 2.0)),  # log10 var(Laplacian): 1 blurry .. 3 crisp
    "prof_brisque": (0.15, lambda v: _clip01(1.0 - v / 100.0)),  # BRISQUE 0 best .. 100 worst
    "prof_megapixels": (0.10, lambda v: _clip01(np.log2(np.maximum(v, 1e-6) / 0.05) / np.log2(20.0))),  # 0.05 MP .. 1 MP
    "prof_noise": (0.10, lambda v: _clip01(1.0 - v / 10.0)),  # sigma 0 .. 10 luma levels
    "prof_watermark_score": (0.10, lambda v: 1.0 - _clip01(v)),  # OCR-box watermark score, else the cheap cue
    "prof_aesthetic": (0.10, lambda v: _clip01((v - 3.0) / 4.0)),  # LAION scale: 3 poor .. 7 great
    "_exposure": (0.10, lambda v: _clip01(1.0 - v / 0.2)),  # shadows + highlights clipped share
    "prof_contrast": (0.05, lambda v: _clip01(v / 0.2)),  # RMS contrast
    "prof_color_cast": (0.05, lambda v: _clip01(1.0 - (v - 1.0) / 2.0)),  # cast factor <= 1 fine, >= 3 strong
}

# column -> (weight, transform to [0, 1] where 1 is complex)
COMPLEXITY_WEIGHTS: dict[str, tuple[float, callable]] = {
    "prof_jpeg_bpp": (0.40, lambda v: _clip01(v / 0.5)),  # bytes/pixel at JPEG q75: 0.5 is very busy
    "prof_gray_entropy": (0.20, lambda v: _clip01(v / 8.0)),  # bits, max 8
    "prof_sharpness_coarse": (0.15, lambda v: _clip01((v - 1.0) / 2.5)),  # edge energy at half scale
    "prof_colorfulness": (0.10, lambda v: _clip01(v / 100.0)),
    "prof_ocr_area": (0.15, lambda v: _clip01(v / 0.3)),  # text-heavy images are harder to render
}


SCORES_VERSION = 2
"""Part of the ``prof_scores`` stage's config fingerprint: a dataset scored by older code is
re-scored on the next run. 2: ``prof_watermark_score`` is computed, never read back (version 1
read its own column once the dataset had it, so rows added later got no watermark score and a
quality without that component: byte-identical copies scored 0.85 and 0.88)."""


def input_columns(available: list[str]) -> list[str]:
    """The columns the scores are computed from, of those ``available``: never the stage's own
    ``prof_watermark_score`` (it is computed from ``WATERMARK_INPUTS`` on every run)."""
    want = set(QUALITY_WEIGHTS) | set(COMPLEXITY_WEIGHTS) | {"prof_shadows_clipped", "prof_highlights_clipped"}
    want |= set(WATERMARK_INPUTS)
    want.discard("prof_watermark_score")
    return [c for c in available if c in want]


def with_watermark_score(cols: dict[str, list], n: int) -> dict[str, list]:
    """``cols`` plus ``prof_watermark_score`` (computed from OCR boxes or the cheap cue when absent),
    so the quality score penalises the better watermark signal wherever it can be had."""
    if "prof_watermark_score" in cols:
        return cols
    from engines.profiling.watermark import watermark_scores

    return {**cols, "prof_watermark_score": watermark_scores(cols, n)}


def _column(cols: dict, name: str, n: int) -> np.ndarray:
    if name == "_exposure":
        if "prof_shadows_clipped" not in cols or "prof_highlights_clipped" not in cols:
            return np.full(n, np.nan)
        return _column(cols, "prof_shadows_clipped", n) + _column(cols, "prof_highlights_clipped", n)
    v = cols.get(name)
    if v is None:
        return np.full(n, np.nan)
    return np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)


def _weighted(cols: dict, weights: dict, n: int, exclude=()) -> list[float | None]:
    num, den = np.zeros(n), np.zeros(n)
    for name, (w, f) in weights.items():
        if name in exclude:
            continue
        v = _column(cols, name, n)
        ok = ~np.isnan(v)
        num[ok] += w * f(v[ok])
        den[ok] += w
    return [float(a / b) if b > 0 else None for a, b in zip(num, den)]


def quality_score(cols: dict[str, list], n: int, exclude=()) -> list[float | None]:
    """Weighted mean of ``QUALITY_WEIGHTS`` components present per row; 1 = clean, sharp, large.
    ``exclude``: components left out and the rest renormalised, as for a missing signal; the stage
    passes those made by random weights, which would otherwise add noise under a real name."""
    return _weighted(with_watermark_score(cols, n), QUALITY_WEIGHTS, n, exclude)


def random_quality_inputs(store, columns) -> dict[str, str]:
    """``{column: why}`` for the quality components among ``columns`` whose values came from random
    weights (the profiling record, ``engines.vector.retrieval.random_weight_sources``)."""
    from engines.vector.retrieval import random_weight_sources

    comps = [c for c in columns if c in QUALITY_WEIGHTS]
    return {c: s["why"] for c, s in random_weight_sources(store, comps).items()}


def complexity_score(cols: dict[str, list], n: int) -> list[float | None]:
    """Weighted mean of ``COMPLEXITY_WEIGHTS`` components; 1 = busy, detailed, text-heavy."""
    return _weighted(cols, COMPLEXITY_WEIGHTS, n)


def curriculum_edges(complexity: list[float | None], n_bins: int) -> list[float]:
    """Inner quantile edges (n_bins - 1 values) of the non-null complexities."""
    v = np.array([x for x in complexity if x is not None], dtype=np.float64)
    if v.size == 0:
        return []
    return [float(q) for q in np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])]


def curriculum_bins(complexity: list[float | None], edges: list[float]) -> list[int | None]:
    return [None if x is None else int(np.searchsorted(edges, x, side="right")) for x in complexity]
