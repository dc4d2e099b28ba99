"""An instruction plug-in for mined pairs backed by a real model: BLIP captions of source and target.

    curate pairs mine --dataset DS --instructor engines.pairs.instruct:blip \\
        --instructor-model /models/blip-image-captioning-base

Why captions of the two images, not the dataset's: a crawl's alt text rarely says what changed
between two shots, while a captioner describes what each image shows now. The instruction asks
for what the target shows (``instruction_from_captions``); when the two captions agree the model
saw no difference it can name, and the pair gets no instruction rather than a vague one. The
captioner is ``engines.profiling.vlm.BlipCaptioner`` from a local folder (the ``prof_vlm`` loader:
any ``BlipForConditionalGeneration`` saved with ``save_pretrained``), loaded once per worker.

Random weights never become instructions: a folder with the random-weights marker (the tiny test
models of ``save_tiny_blip``) makes the plug-in return ``(None, None)``, so the pair says
``instruction_source=plugin-none:...`` and trains on no made-up text. Chinese instructions would
need a translation model; none ships offline, so ``zh`` stays None.
"""

from __future__ import annotations

import os
import re
from functools import cache
from typing import Any

import numpy as np

__all__ = ["MODEL_ENV", "blip", "instruction_from_captions"]

MODEL_ENV = "ZCURATE_INSTRUCTOR_MODEL"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def instruction_from_captions(source_caption: str | None, target_caption: str | None) -> str | None:
    """``Change the picture so that it shows <target caption>.``, or None when either caption is
    empty or the two say the same (up to case and punctuation)."""
    if not source_caption or not target_caption or _norm(source_caption) == _norm(target_caption):
        return None
    tgt = target_caption.strip().rstrip(".")
    return f"Change the picture so that it shows {tgt}."


@cache
def _captioner(path: str) -> Any:
    """The worker's one captioner, or None for random weights (their output must not be used)."""
    from engines.profiling.hf_local import hf_weights_are_random
    from engines.profiling.vlm import BlipCaptioner

    if hf_weights_are_random(path):
        return None
    return BlipCaptioner(path)


def blip(
    source_rgb: np.ndarray,
    target_rgb: np.ndarray,
    source_caption: str | None,
    target_caption: str | None,
    score: Any,
    model: str | None = None,
):
    """The plug-in (``engines.pairs.mine.load_instructor``): ``(instruction_en, None)``. ``model``:
    the BLIP folder (``--instructor-model``), else the ``ZCURATE_INSTRUCTOR_MODEL`` variable."""
    path = model or os.environ.get(MODEL_ENV)
    if not path:
        raise ValueError(f"engines.pairs.instruct:blip needs --instructor-model (or {MODEL_ENV}): a local BLIP captioning folder")
    captioner = _captioner(path)
    if captioner is None:
        return None, None
    from PIL import Image

    src_cap, tgt_cap = captioner.caption([Image.fromarray(source_rgb), Image.fromarray(target_rgb)])
    return instruction_from_captions(src_cap, tgt_cap), None
