"""Watermark likelihood on real photos: COCO photos with and without a rendered semi-transparent
watermark (the demo corpus's own renderer for centre / bottom-right marks, the same style at the
other corners and edges), COCO photos with real scene text as hard negatives, and the COCO photos
that carry real photographers' marks (URL overlays, a camera date stamp) as real positives.

The OCR-box score (``prof_watermark_score``) must rank marked above clean; the old pixel
heuristic (``prof_watermark``) is measured on the same set and must do worse. The pixel overlay
cue (``prof_watermark_overlay``, the no-OCR fallback and 0.2 of the OCR score) must beat the old
heuristic on held-out photos: coco-mini photos 49-80 in name order (its thresholds were swept on
the first 48), marked with seeds no tuning used.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"

# Neutral texts (no ©, "stock", URL): the score must not lean on the mark-text bonus to pass.
TEXTS = ["Lorem Studio", "J. Martin 2019", "northlight", "Kestrel Images"]
# (where, box as fractions of w, h): the corners and edges the demo renderer does not use
EDGE_BOXES = {
    "top_left": (0.02, 0.02, 0.55, 0.18),
    "top_right": (0.45, 0.02, 0.98, 0.18),
    "bottom_left": (0.02, 0.82, 0.55, 0.98),
    "bottom_centre": (0.2, 0.84, 0.8, 0.98),
}
N_MARKED = 10
SCENE_TEXT = ["000000000790.jpg", "000000107438.jpg", "000000114174.jpg", "000000121647.jpg"]
REAL_MARKS = ["000000232357.jpg", "000000284218.jpg"]  # "oldonbaldwin.com", "petitplat.fr" overlays
MAX_SIDE = 512  # small working copies keep OCR at ~0.4 s per image
HELD_OUT_FROM = 48  # the overlay cue's thresholds were swept on the first 48 photos (name order)
HELD_OUT_SEEDS = (2001, 2002, 2003, 2004, 2005)


def _jpeg(im: Image.Image, q: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _edge_mark(im: Image.Image, text: str, box, alpha: int, scale: float) -> Image.Image:
    """The demo corpus's style (white text at ``alpha``, dark outline at alpha/2, font fitted to a
    box) in a corner or edge box shrunk by ``scale``."""
    from democorpus.corpus import _fit_font

    w, h = im.size
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h, (x1 - x0) * w * scale / 2, (y1 - y0) * h * scale / 2
    font = _fit_font(CJK_FONT, [text], int(2 * hw * 0.9), int(2 * hh * 0.9), max(14, w // 9))
    base = im.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (cx, cy),
        text,
        font=font,
        fill=(255, 255, 255, alpha),
        anchor="mm",
        stroke_width=max(1, w // 300),
        stroke_fill=(0, 0, 0, alpha // 2),
    )
    return Image.alpha_composite(base, layer).convert("RGB")


def _mark(im: Image.Image, k: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Photo ``k`` of a set, marked: every third with the demo corpus's own renderer (centre band
    or bottom right, alpha 110-170), the others in the same style at the other corners and edges."""
    from democorpus.corpus import _near_dup

    text = TEXTS[k % len(TEXTS)]
    if k % 3 == 0:
        marked, _, q, _ = _near_dup(im, "watermark", rng, CJK_FONT, text)
        return marked, q
    where = list(EDGE_BOXES)[k % len(EDGE_BOXES)]
    return _edge_mark(im, text, EDGE_BOXES[where], int(rng.integers(90, 171)), float(rng.uniform(0.6, 1.0))), 90


def _photo(path) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    return im


def _auc(pos, neg) -> float:
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


@pytest.fixture(scope="module")
def scored(coco_dir):
    """Every image through the real path: decode -> OCR columns (as prof_ocr stores them) and the
    cheap degradation columns -> prof_watermark_score (as prof_scores computes it)."""
    from engines.profiling.cheap import degradation_columns
    from engines.profiling.decode import DecodeOptions, decode_image
    from engines.profiling.ocr import OcrEngine, ocr_columns
    from engines.profiling.watermark import watermark_scores

    rng = np.random.default_rng(7)
    files = sorted(p for p in (coco_dir / "images").glob("*.jpg") if p.name not in SCENE_TEXT + REAL_MARKS)[:N_MARKED]
    items: list[tuple[str, str, bytes]] = []  # (kind, name, jpeg)
    for k, p in enumerate(files):
        im = _photo(p)
        marked, q = _mark(im, k, rng)
        items += [("clean", p.name, _jpeg(im)), ("marked", p.name, _jpeg(marked, q))]
    for kind, names in (("scene_text", SCENE_TEXT), ("real_mark", REAL_MARKS)):
        for name in names:
            items.append((kind, name, _jpeg(_photo(coco_dir / "images" / name))))

    decoded = [decode_image(b, DecodeOptions(max_side=MAX_SIDE)) for _, _, b in items]
    cols = ocr_columns(decoded, OcrEngine())
    cols.update(degradation_columns(decoded))
    new = watermark_scores(cols, len(items))
    no_ocr = watermark_scores({k: v for k, v in cols.items() if not k.startswith("prof_ocr")}, len(items))
    return [
        dict(kind=kind, name=name, new=n, old=o, pixel=px) for (kind, name, _), n, o, px in zip(items, new, cols["prof_watermark"], no_ocr)
    ]


def test_ocr_watermark_score_ranks_marked_photos_above_clean(scored):
    marked = {r["name"]: r for r in scored if r["kind"] == "marked"}
    clean = {r["name"]: r for r in scored if r["kind"] == "clean"}
    negatives = [r for r in scored if r["kind"] in ("clean", "scene_text")]
    auc = {k: _auc([r[k] for r in marked.values()], [r[k] for r in negatives]) for k in ("new", "old", "pixel")}
    pairs = sum(marked[k]["new"] > clean[k]["new"] for k in marked)
    print(
        f"AUC new {auc['new']:.3f} old {auc['old']:.3f} pixel-only fallback {auc['pixel']:.3f}; "
        f"marked above its original in {pairs}/{len(marked)} pairs"
    )
    assert auc["new"] >= 0.85 and auc["new"] > auc["old"] + 0.15
    assert pairs >= 0.8 * len(marked)
    # the pixel-only fallback (no OCR) is only printed here (measured 0.68, old heuristic 0.55): these
    # photos were used to tune it, and 14 negatives, four of them signs and menus, make a noisy AUC.
    # It is asserted against the old heuristic on 30 held-out photos below.


def test_pixel_cue_beats_the_stroke_heuristic_on_held_out_photos(coco_dir):
    """No OCR: the overlay cue against the old stroke heuristic, photos 49-80 (none of them used
    to sweep the overlay cue's thresholds; 11 of the 30 carry scene text), five marking seeds no
    tuning used, each marked copy against every clean held-out photo."""
    from engines.profiling.cheap import degradation_columns
    from engines.profiling.decode import DecodeOptions, decode_image

    files = [p for p in sorted((coco_dir / "images").glob("*.jpg")) if p.name not in REAL_MARKS][HELD_OUT_FROM:]
    photos = [_photo(p) for p in files]
    assert len(photos) == 30

    def cues(jpegs):
        cols = degradation_columns([decode_image(b, DecodeOptions(max_side=MAX_SIDE)) for b in jpegs])
        return np.array(cols["prof_watermark"], float), np.array(cols["prof_watermark_overlay"], float)

    clean_old, clean_px = cues([_jpeg(im) for im in photos])
    marked_old, marked_px = [], []
    for seed in HELD_OUT_SEEDS:
        rng = np.random.default_rng(seed)
        o, px = cues([_jpeg(*_mark(im, k, rng)) for k, im in enumerate(photos)])
        marked_old.append(o)
        marked_px.append(px)
    old, pixel = _auc(np.concatenate(marked_old), clean_old), _auc(np.concatenate(marked_px), clean_px)
    print(
        f"held out, {len(HELD_OUT_SEEDS)} x {len(photos)} marked vs {len(photos)} clean: AUC pixel cue {pixel:.3f}, old heuristic {old:.3f}"
    )
    assert pixel >= old + 0.04  # measured 0.718 vs 0.638 (20 other seeds one by one: +0.007..+0.13, mean +0.08)


def test_scene_text_is_not_a_watermark_and_real_marks_are(scored):
    """Photos of signs and menus (wide, confident text, but mid-frame words) score below the median
    marked photo; COCO's real URL overlays score above most clean photos."""
    marked = [r["new"] for r in scored if r["kind"] == "marked"]
    scene = [r["new"] for r in scored if r["kind"] == "scene_text"]
    clean = [r["new"] for r in scored if r["kind"] == "clean"]
    assert np.median(scene) < np.median(marked)
    assert all(r["new"] > np.percentile(clean, 75) for r in scored if r["kind"] == "real_mark")


def test_line_score_geometry_and_fallback():
    from engines.profiling.watermark import line_score, watermark_scores

    strip = [0.1, 0.85, 0.6, 0.85, 0.6, 0.95, 0.1, 0.95]  # wide line along the bottom edge
    word = [0.4, 0.3, 0.45, 0.3, 0.45, 0.33, 0.4, 0.33]  # a short word mid-frame
    assert line_score(strip, 0.99) > 0.9 > 0.1 > line_score(word, 0.99)
    assert line_score(word, 0.99, "www.example.com") > line_score(word, 0.99) + 0.25  # mark-like text
    cols = {
        "prof_watermark": [0.7, 0.2, None, 0.9],
        "prof_ocr_boxes": [[strip], None, None, None],
        "prof_ocr_conf": [[0.99], None, None, None],
        "prof_ocr_text": ["Lorem Studio", None, None, None],
        "prof_watermark_overlay": [0.5, 0.4, None, None],
    }
    # OCR -> box score mixed with the overlay cue; OCR null -> overlay cue, else the stroke cue; none -> None
    got = watermark_scores(cols, 4)
    assert got[0] == pytest.approx(0.8 * 0.99 + 0.2 * 0.5) and got[1:] == [0.4, None, 0.9]
    assert watermark_scores({"prof_ocr_boxes": [[]], "prof_ocr_conf": [[]]}, 1) == [0.0]
