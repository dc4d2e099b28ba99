"""NSFW score from nudenet's exposed-body-part detector (its 320n ONNX model ships in the wheel).

The detector finds body parts with a class and a confidence; the row's NSFW score is the highest
confidence among the *exposed intimate* classes (0 when none), which is what a safety filter
thresholds. The classes found are kept so a reviewer sees why. Batched: one ONNX run per batch.

Pre- and post-processing are ours, not nudenet's helpers, because those cost as much as the model
on CPU: nudenet converts RGB to BGR and back, pads the full-size image before resizing, and
post-processes each of the 2,100 anchors of every image in a Python loop. Here the working copy
(already decoded small) is resized once, letterboxed into a reused uint8 batch buffer and
normalised in one vectorised step; candidate anchors are selected with NumPy and only those go to
OpenCV's NMS. Outputs match nudenet's own pipeline to within interpolation rounding (tested).
"""

from __future__ import annotations

import os

import numpy as np

from engines.profiling.decode import Decoded

__all__ = ["NSFW_CLASSES", "LABELS", "NsfwDetector", "nsfw_columns"]

NSFW_CLASSES = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
# the 320n model's class order (nudenet.nudenet.__labels)
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
SCORE_MIN, NMS_SCORE, NMS_IOU = 0.2, 0.25, 0.45  # nudenet's thresholds


def session_options(threads: int | None):
    """ONNX Runtime options sized to the worker: ``threads`` intra-op threads (the Ray actor's
    ``num_cpus``; more threads than CPUs granted only fight the other actors on the node), no
    inter-op parallelism and no spin-waiting (spinning threads burn the CPUs other actors were
    given while this one waits for its next batch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)  # Ray sets it to the actor's CPUs
    opts.intra_op_num_threads = max(0, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class NsfwDetector:
    """nudenet's 320n model run on a whole batch at once, with vectorised pre/post-processing."""

    def __init__(
        self, model_path: str | None = None, providers: list[str] | None = None, resolution: int = 320, threads: int | None = None
    ):
        import nudenet
        import onnxruntime as ort

        path = model_path or os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        self.session = ort.InferenceSession(path, session_options(threads), providers=providers or ort.get_available_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.resolution = resolution
        self._buf = np.zeros((0, resolution, resolution, 3), np.uint8)
        self._blob = np.zeros((0, 3, resolution, resolution), np.float32)

    def preprocess(self, rgbs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox each RGB image (pad right/bottom to a square, as nudenet) into an ``S x S``
        batch; returns the NCHW float32 blob (BGR, 0..1) and each image's square side in pixels."""
        import cv2

        s = self.resolution
        n = len(rgbs)
        if self._buf.shape[0] < n:
            self._buf = np.zeros((n, s, s, 3), np.uint8)
        buf = self._buf[:n]
        buf.fill(0)
        sides = np.empty(n, np.float32)
        for i, x in enumerate(rgbs):
            h, w = x.shape[:2]
            m = max(h, w)
            sides[i] = m
            if m == s:
                buf[i, :h, :w] = x
                continue
            # what nudenet's pad-to-square + resize does, in one pass over the unpadded image:
            # dst = k * src + (k - 1) / 2 (pixel-centre convention of cv2.resize), zeros outside
            k = s / m
            mat = np.float32([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]])
            cv2.warpAffine(x, mat, (s, s), dst=buf[i], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # nudenet feeds the network BGR (its cvtColor(RGBA2BGR) on a BGR image swaps to RGB and
        # blobFromImage(swapRB=True) swaps back): same channel order here. One contiguous plane
        # per channel into a reused float buffer (a strided astype of the whole batch is 5x slower).
        if self._blob.shape[0] < n:
            self._blob = np.empty((n, 3, s, s), np.float32)
        blob = self._blob[:n]
        for c in range(3):
            np.multiply(buf[..., 2 - c], np.float32(1.0 / 255.0), out=blob[:, c], dtype=np.float32, casting="unsafe")
        return blob, sides

    def postprocess(self, out: np.ndarray, side: float, width: int, height: int) -> list[dict]:
        """One image's raw output (4 + classes, anchors) -> nudenet-style detections."""
        import cv2

        o = out.T  # anchors x (cx, cy, w, h, class scores...)
        cls = o[:, 4:]
        best = cls.max(axis=1)
        keep = np.flatnonzero(best >= SCORE_MIN)
        if keep.size == 0:
            return []
        o, best, cid = o[keep], best[keep], cls[keep].argmax(axis=1)
        f = np.float32(side / self.resolution)
        x = np.clip((o[:, 0] - o[:, 2] / 2) * f, 0, width)
        y = np.clip((o[:, 1] - o[:, 3] / 2) * f, 0, height)
        w = np.minimum(o[:, 2] * f, width - x)
        h = np.minimum(o[:, 3] * f, height - y)
        boxes = np.stack([x, y, w, h], axis=1)
        idx = cv2.dnn.NMSBoxes(boxes.tolist(), best.tolist(), NMS_SCORE, NMS_IOU)
        return [
            {"class": LABELS[int(cid[i])], "score": float(best[i]), "box": [int(v) for v in boxes[i]]} for i in np.asarray(idx, int).ravel()
        ]

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[dict]]:
        if not rgbs:
            return []
        blob, sides = self.preprocess(rgbs)
        out = self.session.run(None, {self.input_name: blob})[0]
        return [self.postprocess(out[j], float(sides[j]), x.shape[1], x.shape[0]) for j, x in enumerate(rgbs)]


def score_of(detections: list[dict]) -> tuple[float, list[str]]:
    hits = [d for d in detections if d["class"] in NSFW_CLASSES]
    return (max((float(d["score"]) for d in hits), default=0.0), sorted({d["class"] for d in hits}))


def nsfw_columns(results: list, detector: NsfwDetector) -> dict[str, list]:
    ok = [i for i, r in enumerate(results) if isinstance(r, Decoded)]
    dets = detector.detect_batch([results[i].array for i in ok])
    score: list = [None] * len(results)
    labels: list = [None] * len(results)
    for i, d in zip(ok, dets):
        score[i], labels[i] = score_of(d)
    return {"prof_nsfw": score, "prof_nsfw_labels": labels}
