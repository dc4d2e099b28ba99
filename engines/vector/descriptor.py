"""Training-free image descriptors for near-duplicate detection (no model weights needed).

Why not a CLIP embedding: no real CLIP weights can be had offline, random weights say nothing
about duplicates, and even real ones are tuned for "same content", not "same picture". Near
duplicates are the *same photograph* after edits (crop, resize, re-encode, watermark, colour
change), which classic signals capture well:

- ``global_descriptor``: a 231-d unit vector for candidate search in FAISS: a spatial pyramid
  of gradient-orientation histograms (1x1, 2x2, 4x4 cells, 8 unsigned bins centred on multiples
  of 22.5 degrees; HOG-like) on luma
  plus the low 8x8 DCT block of a normalised 32x32 tiny image (the pHash family, but real
  valued, so cosine similarity degrades smoothly). Luma, unsigned gradients and per-image
  normalisation make it insensitive to colour changes and brightness/contrast; the coarse
  pyramid levels tolerate moderate crops; re-encodes and watermarks move it little.
- ``dihedral_descriptors``: the descriptors of the image mirrored and rotated by 90, 180 and
  270 degrees, computed from the stored vector alone (no decode). Eight bins on a square grid
  make every one of the 8 transforms an exact permutation of cells and bins (a mirror maps the
  gradient angle t to 180 - t, a transpose to 90 - t: bin centres onto bin centres) and a sign
  change or transpose of the DCT block, so a mirrored or rotated copy is found by querying the
  8 variants of one descriptor against an index of untransformed ones.
- ``orb_features`` + ``orb_verify``: local-feature verification of a candidate pair (OpenCV ORB
  keypoints, Hamming ratio-test matching, RANSAC similarity transform). A crop or a watermark
  keeps many geometrically consistent matches; two different photos of the same kind of scene
  do not. This is what makes precision high while recall stays high on crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DESC_DIM",
    "DescriptorConfig",
    "global_descriptor",
    "orb_features",
    "orb_verify",
    "OrbFeatures",
    "working_gray",
    "describe",
    "region_boxes",
    "N_REGIONS",
    "CONTENT_REGION",
    "content_box",
    "decode_gray",
    "visual_columns",
    "DIHEDRAL",
    "dihedral_images",
    "dihedral_descriptors",
    "orb_verify_mirrored",
    "verify_features",
    "verify_pairs",
    "verify_pairs_geometry",
    "containment",
]

_BINS = 8
_LEVELS = (1, 2, 4)
_DCT = 8
DESC_DIM = _BINS * sum(l * l for l in _LEVELS) + _DCT * _DCT - 1  # 168 + 63 = 231


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
    # bins centred on multiples of 180/8 degrees: an axis-aligned edge sits mid-bin, and mirrors
    # and quarter turns map bins onto bins (see ``dihedral_descriptors``)
    b = np.floor(ang / np.pi * _BINS + 0.5).astype(np.int32) % _BINS
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
    energy: np.ndarray | None = None  # ENERGY_GRID x ENERGY_GRID mean gradient magnitude (``gradient_energy``)


def orb_features(gray: np.ndarray, n_features: int = 700) -> OrbFeatures:
    """ORB keypoints of a working-size luma image (see ``working_gray``)."""
    import cv2

    orb = cv2.ORB_create(nfeatures=n_features, fastThreshold=10, scaleFactor=1.2, nlevels=8)
    kps, des = orb.detectAndCompute(gray, None)
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return OrbFeatures(pts, des, tuple(gray.shape[:2]), gradient_energy(gray))


ENERGY_GRID = 32


def gradient_energy(gray: np.ndarray, grid: int = ENERGY_GRID) -> np.ndarray:
    """Mean Sobel gradient magnitude in each cell of a grid x grid partition: where a picture has
    scene (texture, edges) and where it is flat (a frame's border, a page margin). Unlike ORB
    keypoints it reaches the image border and does not compete for a fixed budget of points."""
    import cv2

    g = gray.astype(np.float32)
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    return cv2.resize(mag, (grid, grid), interpolation=cv2.INTER_AREA)


def _coverage(pts: np.ndarray, shape: tuple[int, int], grid: int = 4) -> float:
    """Share of the cells of a grid x grid partition of the image that hold an inlier: a match
    of the whole picture covers most cells; a shared logo or watermark text covers a few."""
    if len(pts) == 0:
        return 0.0
    h, w = shape
    cx = np.clip((pts[:, 0] / max(w, 1) * grid).astype(int), 0, grid - 1)
    cy = np.clip((pts[:, 1] / max(h, 1) * grid).astype(int), 0, grid - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / float(grid * grid)


def _order_key(f: OrbFeatures) -> tuple:
    return (len(f.points), f.shape, f.descriptors.tobytes()[:64] if f.descriptors is not None else b"")


def _mutual_matches(a: OrbFeatures, b: OrbFeatures, ratio: float, min_matches: int = 4) -> list[tuple[int, int]]:
    """Matches that pass Lowe's ratio test in both directions and are each other's nearest:
    the same set whichever image comes first (a one-way ratio test is not symmetric). Fewer than
    ``min_matches`` one way means fewer mutual ones: the reverse pass is skipped (most pairs)."""
    import cv2

    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def one_way(x, y) -> dict[int, int]:
        return {
            p[0].queryIdx: p[0].trainIdx
            for p in matcher.knnMatch(x.descriptors, y.descriptors, k=2)
            if len(p) == 2 and p[0].distance < ratio * p[1].distance
        }

    ab = one_way(a, b)
    if len(ab) < min_matches:
        return []
    ba = one_way(b, a)
    return [(q, t) for q, t in ab.items() if ba.get(t) == q]


def _fit(
    a: OrbFeatures,
    b: OrbFeatures,
    ratio: float = 0.8,
    reproj_px: float = 6.0,
    max_shape_change: float = 0.3,
    min_matches: int = 4,
):
    """``orb_verify``'s work: (inliers, inlier ratio, coverage, transform, swapped). ``transform``
    (2x3, or None) maps the points of the first image of the canonical order to the second;
    ``swapped``: that first image is ``b``."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.points) < 4 or len(b.points) < 4:
        return 0, 0.0, 0.0, None, False
    swapped = _order_key(a) > _order_key(b)
    if swapped:
        a, b = b, a
    good = _mutual_matches(a, b, ratio, max(4, min_matches))
    if len(good) < max(4, min_matches):
        return 0, 0.0, 0.0, None, False
    src = a.points[[q for q, _ in good]]
    dst = b.points[[t for _, t in good]]
    cv2.setRNGSeed(0)  # RANSAC's sampling: the same pair gives the same answer in every process
    m, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj_px, maxIters=2000, confidence=0.995, refineIters=10
    )
    if mask is None or m is None or shape_change(m, a.shape, b.shape) > max_shape_change:
        return 0, 0.0, 0.0, None, False
    keep = mask.ravel().astype(bool)
    inl = int(keep.sum())
    cov = min(_coverage(src[keep], a.shape), _coverage(dst[keep], b.shape))
    return inl, inl / len(good), cov, m, swapped


def orb_verify(
    a: OrbFeatures,
    b: OrbFeatures,
    ratio: float = 0.8,
    reproj_px: float = 6.0,
    max_shape_change: float = 0.3,
    min_matches: int = 4,
) -> tuple[int, float, float]:
    """Geometrically verified matches between two images: (inliers, inliers / tentative matches,
    spatial coverage of the inliers). Symmetric: ``orb_verify(a, b) == orb_verify(b, a)``.

    Mutual ratio-test matches on Hamming distances, then RANSAC fits a similarity transform
    (rotation, uniform scale, translation: covers crops, resizes and quarter turns); only matches
    consistent with one transform count. The pair is put in a canonical order first, so RANSAC
    sees the same problem either way. Two unrelated photos rarely exceed ~8 inliers; two photos
    that carry the same watermark can reach ~25, but their inliers cover only a few cells of the
    frame (coverage). A transform under which the shared part changes the picture's shape by more
    than ``max_shape_change`` (``shape_change``: a strip cut from a photo) counts as no match.
    Mirrors need ``orb_verify_mirrored`` (a similarity has no reflection). A pair with fewer than
    ``min_matches`` tentative matches is answered 0 without RANSAC (set it to the fewest inliers
    that could accept a pair: most candidate pairs are unrelated photos).
    """
    return _fit(a, b, ratio, reproj_px, max_shape_change, min_matches)[:3]


def _overlap_sides(m: np.ndarray, src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> tuple[float, float]:
    """Width and height fractions of the destination frame covered by the bounding box of the
    source frame mapped by the 2x3 transform ``m`` (clipped to the destination frame)."""
    h, w = src_shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ np.asarray(m, np.float64).T
    dh, dw = dst_shape
    fw = (min(corners[:, 0].max(), dw) - max(corners[:, 0].min(), 0)) / max(dw, 1)
    fh = (min(corners[:, 1].max(), dh) - max(corners[:, 1].min(), 0)) / max(dh, 1)
    return max(fw, 1e-3), max(fh, 1e-3)


def shape_change(m: np.ndarray, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> float:
    """How much the shared part of two images changes the picture's shape: |log(width fraction /
    height fraction)| of the overlap in either image, the larger. A copy, a uniform crop, a
    screenshot or a quarter turn keep it near 0; a strip cut from a photo (one side kept whole, the
    other cut to 40%: 0.9) is a new composition, not a copy of the photo."""
    inv = cv2_invert_affine(m)
    fa = _overlap_sides(inv, b_shape, a_shape)
    fb = _overlap_sides(m, a_shape, b_shape)
    return float(max(abs(np.log(fa[0] / fa[1])), abs(np.log(fb[0] / fb[1]))))


def cv2_invert_affine(m: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def _fit_mirrored(a: OrbFeatures, b: OrbFeatures, b_mirror: OrbFeatures | None, enough: int = 60, **kw):
    """(``_fit`` of a against b or against b mirrored, whichever has more inliers; the features of
    b that fitted). A pair with ``enough`` inliers unmirrored is not tried mirrored."""
    best, used = _fit(a, b, **kw), b
    if b_mirror is not None and best[0] < enough:
        m = _fit(a, b_mirror, **kw)
        if m[0] > best[0]:
            best, used = m, b_mirror
    return best, used


def orb_verify_mirrored(
    a: OrbFeatures, b: OrbFeatures, b_mirror: OrbFeatures | None, *, enough: int = 60, **kw
) -> tuple[int, float, float]:
    """``orb_verify`` of a against b and against b mirrored (features of ``np.fliplr`` of b's
    working image); the better of the two by inliers. ORB itself is rotation-invariant, so with
    the mirror every one of the 8 dihedral copies can verify. A pair with ``enough`` inliers
    unmirrored is not tried mirrored (half the cost on the common, unmirrored copies)."""
    return _fit_mirrored(a, b, b_mirror, enough, **kw)[0][:3]


def containment(a: OrbFeatures, b: OrbFeatures, fit, *, inside: float = 0.95, covers: float = 0.85, texture: float = 0.05) -> int:
    """+1 when ``a`` is a crop of ``b``, -1 when ``b`` is a crop of ``a``, 0 otherwise; ``fit`` is
    ``_fit(a, b)`` (``b`` may be the mirrored features that fitted).

    A crop: under the verified transform, the crop's whole frame (>= ``inside``) lies within the
    other picture, which shows clearly more (the crop covers <= ``covers`` of it), and the part
    around holds scene: gradient energy at >= ``texture`` times the energy inside. Why the last
    test: a photo pasted into a screenshot or a frame lies inside it the same way, but the frame
    is the derivative; its margin (a flat border, a page) is flat."""
    _, _, _, m, swapped = fit
    if m is None:
        return 0
    x, y = (b, a) if swapped else (a, b)  # m maps x's points to y's
    inv = cv2_invert_affine(m)
    x_covered = float(np.prod(_overlap_sides(inv, y.shape, x.shape)))  # share of x inside y's frame
    y_covered = float(np.prod(_overlap_sides(m, x.shape, y.shape)))  # share of y that x's frame covers
    if x_covered >= inside and y_covered <= covers and _scene_around(y, m, x.shape, texture):
        side = 1  # x is a crop of y
    elif y_covered >= inside and x_covered <= covers and _scene_around(x, inv, y.shape, texture):
        side = -1
    else:
        return 0
    return -side if swapped else side


def _scene_around(y: OrbFeatures, m: np.ndarray, x_shape: tuple[int, int], texture: float) -> bool:
    """Whether the median cell of y outside the box of x's frame mapped by ``m`` has at least
    ``texture`` times the gradient energy of the median cell inside (scene around a crop, not a
    flat margin). The median, not the mean: a window's title bar, its text and the pasted photo's
    own edge are a few strong cells in a flat margin (mean ratio 0.2-0.5 on the synthetic
    screenshots, median 0.0; crops: median 0.1-2.5)."""
    if y.energy is None:
        return False
    h, w = x_shape
    c = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64) @ np.asarray(m, np.float64).T
    g = y.energy.shape[0]
    cx = (np.arange(g) + 0.5) * y.shape[1] / g  # cell centres, in y's pixels
    cy = (np.arange(g) + 0.5) * y.shape[0] / g
    box = np.outer((cy >= c[:, 1].min()) & (cy < c[:, 1].max()), (cx >= c[:, 0].min()) & (cx < c[:, 0].max()))
    if box.all() or not box.any():
        return False
    return float(np.median(y.energy[~box])) >= texture * float(np.median(y.energy[box]))


def verify_features(gray: np.ndarray, mirror: bool = True) -> tuple[OrbFeatures, OrbFeatures | None]:
    """ORB features of a working image and, with ``mirror``, of its left-right mirror: what
    ``verify_pairs`` needs per image (computed once per image, whatever its number of pairs)."""
    return orb_features(gray), (orb_features(np.ascontiguousarray(np.fliplr(gray))) if mirror else None)


def verify_pairs(features: dict, i, j, min_matches: int = 15) -> tuple[list[int], list[float]]:
    """(inliers, coverage) of each pair (i[k], j[k]); ``features[row]`` is ``verify_features`` of
    that row's image or None (undecodable: 0 inliers). Mirror-aware when mirrors were computed.
    ``min_matches``: the fewest inliers that can accept a pair (``NearDupConfig.min_inliers``);
    pairs that cannot reach it are answered 0 early."""
    inl, cov, _ = verify_pairs_geometry(features, i, j, min_matches)
    return inl, cov


def verify_pairs_geometry(features: dict, i, j, min_matches: int = 15) -> tuple[list[int], list[float], list[int]]:
    """``verify_pairs`` plus ``containment`` of each pair with at least ``min_matches`` inliers
    (+1: i[k] is a crop of j[k]; -1 the other way; 0 neither): what the keeper rule reads."""
    inl, cov, crop = [], [], []
    for a, b in zip(i, j):
        fa, fb = features.get(a), features.get(b)
        if fa is None or fb is None:
            inl.append(0)
            cov.append(0.0)
            crop.append(0)
            continue
        fit, used = _fit_mirrored(fa[0], fb[0], fb[1], min_matches=min_matches)
        inl.append(fit[0])
        cov.append(fit[2])
        crop.append(containment(fa[0], used, fit) if fit[0] >= min_matches else 0)
    return inl, cov, crop


# --- the dihedral group: mirrors and quarter turns of a stored descriptor -----------------------

DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "mirror", "mirror_rot90", "mirror_rot180", "mirror_rot270")
"""The 8 transforms ``dihedral_images`` applies, in this order (``mirror`` flips left-right)."""


def dihedral_images(g: np.ndarray) -> list[np.ndarray]:
    """The image under each transform of ``DIHEDRAL`` (``np.rot90`` turns counter-clockwise)."""
    m = np.fliplr(g)
    return [
        np.ascontiguousarray(x)
        for x in (g, np.rot90(g, 1), np.rot90(g, 2), np.rot90(g, 3), m, np.rot90(m, 1), np.rot90(m, 2), np.rot90(m, 3))
    ]


def _generator_maps() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(source index, sign) per output coordinate of the descriptor for the two generators:
    ``fliplr`` (x -> -x: angle t -> 180 - t, cell column j -> L-1-j, DCT coefficient (u, v) times
    (-1)^v) and ``transpose`` (angle t -> 90 - t, cell (i, j) -> (j, i), DCT (u, v) -> (v, u))."""
    out = {}
    for gen in ("fliplr", "transpose"):
        src = np.zeros(DESC_DIM, np.int64)
        sign = np.ones(DESC_DIM, np.float32)
        off = 0
        for L in _LEVELS:
            for i in range(L):
                for j in range(L):
                    for b in range(_BINS):
                        if gen == "fliplr":
                            si, sj, sb = i, L - 1 - j, (_BINS - b) % _BINS
                        else:
                            si, sj, sb = j, i, (_BINS // 2 - b) % _BINS
                        src[off + (i * L + j) * _BINS + b] = off + (si * L + sj) * _BINS + sb
            off += L * L * _BINS
        for u in range(_DCT):
            for v in range(_DCT):
                if u == v == 0:
                    continue
                k = off + u * _DCT + v - 1
                if gen == "fliplr":
                    src[k], sign[k] = k, (-1.0) ** v
                else:
                    src[k] = off + v * _DCT + u - 1
        out[gen] = (src, sign)
    return out


def _dihedral_maps() -> np.ndarray:
    """(8, 2, DESC_DIM): source index and sign of each transform in ``DIHEDRAL``'s order, composed
    from the generators exactly as ``dihedral_images`` composes the image operations
    (``np.rot90(g) == fliplr(g).T``, so a quarter turn is fliplr then transpose)."""
    gens = _generator_maps()

    def compose(ops: list[str]) -> tuple[np.ndarray, np.ndarray]:
        src, sign = np.arange(DESC_DIM), np.ones(DESC_DIM, np.float32)
        for op in ops:  # applied to the image in this order: d_new = sign_op * d_old[src_op]
            s_op, g_op = gens[op]
            src, sign = src[s_op], sign[s_op] * g_op
        return src, sign

    rot = ["fliplr", "transpose"]
    words = [[], rot, rot * 2, rot * 3, ["fliplr"], ["fliplr"] + rot, ["fliplr"] + rot * 2, ["fliplr"] + rot * 3]
    maps = [compose(w) for w in words]
    return np.stack([np.stack([s.astype(np.float32), g]) for s, g in maps])


_MAPS = _dihedral_maps()


def dihedral_descriptors(x: np.ndarray) -> np.ndarray:
    """(8, n, DESC_DIM): the descriptors (n x DESC_DIM, from ``global_descriptor``) of the images
    mirrored and turned as in ``DIHEDRAL``, from the vectors alone: no image is decoded. Exact up to
    pixels on the bin edges and the one-pixel rounding of odd sizes."""
    x = np.asarray(x, np.float32)
    src = _MAPS[:, 0].astype(np.int64)
    return x[:, src].transpose(1, 0, 2) * _MAPS[:, 1][:, None, :]


REGION_SCALES = (0.8, 0.7)
N_REGIONS = 5 * len(REGION_SCALES) + 1
"""Centre and corner boxes at each scale, then the content box (``CONTENT_REGION``)."""
CONTENT_REGION = N_REGIONS - 1
"""Index of the content box in ``describe``'s regions: the photo inside a screenshot, a frame or
letterbox bars, or the whole picture when nothing surrounds it (``content_box``)."""


def _chrome_lines(lines: np.ndarray, share: float) -> np.ndarray:
    """Per line (row of ``lines``, uint8 luma): does one grey level (3 levels wide) fill >= ``share``
    of it? Window chrome, margins and bars are flat fills; a photo's rows are not, even in a sky."""
    q = lines.astype(np.int32) // 3 + 86 * np.arange(len(lines), dtype=np.int32)[:, None]
    counts = np.bincount(q.ravel(), minlength=86 * len(lines)).reshape(len(lines), 86)
    return counts.max(1) >= share * lines.shape[1]


def _kept_span(chrome: np.ndarray) -> tuple[int, int]:
    keep = np.flatnonzero(~chrome)
    return (int(keep[0]), int(keep[-1]) + 1) if len(keep) else (0, 0)


def content_box(gray: np.ndarray, share: float = 0.7, min_area: float = 0.15, max_area: float = 0.9) -> tuple[int, int, int, int] | None:
    """(y, x, height, width) of the picture inside flat surroundings, or None when there are none.

    A screenshot shows a photo shrunk inside a window (title bar, margins, status bar); a framed,
    letterboxed or pillarboxed copy shows it inside flat bars. Their whole-frame descriptor sees
    mostly the surroundings, and the fixed centre regions cut across the photo wherever it sits.
    Trimming, from each side inwards, the lines that one flat fill dominates (text in a title bar
    covers too little of its row to stop it) leaves the photo's box, whose descriptor matches the
    original's full frame. Twice over rows and columns, so side margins do not hide the top and
    bottom chrome. None when the box keeps more than ``max_area`` (nothing to trim: most photos)
    or less than ``min_area`` of the picture (mostly flat: a drawing or a blank, not a frame)."""
    g = np.asarray(gray)
    if g.dtype != np.uint8:
        g = np.clip(g, 0, 255).astype(np.uint8)
    step = 2 if min(g.shape[:2]) >= 64 else 1  # every other pixel: flat fills stay flat, 4x cheaper
    g = g[::step, ::step]
    h, w = g.shape[:2]
    y0, y1, x0, x1 = 0, h, 0, w
    for _ in range(2):
        a, b = _kept_span(_chrome_lines(g[y0:y1, x0:x1], share))
        y0, y1 = y0 + a, y0 + b
        a, b = _kept_span(_chrome_lines(g[y0:y1, x0:x1].T, share)) if y1 > y0 else (0, 0)
        x0, x1 = x0 + a, x0 + b
        if y1 - y0 < 8 or x1 - x0 < 8:
            return None
    area = (y1 - y0) * (x1 - x0) / (h * w)
    if not min_area <= area <= max_area:
        return None
    y0, x0 = y0 * step, x0 * step
    return y0, x0, min(y1 * step, gray.shape[0]) - y0, min(x1 * step, gray.shape[1]) - x0


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
    original it was cut from (see ``dedup.region_candidates``). The last region is the content
    box (``content_box``; the full frame again when there is none): a screenshot's photo."""
    h, w = gray.shape[:2]
    full = global_descriptor(gray, cfg)
    regs = [global_descriptor(gray[y : y + ch, x : x + cw], cfg) for y, x, ch, cw in region_boxes(h, w)]
    box = content_box(gray)
    regs.append(full if box is None else global_descriptor(gray[box[0] : box[0] + box[2], box[1] : box[1] + box[3]], cfg))
    return full, np.stack(regs)


def decode_gray(data: bytes | None, uri: str | None = None, max_side: int = 512):
    """Working luma of an encoded image, or a ``DecodeFailure`` (reason + detail) for bad input.
    Decoding goes through the profiling engine's safe decoder (bombs, truncation, EXIF, CMYK...)."""
    from engines.profiling.decode import DecodeFailure, DecodeOptions, decode_rows

    got = decode_rows([data], [uri], DecodeOptions(max_side=max_side))[0]
    if isinstance(got, DecodeFailure):
        return got
    return working_gray(got.array, max_side)


def to_int8(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` as int8, scaled so that its largest |component| is 127.

    Why: descriptors are only ever compared by cosine, so the scale need not be stored (readers
    normalise: ``index.to_matrix(..., unit=...)``). The 11 regions of a row take 2.5 KB instead
    of float16's 5.1 (of 6.5 KB a row in all); a cosine moves by 0.004 at most. The full frame
    stays float16 (0.46 KB): pair mining tells a re-encoded copy from an edit at cosine 0.9999,
    finer than 8 bits resolve (independent rounding alone lowers such a cosine by ~1e-4)."""
    x = np.asarray(x, np.float32)
    peak = np.abs(x).max(axis=1, keepdims=True)
    return np.rint(x * (127.0 / np.where(peak > 0, peak, 1.0))).astype(np.int8)


def visual_columns(images: list, uris: list | None = None, cfg: DescriptorConfig = DescriptorConfig()) -> dict[str, list]:
    """Columns of group ``vec_visual`` for a batch of encoded images (nulls + reason on failure)."""
    uris = uris if uris is not None else [None] * len(images)
    desc, regs, errs = [], [], []
    for data, uri in zip(images, uris):
        g = decode_gray(data, uri)
        if not isinstance(g, np.ndarray):
            desc.append(None)
            regs.append(None)
            errs.append(g.message)
            continue
        if min(g.shape) < 8:
            desc.append(None)
            regs.append(None)
            errs.append(f"too_small: {g.shape[1]}x{g.shape[0]} pixels")
            continue
        f, r = describe(g, cfg)
        desc.append(f.astype(np.float16))
        regs.append(to_int8(r).ravel())
        errs.append(None)
    return {"vec_desc": desc, "vec_regions": regs, "vec_error": errs}
