"""OCR with PaddleOCR's models: text lines, boxes, confidences, text-area ratio, script.

Backends: ``rapidocr`` (default; the PP-OCR detection / classification / recognition ONNX
models ship inside the wheel, runs on onnxruntime) and ``paddleocr`` (the PaddleOCR package
itself, reading model directories from local paths; it cannot fetch models offline). Both return
the same ``OcrLine`` list, so the columns do not depend on the backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from curation.text import detect_lang
from engines.profiling.decode import Decoded

__all__ = ["OcrLine", "OcrEngine", "ocr_columns", "text_area_ratio", "check_paddleocr"]


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


class OcrEngine:
    """One loaded OCR model. ``min_confidence`` drops lines the recogniser is unsure of."""

    def __init__(self, backend: str = "rapidocr", model_dirs: dict[str, str] | None = None, min_confidence: float = 0.5):
        self.backend = backend
        self.min_confidence = min_confidence
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
        """Lines of text in an H x W x 3 RGB image, in reading order as the model returns them."""
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
    the upright image so they do not depend on the working resolution."""
    out: dict[str, list] = {k: [] for k in ("prof_ocr_text", "prof_ocr_boxes", "prof_ocr_conf", "prof_ocr_area", "prof_ocr_lang")}
    for r in results:
        lines = None
        if isinstance(r, Decoded):
            try:
                lines = engine.read(r.array)
            except Exception as e:  # one bad image must not stop the batch
                if on_error:
                    on_error(f"ocr_failed: {type(e).__name__}")
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
