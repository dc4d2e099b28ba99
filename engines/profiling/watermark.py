"""Watermark likelihood from the OCR stage's text boxes, combined with the model-free cue.

Why OCR boxes: the pixel heuristic in ``cheap.watermark_likelihood`` (dense thin strokes in an
edge band) ranks a watermarked photo above its clean original only ~61% of the time; the OCR text
detector (run by ``prof_ocr``) finds semi-transparent overlay text in 155 of 156 marked photos.
But many real photos carry scene text (signs, shirts, packaging: 26 of the 78 clean coco-mini
photos have at least one OCR line at 512 px), so "has text" alone is a poor watermark score (AUC
0.50 against text-bearing clean photos). What separates an overlay from scene text is its layout: a watermark
is one wide line of text set across the picture (a caption-like strip), placed near an edge or
corner or centred on an axis, recognised with high confidence; scene text is mostly short words
and fragments anywhere in the frame.

Per OCR line (box corners normalised to 0..1 of the upright image, as ``prof_ocr_boxes`` stores
them):

    line = conf * width_term * height_term * place_term (+ MARK_BONUS for mark-like text)
    width_term  = clip(box width  / WIDE_AT, 0, 1)     # WIDE_AT = 0.30 of the image width
    height_term = clip(box height / TALL_AT, 0, 1)     # TALL_AT = 0.06 of the image height
    place_term  = 1 near an edge (centre within EDGE of a border) or centred on an axis
                  (within AXIS of the middle), OFF_PLACE elsewhere

and the image score is the largest line score, clipped to [0, 1] (0 when OCR found no text),
mixed with the model-free overlay cue (``cheap.overlay_likelihood``) at ``OVERLAY_WEIGHT``.
All of it reads stored columns, so ``prof_scores`` computes it without decoding pixels again.
When ``prof_ocr`` has not run, the score falls back to the overlay cue alone (weaker, AUC 0.76,
but above the stroke heuristic's 0.65 on held-out photos: asserted in
tests/engines/profiling/test_watermark.py). Measured figures and limits are in docs/profiling.md.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "WIDE_AT",
    "TALL_AT",
    "EDGE",
    "AXIS",
    "OFF_PLACE",
    "MARK_BONUS",
    "OVERLAY_WEIGHT",
    "line_score",
    "ocr_watermark_score",
    "watermark_scores",
    "MARK_TEXT",
]

WIDE_AT = 0.30
TALL_AT = 0.06
EDGE = 0.20
AXIS = 0.10
OFF_PLACE = 0.6
MARK_BONUS = 0.3

MARK_TEXT = re.compile(
    r"©|\(c\)|copyright|版权|样张|水印|all rights|\bstock\b|\bsample\b|\bpreview\b|shutterstock|getty|istock|alamy|"
    r"dreamstime|depositphotos|123rf|adobe ?stock|www\.|https?:|\.(com|net|org|cn|fr|de|co\.uk)\b|@\w"
    r"|\b\d{2,4}[./:-]\d{1,2}[./:-]\d{1,4}\b",  # camera date stamps
    re.IGNORECASE,
)
"""Text that real-world marks carry (copyright signs, stock agencies, URLs, handles, date stamps)."""


def line_score(quad: list[float] | np.ndarray, conf: float, text: str | None = None) -> float:
    """Watermark-likeness of one OCR line from its normalised quad (x1, y1 .. x4, y4 in 0..1),
    the recogniser's confidence and, when given, its text (see the module docstring)."""
    q = np.asarray(quad, np.float64).reshape(4, 2)
    if not np.isfinite(q).all():
        return 0.0
    lo, hi = np.clip(q.min(0), 0, 1), np.clip(q.max(0), 0, 1)
    bw, bh = hi - lo
    cx, cy = (lo + hi) / 2
    near_edge = min(cx, 1 - cx, cy, 1 - cy) < EDGE
    on_axis = abs(cx - 0.5) < AXIS or abs(cy - 0.5) < AXIS
    s = float(conf) * min(1.0, bw / WIDE_AT) * min(1.0, bh / TALL_AT) * (1.0 if near_edge or on_axis else OFF_PLACE)
    if text and MARK_TEXT.search(text):
        s += MARK_BONUS
    return float(min(1.0, max(0.0, s)))


def ocr_watermark_score(boxes: list | None, confs: list | None, text: str | None = None) -> float | None:
    """Image score from one row's ``prof_ocr_boxes`` / ``prof_ocr_conf`` / ``prof_ocr_text``:
    the largest line score, 0.0 for an image without text, None when OCR did not run (nulls)."""
    if boxes is None or confs is None:
        return None
    lines = text.split("\n") if text else []
    if len(lines) != len(boxes):  # text lines are joined with newlines; a line with one inside cannot be paired
        lines = [None] * len(boxes)
    return max((line_score(b, c, t) for b, c, t in zip(boxes, confs, lines) if b is not None and c is not None), default=0.0)


OVERLAY_WEIGHT = 0.2
"""Weight of the pixel overlay cue (``prof_watermark_overlay``) mixed into the OCR score: it lifts
marks the detector missed; 0.1-0.3 all measured AUC 0.982-0.984 against 0.980 without it (held-out
photos: 0.979-0.980 against 0.973)."""


def watermark_scores(cols: dict[str, list], n: int) -> list[float | None]:
    """``prof_watermark_score`` for a batch, per row from what the row has:

    * OCR boxes and the overlay cue: ``(1 - OVERLAY_WEIGHT) * ocr + OVERLAY_WEIGHT * overlay``;
    * OCR boxes only: the OCR score;
    * no OCR (stage not run, or null for the row): ``prof_watermark_overlay`` (pixel cue, AUC 0.76, 0.70 against scene
      text), else the old stroke heuristic ``prof_watermark`` (AUC 0.65, datasets profiled before the overlay cue), else None.
    The old stroke heuristic is never mixed in: with either other cue present it only lowered AUC."""
    boxes, confs, texts = cols.get("prof_ocr_boxes"), cols.get("prof_ocr_conf"), cols.get("prof_ocr_text")
    overlay, cheap = cols.get("prof_watermark_overlay"), cols.get("prof_watermark")
    out: list[float | None] = []
    for i in range(n):
        s = ocr_watermark_score(boxes[i], confs[i], texts[i] if texts else None) if boxes is not None and confs is not None else None
        ov = float(overlay[i]) if overlay is not None and overlay[i] is not None else None
        if s is not None:
            s = s if ov is None else (1.0 - OVERLAY_WEIGHT) * s + OVERLAY_WEIGHT * ov
        elif ov is not None:
            s = ov
        elif cheap is not None and cheap[i] is not None:
            s = float(cheap[i])
        out.append(s)
    return out
