"""The BLIP instruction plug-in for mined pairs (``engines.pairs.instruct:blip``): it loads a real
``BlipForConditionalGeneration`` folder, captions both images and asks for what the target shows;
a folder of random weights (the tiny test model) gives no instruction, so nothing made up trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.pairs.instruct import blip, instruction_from_captions
from engines.pairs.mine import load_instructor
from engines.profiling.hf_local import RANDOM_MARKER
from engines.profiling.vlm import save_tiny_blip


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "caption")


def _photos(coco_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    a, b = sorted((coco_dir / "images").glob("*.jpg"))[:2]
    return np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB"))


def test_instruction_from_captions():
    assert (
        instruction_from_captions("a red bus on a street", "a blue bus on a street.")
        == "Change the picture so that it shows a blue bus on a street."
    )
    assert instruction_from_captions("A dog on grass.", "a dog on grass") is None  # the model saw no difference
    assert instruction_from_captions("", "a cat") is None and instruction_from_captions("a cat", None) is None


def test_random_weights_give_no_instruction(tiny_blip, coco_dir):
    src, tgt = _photos(coco_dir)
    fn = load_instructor("engines.pairs.instruct:blip", model=str(tiny_blip))
    assert fn(src, tgt, "x", "y", None) == (None, None)
    with pytest.raises(ValueError, match="--instructor-model"):
        blip(src, tgt, "x", "y", None)


def test_a_model_folder_is_loaded_and_captions_both_images(tiny_blip, coco_dir, tmp_path):
    """The same tiny BLIP without the random-weights marker stands in for a real captioning folder:
    the plug-in loads it through ``BlipCaptioner`` and captions both images. Its (meaningless)
    captions are only checked for shape: an instruction from them, or None when they agree."""
    import shutil

    real = tmp_path / "unmarked"
    shutil.copytree(tiny_blip, real)
    cfg = json.loads((real / "config.json").read_text())
    cfg.pop(RANDOM_MARKER)
    (real / "config.json").write_text(json.dumps(cfg))
    src, tgt = _photos(coco_dir)
    en, zh = blip(src, tgt, None, None, None, model=str(real))
    assert zh is None and (en is None or en.startswith("Change the picture so that it shows "))
    from engines.pairs.instruct import _captioner

    assert type(_captioner(str(real))).__name__ == "BlipCaptioner" and _captioner(str(tiny_blip)) is None
