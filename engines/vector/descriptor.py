"""Training-free image descriptors for near-duplicate detection (no model weights needed).

Why not a CLIP embedding: no real CLIP weights can be had offline, random weights say nothing
about duplicates, and even real ones are tuned for "same content", not "same picture". Near
duplicates are the *same photograph* after edits (crop, resize, re-encode, watermark, colour
change), which classic signals capture well:

- ``global_descriptor``: a 252-d unit vector for candidate search in FAISS: a spatial pyramid
  of gradient-orientation histograms (1x1, 2x2, 4x4 cells, 9 unsigned bins; HOG-like) on luma
  plus the low 8x8 DCT block of a normalised 32x32 tiny image (the pHash family, but real
  valued, so cosine similarity degrades smoothly). Luma, unsigned gradients and per-image
  normalisation make it insensitive to colour changes and brightness/contrast; the coarse
  pyramid levels tolerate moderate crops; re-encodes and watermarks move it little.
- ``orb_features`` + ``orb_verify``: local-feature verification of a candidate pair (OpenCV ORB
  keypoints, Hamming ratio-test matching, RANSAC similarity transform). A crop or a watermark
  keeps many geometrically consistent matches; two different photos of the same kind of scene
  do not. This is what makes precision high while recall stays high on crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DESC_DIM", "DescriptorConfig", "global_descriptor", "orb_features", "orb_verify", "OrbFeatures",
    "working_gray", "describe", "region_boxes", "N_REGIONS", "decode_gray", "visual_columns",
]

_BINS = 9
_LEVELS = (1, 2, 4)
_DCT = 8
DESC_DIM = _BINS * sum(l * l for l in _LEVELS) + _DCT * _DCT - 1  # 189 + 63 = 252


@dataclass(frozen=True)
class DescriptorConfig:
    """Weights of the two parts of the global descriptor (after each is L2-normalised)."""

    hog_weight: float = 1.0
    dct_weight: float = 0.6
    side: int = 96  # luma is resized to side x side before the gradient pyramid


def working_gray(rgb: np.ndarray, max_side: int = 512) -> np.ndarray:
    """Luma of an RGB uint8 array, downscaled so the longest side is at most ``max_side``."""
    import cv2

    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    h, w = g.shape
    s = max_side / max(h, w)
    if s < 1:
        g = cv2.resize(g, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    return g


def _hog_pyramid(gray: np.ndarray, side: int) -> np.ndarray:
    import cv2

    g = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    g = cv2.GaussianBlur(g, (3, 3), 0)  # JPEG blocking and noise make spurious gradients
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned: a hue shift may invert luma edges
    b = np.minimum((ang / np.pi * _BINS).astype(np.int32), _BINS - 1)
    parts = []
    for level in _LEVELS:
        cell = side // level
        for i in range(level):
            for j in range(level):
                sl = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
                parts.append(np.bincount(b[sl].ravel(), weights=mag[sl].ravel(), minlength=_BINS))
    v = np.concatenate(parts).astype(np.float32)
    v = np.sqrt(v / (v.sum() + 1e-6))  # Hellinger: tames dominant edges
    return v


def _dct_block(gray: np.ndarray) -> np.ndarray:
    import cv2

    t = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    t = (t - t.mean()) / (t.std() + 1e-6)  # brightness / contrast invariant
    low = cv2.dct(t)[:_DCT, :_DCT].ravel()[1:]
    return low


def global_descriptor(gray: np.ndarray, cfg: DescriptorConfig = DescriptorConfig()) -> np.ndarray:
    """``DESC_DIM`` float32 unit vector of a luma image (any size >= 8x8); see the module doc."""
    hog = _hog_pyramid(gray, cfg.side)
    dct = _dct_block(gray)
    hog /= np.linalg.norm(hog) + 1e-6
    dct /= np.linalg.norm(dct) + 1e-6
    v = np.concatenate([cfg.hog_weight * hog, cfg.dct_weight * dct]).astype(np.float32)
    return v / (np.linalg.norm(v) + 1e-12)


@dataclass
class OrbFeatures:
    """Keypoint coordinates (N x 2, pixels of the working image) and ORB descriptors (N x 32 uint8)."""

    points: np.ndarray
    descriptors: np.ndarray | None
    shape: tuple[int, int] = (0, 0)  # (height, width) of the working image


def orb_features(gray: np.ndarray, n_features: int = 700) -> OrbFeatures:
    """ORB keypoints of a working-size luma image (see ``working_gray``)."""
    import cv2

    orb = cv2.ORB_create(nfeatures=n_features, fastThreshold=10, scaleFactor=1.2, nlevels=8)
    kps, des = orb.detectAndCompute(gray, None)
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return OrbFeatures(pts, des, tuple(gray.shape[:2]))


def _coverage(pts: np.ndarray, shape: tuple[int, int], grid: int = 4) -> float:
    """Share of the cells of a grid x grid partition of the image that hold an inlier: a match
    of the whole picture covers most cells; a shared logo or watermark text covers a few."""
    if len(pts) == 0:
        return 0.0
    h, w = shape
    cx = np.clip((pts[:, 0] / max(w, 1) * grid).astype(int), 0, grid - 1)
    cy = np.clip((pts[:, 1] / max(h, 1) * grid).astype(int), 0, grid - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / float(grid * grid)


def orb_verify(a: OrbFeatures, b: OrbFeatures, ratio: float = 0.8, reproj_px: float = 6.0) -> tuple[int, float, float]:
    """Geometrically verified matches between two images: (inliers, inliers / tentative matches,
    spatial coverage of the inliers).

    Lowe's ratio test on Hamming distances, then RANSAC fits a similarity transform (rotation,
    uniform scale, translation: covers crops and resizes); only matches consistent with one
    transform count. Two unrelated photos rarely exceed ~8 inliers; two photos that carry the same
    watermark can reach ~25, but their inliers cover only a few cells of the frame (coverage).
    """
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.points) < 4 or len(b.points) < 4:
        return 0, 0.0, 0.0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < 4:
        return 0, 0.0, 0.0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj_px,
                                          maxIters=2000, confidence=0.995, refineIters=10)
    if mask is None:
        return 0, 0.0, 0.0
    keep = mask.ravel().astype(bool)
    inl = int(keep.sum())
    cov = min(_coverage(src[keep], a.shape), _coverage(dst[keep], b.shape))
    return inl, inl / len(good), cov


REGION_SCALES = (0.8, 0.7)
N_REGIONS = 5 * len(REGION_SCALES)


def region_boxes(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """Centre and four corner boxes (y, x, height, width) at each of ``REGION_SCALES``."""
    boxes = []
    for f in REGION_SCALES:
        ch, cw = max(8, int(h * f)), max(8, int(w * f))
        for y, x in [((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]:
            boxes.append((max(0, y), max(0, x), ch, cw))
    return boxes


def describe(gray: np.ndarray, cfg: DescriptorConfig = DescriptorConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Full-frame descriptor (``DESC_DIM``) and the ``N_REGIONS`` regional ones (N_REGIONS x DESC_DIM).

    Regions let a crop find its original: the crop's full frame matches the region of the
    original it was cut from (see ``dedup.region_candidates``)."""
    h, w = gray.shape[:2]
    full = global_descriptor(gray, cfg)
    regs = np.stack([global_descriptor(gray[y:y + ch, x:x + cw], cfg) for y, x, ch, cw in region_boxes(h, w)])
    return full, regs


def decode_gray(data: bytes | None, uri: str | None = None, max_side: int = 512):
    """Working luma of an encoded image, or a ``DecodeFailure`` (reason + detail) for bad input.
    Decoding goes through the profiling engine's safe decoder (bombs, truncation, EXIF, CMYK...)."""
    from engines.profiling.decode import DecodeFailure, DecodeOptions, decode_rows

    got = decode_rows([data], [uri], DecodeOptions(max_side=max_side))[0]
    if isinstance(got, DecodeFailure):
        return got
    return working_gray(got.array, max_side)


def visual_columns(images: list, uris: list | None = None, cfg: DescriptorConfig = DescriptorConfig()) -> dict[str, list]:
    """Columns of group ``vec_visual`` for a batch of encoded images (nulls + reason on failure)."""
    uris = uris if uris is not None else [None] * len(images)
    desc, regs, errs = [], [], []
    for data, uri in zip(images, uris):
        g = decode_gray(data, uri)
        if not isinstance(g, np.ndarray):
            desc.append(None); regs.append(None); errs.append(g.message)
            continue
        if min(g.shape) < 8:
            desc.append(None); regs.append(None); errs.append(f"too_small: {g.shape[1]}x{g.shape[0]} pixels")
            continue
        f, r = describe(g, cfg)
        desc.append(f.astype(np.float16)); regs.append(r.astype(np.float16).ravel()); errs.append(None)
    return {"vec_desc": desc, "vec_regions": regs, "vec_error": errs}
