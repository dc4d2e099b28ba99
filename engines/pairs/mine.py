"""Mined editing pairs (issue #17): two real images of the same scene that differ meaningfully.

Pure functions on NumPy arrays, no I/O and no Ray (``pipelines.pairs`` runs them on workers):

- ``in_band`` / ``canonical_pairs`` / ``cap_pairs``: which k-NN neighbours become candidates. The
  graph holds both directions of most edges; a pair is kept once, source = the smaller id. The cap
  bounds pairs per image and per group (connected component of the candidate graph), so one big
  cluster of near-identical shots cannot flood the set.
- ``align``: ORB features and mutual ratio-test matches from ``engines.vector.descriptor`` (the
  code dedup verifies duplicates with), then a RANSAC homography, because the two shots of one
  scene may differ by a crop, a zoom or a small change of viewpoint. A homography within half a
  pixel of the identity is snapped to it, so an in-place edit is compared pixel for pixel.
- ``diff_score``: where and how much the aligned images differ: changed-area fraction of the shared
  part, connected changed regions, their bounding box, and a global / local label.
- ``caption_difference``: 1 - Jaccard of the word sets of two captions (None without both).

Nothing here writes an instruction: a mined pair has none unless a captioning / VLM plug-in is
configured (``load_instructor``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MINE_VERSION",
    "MineParams",
    "Alignment",
    "DiffScore",
    "in_band",
    "canonical_pairs",
    "cap_pairs",
    "align",
    "warp_to",
    "diff_score",
    "caption_difference",
    "load_instructor",
]

MINE_VERSION = "mine v1"


@dataclass(frozen=True)
class MineParams:
    """Thresholds of alignment and diff scoring (``pipelines.pairs.MineConfig`` passes its own)."""

    work_side: int = 512  # alignment and diff run on copies at most this long (speed; JPEG noise averages out)
    min_inliers: int = 20  # fewer RANSAC inliers: the pair cannot be aligned
    reproj_px: float = 4.0  # RANSAC reprojection threshold, working pixels
    diff_threshold: int = 32  # a pixel is changed when a channel differs by more (after a 5x5 blur)
    min_region: float = 0.0005  # changed regions smaller than this share of the frame are noise
    min_changed: float = 0.002  # less change than this (of the shared part): a near duplicate, not an edit
    global_fraction: float = 0.4  # more change than this: a global change (tone, weather, another shot)


@dataclass
class Alignment:
    """Homography mapping source pixels to target pixels (full resolution), its RANSAC inliers and
    whether it was snapped to the identity (same size, within half a pixel)."""

    h: np.ndarray
    inliers: int
    identity: bool


@dataclass
class DiffScore:
    """How the aligned target differs from the source (source pixels)."""

    changed_fraction: float  # changed pixels / pixels both images show
    regions: int  # connected changed regions of at least ``min_region``
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) around the changed regions; (0, 0, 0, 0) when none
    overlap: float  # share of the source frame the target covers after alignment
    change: str  # "none", "local" or "global"
    mask: np.ndarray = field(repr=False)  # working-size bool map of the changed regions


def in_band(sim: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Similarity in [lo, hi): above ``hi`` is a duplicate (nothing to learn), below ``lo`` unrelated."""
    sim = np.asarray(sim, np.float64)
    return (sim >= lo) & (sim < hi)


def canonical_pairs(src: list[str], dst: list[str], sim: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Each undirected edge once, as (smaller id, larger id), with its highest similarity (the graph
    lists a->b and b->a, with slightly different scores when the index is approximate)."""
    best: dict[tuple[str, str], float] = {}
    for a, b, s in zip(src, dst, np.asarray(sim, np.float64).tolist()):
        if a == b:
            continue
        key = (a, b) if a < b else (b, a)
        best[key] = max(s, best.get(key, -np.inf))
    keys = sorted(best)
    return keys, np.asarray([best[k] for k in keys], np.float64)


def _groups(pairs: list[tuple[str, str]], score: np.ndarray, method: str = "communities") -> dict[str, int]:
    """Each id -> its group over the candidate pairs (``engines.vector.graph.communities``):
    ``communities``: Leiden (CPM, resolution 0.5) weighted by ``score``, so two tight clusters of
    shots joined by one chance neighbour stay two groups, each with its own cap; ``components``:
    connected components, where such chains merge into one group that the cap then starves."""
    from engines.vector.graph import communities

    ids = sorted({x for p in pairs for x in p})
    pos = {x: i for i, x in enumerate(ids)}
    src = np.array([pos[a] for a, _ in pairs], np.int64)
    dst = np.array([pos[b] for _, b in pairs], np.int64)
    if method == "components":
        labels = communities(len(ids), src, dst, method="components")
    else:
        labels = communities(len(ids), src, dst, np.clip(np.asarray(score, np.float64), 1e-6, None), method="leiden")
    return dict(zip(ids, labels.tolist()))


def cap_pairs(pairs: list[tuple[str, str]], score: np.ndarray, per_image: int, per_group: int, groups: str = "communities") -> list[int]:
    """Indices of the pairs kept, best ``score`` first: an image takes part in at most ``per_image``
    pairs (as source or target) and a group (``_groups``) in at most ``per_group``, so a large
    cluster of shots of one scene yields a few pairs, not all of its n^2. Ties break on the ids."""
    group = _groups(pairs, score, groups)
    order = sorted(range(len(pairs)), key=lambda i: (-float(score[i]), pairs[i]))
    per: dict[str, int] = {}
    per_g: dict[int, int] = {}
    keep = []
    for i in order:
        a, b = pairs[i]
        g = group[a]
        if per.get(a, 0) >= per_image or per.get(b, 0) >= per_image or per_g.get(g, 0) >= per_group:
            continue
        keep.append(i)
        per[a], per[b], per_g[g] = per.get(a, 0) + 1, per.get(b, 0) + 1, per_g.get(g, 0) + 1
    return sorted(keep)


def _scale(shape: tuple[int, ...], side: int) -> float:
    return min(1.0, side / max(shape[0], shape[1]))


def align(src: np.ndarray, tgt: np.ndarray, p: MineParams = MineParams()) -> Alignment | None:
    """The homography source -> target (full-resolution pixels), or None when the two images share
    too few geometrically consistent ORB matches (another scene, or too different a view)."""
    import cv2

    from engines.vector.descriptor import _mutual_matches, orb_features, working_gray

    ga, gb = working_gray(src, p.work_side), working_gray(tgt, p.work_side)
    fa, fb = orb_features(ga, 1500), orb_features(gb, 1500)
    if fa.descriptors is None or fb.descriptors is None or len(fa.points) < 4 or len(fb.points) < 4:
        return None
    good = _mutual_matches(fa, fb, 0.8, max(4, p.min_inliers))
    if len(good) < max(4, p.min_inliers):
        return None
    pa_, pb_ = fa.points[[q for q, _ in good]], fb.points[[t for _, t in good]]
    cv2.setRNGSeed(0)  # the same pair gives the same homography in every process
    hw, mask = cv2.findHomography(pa_, pb_, cv2.RANSAC, p.reproj_px, maxIters=2000, confidence=0.995)
    if hw is None or mask is None or int(mask.sum()) < p.min_inliers or not _sane(hw):
        return None
    sa, sb = ga.shape[0] / src.shape[0], gb.shape[0] / tgt.shape[0]
    h = np.diag([1 / sb, 1 / sb, 1.0]) @ hw @ np.diag([sa, sa, 1.0])
    ident = src.shape[:2] == tgt.shape[:2] and _corner_shift(h, src.shape) < 0.5
    return Alignment(np.eye(3) if ident else h / h[2, 2], int(mask.sum()), ident)


def _sane(h: np.ndarray) -> bool:
    """A homography that keeps orientation, scales area by 1/4..4 and is nearly affine: two shots
    of one scene, not a degenerate fit to a few matches on a line."""
    h = h / h[2, 2]
    det = float(np.linalg.det(h[:2, :2]))
    return 0.25 < det < 4.0 and float(np.abs(h[2, :2]).max()) < 2e-3


def _corner_shift(h: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance a frame corner moves under ``h`` (pixels)."""
    y, x = shape[0], shape[1]
    c = np.array([[0, 0, 1], [x, 0, 1], [0, y, 1], [x, y, 1]], np.float64)
    m = c @ (h / h[2, 2]).T
    return float(np.abs(m[:, :2] / m[:, 2:] - c[:, :2]).max())


def warp_to(tgt: np.ndarray, a: Alignment, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The target resampled into the source's frame (``shape``), and where it has pixels (bool).
    The identity returns the target itself: an in-place edit keeps its exact pixels."""
    import cv2

    if a.identity:
        return tgt, np.ones(shape[:2], bool)
    size = (shape[1], shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # out(x) = tgt(h x): h maps source to target
    out = cv2.warpPerspective(tgt, a.h, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpPerspective(np.ones(tgt.shape[:2], np.uint8), a.h, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    return out, valid.astype(bool)


def diff_score(src: np.ndarray, warped: np.ndarray, valid: np.ndarray, p: MineParams = MineParams()) -> DiffScore:
    """Changed regions of two aligned images: per-channel difference after a blur (JPEG noise and
    resampling stay under ``diff_threshold``), within the shared part eroded by 2 px (its resampled
    edge); closed so the thin strokes of a text become one region, opened to drop lone specks, and
    regions under ``min_region`` of the frame dropped."""
    import cv2

    s = _scale(src.shape, p.work_side)
    size = (max(1, round(src.shape[1] * s)), max(1, round(src.shape[0] * s)))
    a, b = (cv2.GaussianBlur(cv2.resize(x, size, interpolation=cv2.INTER_AREA), (5, 5), 0) for x in (src, warped))
    ok = cv2.erode(cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST), np.ones((5, 5), np.uint8)) > 0
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > p.diff_threshold
    d = cv2.morphologyEx((d & ok).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))  # strokes of a text: one region
    d = cv2.morphologyEx(d, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) & ok.astype(np.uint8)  # lone specks: noise
    n, lab, stats, _ = cv2.connectedComponentsWithStats(d, connectivity=8)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= p.min_region * size[0] * size[1]]
    mask = np.isin(lab, big)
    frac = float(mask.sum() / max(int(ok.sum()), 1))
    change = "none" if frac < p.min_changed else "global" if frac >= p.global_fraction else "local"
    return DiffScore(frac, len(big), _box(mask, s, src.shape), float(valid.mean()), change, mask)


def _box(mask: np.ndarray, s: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box of ``mask`` (working pixels) in source pixels, rounded outwards."""
    if not mask.any():
        return (0, 0, 0, 0)
    ys, xs = np.nonzero(mask)
    x0, y0 = int(np.floor(xs.min() / s)), int(np.floor(ys.min() / s))
    x1, y1 = int(np.ceil((xs.max() + 1) / s)), int(np.ceil((ys.max() + 1) / s))
    return (max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1))


_WORD = re.compile(r"\w+", re.UNICODE)


def caption_difference(a: str | None, b: str | None) -> float | None:
    """1 - Jaccard similarity of the captions' lower-cased word sets (Chinese: characters): 0 for
    the same words, 1 for none shared; None unless both images have a caption."""
    if not (a and a.strip()) or not (b and b.strip()):
        return None
    wa, wb = _words(a), _words(b)
    return 1.0 - len(wa & wb) / max(len(wa | wb), 1)


def _words(text: str) -> set[str]:
    out: set[str] = set()
    for w in _WORD.findall(text.lower()):
        out |= set(w) if re.search(r"[\u4e00-\u9fff]", w) else {w}
    return out


def load_instructor(spec: str, model: str | None = None):
    """The instruction plug-in ``module:function``: called as ``f(source_rgb, target_rgb,
    source_caption, target_caption, score)`` and returning ``(instruction_en, instruction_zh)``
    (either may be None). A local captioning or vision-language model goes behind it
    (``engines.pairs.instruct:blip`` wraps a BLIP captioner); ``model``, a local folder, is passed
    to it as the keyword ``model`` (set in the job's config, so every Ray worker gets it). Without
    a plug-in, mined pairs carry no instruction."""
    import importlib
    from functools import partial

    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ValueError(f"instructor {spec!r}: expected module:function")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"instructor {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ValueError(f"instructor {spec!r} is not callable")
    return partial(fn, model=model) if model else fn
