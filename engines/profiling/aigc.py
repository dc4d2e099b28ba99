"""AI-generated-image detector: a transformers image classifier from a local folder (stage ``prof_aigc``).

Any ``AutoModelForImageClassification`` architecture (ViT, ConvNeXt, Swin, ...) fine-tuned to tell
generated images from photos. ``prof_aigc`` is the probability of the "AI-generated" class: the
labels of ``config.id2label`` whose words include fake / ai / aigc / generated / synthetic /
artificial (and none of not / non / real / human / authentic / natural), or the ones named in
``ai_labels``. Single-label models: the softmax summed over those labels; multi-label models
(``problem_type: multi_label_classification``) and one-logit models: the largest sigmoid. A model
with no such label is refused before any worker starts, with the labels it has.

``save_tiny_classifier`` writes a tiny randomly initialised ViT classifier (tests, demos), marked as
random weights (``hf_local.save_random``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from engines.profiling.hf_local import (
    SEED,
    TINY_VISION,
    ModelDirError,
    check_model_dir,
    decoded_indices,
    load_with_processor,
    pixel_values,
    save_random,
)

__all__ = ["AI_WORDS", "ai_label_ids", "check_detector_dir", "AigcDetector", "aigc_column", "save_tiny_classifier"]

AI_WORDS = frozenset({"fake", "ai", "aigc", "generated", "synthetic", "artificial"})
NOT_AI_WORDS = frozenset({"not", "non", "real", "human", "authentic", "natural", "genuine"})


def _words(label: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(label))  # AiGenerated -> Ai Generated
    return set(re.findall(r"[a-z0-9]+", spaced.lower()))


def ai_label_ids(id2label: dict[Any, str], names: list[str] | None = None, *, what: str = "model") -> list[int]:
    """Class indices that mean "AI-generated": ``names`` when given (each must be a label), else the
    labels matched by name. Raises ``ModelDirError`` listing the model's labels when none match."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    if names:
        missing = [n for n in names if n not in labels.values()]
        if missing:
            raise ModelDirError(f"{what}: ai_labels {missing} are not labels of the model; its labels: {sorted(labels.values())}")
        return sorted(i for i, v in labels.items() if v in names)
    ids = sorted(i for i, v in labels.items() if _words(v) & AI_WORDS and not _words(v) & NOT_AI_WORDS)
    if not ids:
        raise ModelDirError(
            f"{what}: no label of the model means AI-generated (none matches fake|ai|generated|synthetic); its labels: "
            f"{sorted(labels.values())}. Use a detector whose config.id2label names the generated class, or set ai_labels"
        )
    return ids


def check_detector_dir(path: str | None, ai_labels: list[str] | None = None, what: str = "model") -> dict[str, Any]:
    """The folder's config after checking that it holds an image classifier with an AI label."""
    data = check_model_dir(path, what)
    archs = data.get("architectures") or []
    if archs and not any(a.endswith("ForImageClassification") for a in archs):
        raise ModelDirError(f"{what}: {path} holds {', '.join(archs)}; this stage needs an image classifier (*ForImageClassification)")
    ai_label_ids(data.get("id2label") or {}, ai_labels, what=what)
    return data


class AigcDetector:
    """``predict(images) -> float32 array``: probability that each image is AI-generated."""

    def __init__(self, path: str, *, device: str = "cpu", ai_labels: list[str] | None = None, what: str = "model"):
        import transformers as tf

        check_detector_dir(path, ai_labels, what)
        self.device = device
        self.model, self.processor = load_with_processor(tf.AutoModelForImageClassification, path, device)
        cfg = self.model.config
        self.ids = ai_label_ids(cfg.id2label, ai_labels, what=what)
        self.labels = [cfg.id2label[i] for i in self.ids]
        self.sigmoid = cfg.num_labels == 1 or getattr(cfg, "problem_type", None) == "multi_label_classification"

    def predict(self, images: list) -> np.ndarray:
        import torch

        if not images:
            return np.zeros(0, np.float32)
        px = pixel_values(self.processor, images, self.device)
        with torch.inference_mode():
            logits = self.model(pixel_values=px).logits.float()
        if self.sigmoid:
            p = torch.sigmoid(logits[:, self.ids]).amax(dim=1)
        else:
            p = torch.softmax(logits, dim=-1)[:, self.ids].sum(dim=1)
        return p.clamp(0, 1).cpu().numpy().astype(np.float32)


def aigc_column(results: list, detector: AigcDetector) -> list:
    """``prof_aigc`` for decoded rows (``Decoded`` / ``DecodeFailure``); null where no image."""
    ok = decoded_indices(results)
    out: list = [None] * len(results)
    for i, p in zip(ok, detector.predict([results[i].rgb for i in ok])):
        out[i] = float(p)
    return out


def save_tiny_classifier(directory: str | Path, labels: tuple[str, ...] = ("real", "fake"), *, seed: int = SEED) -> Path:
    """A tiny randomly initialised ``ViTForImageClassification`` (hidden 32, 2 layers, 32 px) with
    ``labels`` saved to ``directory`` with the random-weights marker."""
    import torch
    import transformers as tf

    config = tf.ViTConfig(
        **TINY_VISION,
        id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = tf.ViTForImageClassification(config)
    return save_random(model, directory, tf.ViTImageProcessorPil(size={"height": 32, "width": 32}))
