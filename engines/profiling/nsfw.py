"""NSFW score from nudenet's exposed-body-part detector (its 320n ONNX model ships in the wheel).

The detector finds body parts with a class and a confidence; the row's NSFW score is the highest
confidence among the *exposed intimate* classes (0 when none), which is what a safety filter
thresholds. The classes found are kept so a reviewer sees why. Batched: one ONNX run per batch.
"""

from __future__ import annotations

import os

import numpy as np

from engines.profiling.decode import Decoded

__all__ = ["NSFW_CLASSES", "NsfwDetector", "nsfw_columns"]

NSFW_CLASSES = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})


class NsfwDetector:
    """nudenet's model with nudenet's own pre/post-processing, run on a whole batch at once."""

    def __init__(self, model_path: str | None = None, providers: list[str] | None = None, resolution: int = 320):
        import nudenet
        import onnxruntime as ort

        path = model_path or os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        self.session = ort.InferenceSession(path, opts, providers=providers or ort.get_available_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.resolution = resolution

    def preprocess(self, rgb: np.ndarray):
        from nudenet.nudenet import _read_image

        return _read_image(np.ascontiguousarray(rgb[:, :, ::-1]), self.resolution)  # nudenet reads BGR (cv2)

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[dict]]:
        from nudenet.nudenet import _postprocess

        if not rgbs:
            return []
        pre = [self.preprocess(x) for x in rgbs]
        out = self.session.run(None, {self.input_name: np.vstack([p[0] for p in pre])})[0]
        return [
            _postprocess([out[j : j + 1]], p[3], p[4], p[1], p[2], p[5], p[6], self.resolution, self.resolution)
            for j, p in enumerate(pre)
        ]


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
