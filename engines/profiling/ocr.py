"""OCR with PaddleOCR's models: text lines, boxes, confidences, text-area ratio, script.

Backends: ``rapidocr`` (default; the PP-OCR detection / classification / recognition ONNX
models ship inside the wheel, runs on onnxruntime) and ``paddleocr`` (the PaddleOCR package
itself, reading model directories from local paths; it cannot fetch models offline). Both return
the same ``OcrLine`` list, so the columns do not depend on the backend.

Precision filters (``drop_reason``): on photos without text the PP-OCR detector sometimes returns
one box around the whole frame (or a large blob: a lamp, a bear's face, a ski-lift tower) and the
recogniser, which always emits its likeliest characters, reads one or two of them ("品", "D", "子",
"L", "19") at confidence 0.5-0.77. Left in, such a line sets ``prof_ocr_area`` to 1.0, gives the
watermark score 0.5-0.73 (a full-width box centred on both axes) and counts ``zh`` for an English
photo. Every line therefore passes three checks before it reaches a column; ``prof_ocr_lang`` is
decided from the kept lines only. Measured on coco-mini and rendered words in docs/profiling.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from curation.text import detect_lang
from engines.profiling.decode import Decoded

__all__ = ["OcrLine", "OcrEngine", "ocr_columns", "text_area_ratio", "check_paddleocr", "drop_reason", "filter_lines"]


def check_paddleocr(model_dirs: dict[str, str] | None) -> dict[str, str]:
    """Fail early and say what to do when the ``paddleocr`` backend cannot run: PaddleOCR cannot
    download models offline, so both model folders must exist locally (each an exported inference
    model: ``inference.pdiparams`` next to ``inference.json`` or ``inference.pdmodel``), and the
    package must be installed. Checked on the driver before any worker starts."""
    import importlib.util
    from pathlib import Path

    dirs = dict(model_dirs or {})
    problems = []
    for key in ("det", "rec"):
        d = dirs.get(key)
        if not d:
            problems.append(f"model_dirs.{key} is not set")
        elif not Path(d).is_dir():
            problems.append(f"model_dirs.{key}: {d} is not a directory")
        elif not (Path(d) / "inference.pdiparams").is_file() or not any(
            (Path(d) / f).is_file() for f in ("inference.json", "inference.pdmodel")
        ):
            problems.append(f"model_dirs.{key}: {d} has no PaddleOCR inference model (inference.pdiparams + inference.json)")
    if problems:
        raise ValueError(
            "paddleocr backend: " + "; ".join(problems) + ". PaddleOCR cannot fetch models offline: export "
            "or copy the PP-OCR detection and recognition models to local folders, e.g. ocr: {backend: paddleocr, "
            "model_dirs: {det: /models/PP-OCRv5_server_det, rec: /models/PP-OCRv5_server_rec}}, or use "
            "backend: rapidocr (the default; the same PP-OCR models ship in its wheel)"
        )
    if importlib.util.find_spec("paddleocr") is None or importlib.util.find_spec("paddle") is None:
        raise ValueError(
            "paddleocr backend: the paddleocr package is not installed (pip install paddleocr paddlepaddle, "
            "about 1.1 GB; paddlepaddle-gpu for GPUs); or use backend: rapidocr (the default; the same PP-OCR "
            "models ship in its wheel)"
        )
    return dirs


@dataclass
class OcrLine:
    text: str
    quad: np.ndarray  # 4 x 2 pixel corners (x, y), clockwise from top-left
    confidence: float


MIN_SIDE = 12
MAX_ASPECT = 40

SHORT_TEXT = 2
"""Lines of at most this many characters (spaces not counted) are "short": one or two glyphs is
what the recogniser reads out of a crop that holds no text, so short lines get the two checks below."""

FULL_FRAME_SHARE = 0.5
"""A short line whose box covers at least this share of the frame is dropped. Why: the detector's
known failure on text-free photos is one box around the whole frame (area share 1.0 on 3 of the 80
coco-mini photos); one or two real glyphs filling half a photo (a giant letter) is far rarer, and
such a box would otherwise set ``prof_ocr_area`` to 1.0 and look like a centred full-width
watermark. Checked before confidence, so it holds however sure the recogniser is."""

MIN_SHORT_CONFIDENCE = 0.8
"""A short line below this recogniser confidence is dropped. Why: confidence is a mean over the
line's characters, so a one- or two-glyph read has no averaging to pull a wrong guess down; on
coco-mini every false line on the text-free photos was 1-2 characters at 0.51-0.77, while real
short reads (digits on a scoreboard, a letter on a sign) scored 0.84-1.0 (one real "11" at 0.55 is
lost). Longer lines keep the engine's ``min_confidence``."""

ASPECT_PER_CHAR = 2.0
ASPECT_SLACK = 2.0
"""A line whose box (long side / short side, measured along the quad's own edges so rotated text
is not penalised) is longer than ``ASPECT_PER_CHAR * characters + ASPECT_SLACK`` is dropped. Why: a
glyph is at most about one em wide (CJK ~1, Latin ~0.5) and the detector's box adds a margin, so on
coco-mini real lines stay under 1.6 per character; a box several times longer than its text is a
stripe, edge or railing the recogniser read a character or two from (the text does not explain the
box). There is no lower bound: curved and rotated text legitimately gives short, tall boxes."""


def _quad_sides(quad: np.ndarray) -> tuple[float, float]:
    """Mean lengths of the quad's two pairs of opposite edges (reading direction first is not assumed)."""
    q = np.asarray(quad, np.float64).reshape(4, 2)
    a = (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
    b = (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
    return float(a), float(b)


def drop_reason(line: OcrLine, h: int, w: int) -> str | None:
    """Why a recognised line should not be kept (``full_frame``, ``short_low_conf``, ``aspect``;
    ``bad_box`` for a quad with non-finite corners), or None to keep it. ``h`` x ``w`` is the image the quad is in. See the constants for why each
    check exists."""
    chars = len("".join(line.text.split()))
    q = np.asarray(line.quad, np.float64).reshape(4, 2)
    if not np.isfinite(q).all():
        return "bad_box"
    short = chars <= SHORT_TEXT
    if short:
        x, y = np.clip(q[:, 0], 0, w), np.clip(q[:, 1], 0, h)
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))  # shoelace
        if area >= FULL_FRAME_SHARE * h * w:
            return "full_frame"
        if line.confidence < MIN_SHORT_CONFIDENCE:
            return "short_low_conf"
    a, b = _quad_sides(q)
    if max(a, b) > (ASPECT_PER_CHAR * max(chars, 1) + ASPECT_SLACK) * max(min(a, b), 1.0):
        return "aspect"
    return None


def filter_lines(lines: list[OcrLine], h: int, w: int) -> tuple[list[OcrLine], list[tuple[OcrLine, str]]]:
    """(kept lines, [(dropped line, reason)]) after ``drop_reason``."""
    kept, dropped = [], []
    for ln in lines:
        why = drop_reason(ln, h, w)
        if why is None:
            kept.append(ln)
        else:
            dropped.append((ln, why))
    return kept, dropped


class OcrEngine:
    """One loaded OCR model. ``min_confidence`` drops lines the recogniser is unsure of; then
    ``filter_lines`` drops full-frame, unsure short and implausibly long-boxed lines (module
    docstring). ``dropped`` counts the filtered lines by reason over the engine's life."""

    def __init__(self, backend: str = "rapidocr", model_dirs: dict[str, str] | None = None, min_confidence: float = 0.5):
        self.backend = backend
        self.min_confidence = min_confidence
        self.dropped: dict[str, int] = {}
        if backend == "rapidocr":
            from rapidocr import RapidOCR

            logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # "no text found" is not a warning here
            self._engine = RapidOCR()
        elif backend == "paddleocr":
            dirs = check_paddleocr(model_dirs)
            from paddleocr import PaddleOCR

            self._engine = PaddleOCR(
                text_detection_model_dir=dirs["det"],
                text_recognition_model_dir=dirs["rec"],
                use_doc_orientation_classify=False,
                use_doc_unwarping=False,
                use_textline_orientation=False,
            )
        else:
            raise ValueError(f"unknown OCR backend {backend!r}; use rapidocr or paddleocr")

    def read(self, rgb: np.ndarray) -> list[OcrLine]:
        """Lines of text in an H x W x 3 RGB image, in reading order as the model returns them,
        after the precision filters."""
        h, w = rgb.shape[:2]
        kept, dropped = filter_lines(self.read_raw(rgb), h, w)
        for _, why in dropped:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        return kept

    def read_raw(self, rgb: np.ndarray) -> list[OcrLine]:
        """The model's lines above ``min_confidence``, before the precision filters."""
        lines: list[OcrLine] = []
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_ASPECT * min(h, w):
            return lines  # too thin for a readable line; the detector would upscale it to a huge canvas
        if self.backend == "rapidocr":
            res = self._engine(np.ascontiguousarray(rgb[:, :, ::-1]))  # ndarray input is taken as BGR
            if res.txts:
                for t, q, s in zip(res.txts, res.boxes, res.scores):
                    lines.append(OcrLine(t, np.asarray(q, np.float32).reshape(4, 2), float(s)))
        else:
            for page in self._engine.predict(np.ascontiguousarray(rgb[:, :, ::-1])):
                for t, q, s in zip(page["rec_texts"], page["rec_polys"], page["rec_scores"]):
                    lines.append(OcrLine(t, np.asarray(q, np.float32).reshape(4, 2), float(s)))
        return [ln for ln in lines if ln.confidence >= self.min_confidence and ln.text.strip()]


def text_area_ratio(quads: list[np.ndarray], h: int, w: int) -> float:
    """Share of the image covered by the union of text boxes (rasterised at <= 256 px)."""
    import cv2

    if not quads:
        return 0.0
    s = min(1.0, 256.0 / max(h, w))
    mh, mw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    mask = np.zeros((mh, mw), np.uint8)
    cv2.fillPoly(mask, [np.round(q * s).astype(np.int32) for q in quads], 1)
    return float(mask.mean())


def ocr_columns(results: list, engine: OcrEngine, on_error=None) -> dict[str, list]:
    """Group prof_ocr for decode results (failed rows: nulls). Boxes are normalised to 0..1 of
    the upright image so they do not depend on the working resolution. Every column, the script
    (``prof_ocr_lang``) included, is computed from the lines the precision filters kept.
    ``on_error(key)`` (the stage passes its stats counter) gets ``ocr_failed: <exception>`` per
    failed image and ``ocr_dropped_<reason>`` per filtered line."""
    out: dict[str, list] = {k: [] for k in ("prof_ocr_text", "prof_ocr_boxes", "prof_ocr_conf", "prof_ocr_area", "prof_ocr_lang")}
    for r in results:
        lines = None
        if isinstance(r, Decoded):
            before = dict(getattr(engine, "dropped", {}))
            try:
                lines = engine.read(r.array)
            except Exception as e:  # one bad image must not stop the batch
                if on_error:
                    on_error(f"ocr_failed: {type(e).__name__}")
            if on_error:
                for why, n in getattr(engine, "dropped", {}).items():
                    for _ in range(n - before.get(why, 0)):
                        on_error(f"ocr_dropped_{why}")
        if lines is None:
            for k in out:
                out[k].append(None)
            continue
        h, w = r.array.shape[:2]
        text = "\n".join(ln.text for ln in lines)
        out["prof_ocr_text"].append(text)
        out["prof_ocr_boxes"].append([(ln.quad / np.array([w, h], np.float32)).ravel().tolist() for ln in lines])
        out["prof_ocr_conf"].append([ln.confidence for ln in lines])
        out["prof_ocr_area"].append(text_area_ratio([ln.quad for ln in lines], h, w))
        out["prof_ocr_lang"].append(detect_lang(text) if text else "und")
    return out
