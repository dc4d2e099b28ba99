"""Captioner and vision-language verifier: BLIP from local folders (stage ``prof_vlm``).

- captioner: ``BlipForConditionalGeneration`` (e.g. Salesforce/blip-image-captioning-base saved to
  a folder) writes ``prof_vlm_caption``, a generated caption (greedy or beam search);
- verifier: ``BlipForImageTextRetrieval`` (e.g. Salesforce/blip-itm-base-coco) scores the row's
  own caption against the image with its ITM head: ``prof_vlm_match`` = P(match) in [0, 1].

Either or both may be configured; a column whose model is not configured stays null. Images go
through the folder's image processor with the PIL backend (no torchvision), text through its
tokenizer. ``save_tiny_blip`` writes a tiny randomly initialised model of either class (tests,
demos), marked as random weights (``hf_local.save_random``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.profiling.hf_local import (
    SEED,
    TINY_VISION,
    check_model_dir,
    decoded_indices,
    load_with_processor,
    pixel_values,
    save_random,
    tiny_text,
)

__all__ = [
    "CAPTION_ARCH",
    "MATCH_ARCH",
    "BlipCaptioner",
    "BlipMatcher",
    "vlm_columns",
    "save_tiny_blip",
]

CAPTION_ARCH = "BlipForConditionalGeneration"
MATCH_ARCH = "BlipForImageTextRetrieval"


def _load_parts(path: str, what: str, arch: str, model_cls: Any, device: str):
    import transformers as tf

    check_model_dir(path, what, (arch,), tokenizer=True)
    model, processor = load_with_processor(model_cls, path, device)
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    return model, processor, tokenizer


class BlipCaptioner:
    """``caption(images) -> list[str]`` with a BLIP captioning model from a local folder."""

    def __init__(self, path: str, *, device: str = "cpu", max_new_tokens: int = 30, num_beams: int = 1, what: str = "caption_model"):
        import transformers as tf

        self.device = device
        self.model, self.processor, self.tokenizer = _load_parts(path, what, CAPTION_ARCH, tf.BlipForConditionalGeneration, device)
        self.gen = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": False}

    def caption(self, images: list) -> list[str]:
        import torch

        if not images:
            return []
        px = pixel_values(self.processor, images, self.device)
        with torch.inference_mode():
            ids = self.model.generate(pixel_values=px, **self.gen)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class BlipMatcher:
    """``match(images, texts) -> float32 array``: BLIP's image-text matching probability."""

    def __init__(self, path: str, *, device: str = "cpu", max_text_tokens: int = 64, what: str = "match_model"):
        import transformers as tf

        self.device = device
        self.model, self.processor, self.tokenizer = _load_parts(path, what, MATCH_ARCH, tf.BlipForImageTextRetrieval, device)
        self.max_len = min(max_text_tokens, int(self.model.config.text_config.max_position_embeddings))

    def match(self, images: list, texts: list[str]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros(0, np.float32)
        px = pixel_values(self.processor, images, self.device)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
                pixel_values=px,
                use_itm_head=True,
            )
        logits = out.itm_score if hasattr(out, "itm_score") else out[0]
        return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy().astype(np.float32)


def vlm_columns(results: list, texts: list[str | None], captioner: BlipCaptioner | None, matcher: BlipMatcher | None) -> dict[str, list]:
    """``prof_vlm_caption`` / ``prof_vlm_match`` for decoded rows (``Decoded`` / ``DecodeFailure``)
    and each row's caption (None = no caption: no match score). Null where the image did not
    decode or the model is not configured."""
    n = len(results)
    ok = decoded_indices(results)
    caps: list = [None] * n
    match: list = [None] * n
    if captioner is not None:
        for i, c in zip(ok, captioner.caption([results[i].rgb for i in ok])):
            caps[i] = c
    if matcher is not None:
        rows = [i for i in ok if texts[i]]
        for i, p in zip(rows, matcher.match([results[i].rgb for i in rows], [texts[i] for i in rows])):
            match[i] = float(p)
    return {"prof_vlm_caption": caps, "prof_vlm_match": match}


def save_tiny_blip(directory: str | Path, kind: str = "caption", *, seed: int = SEED) -> Path:
    """A tiny randomly initialised BLIP of the real class (``kind`` caption or match: hidden 32,
    2 layers, 32 px images, the MiniLM WordPiece tokenizer that ships offline) saved to
    ``directory`` with the random-weights marker: the folder loads like a real BLIP folder."""
    import torch
    import transformers as tf

    from engines.profiling.embed import minilm_path

    if kind not in ("caption", "match"):
        raise ValueError(f"kind must be caption or match, not {kind!r}")
    tok = tf.AutoTokenizer.from_pretrained(minilm_path())
    ids = dict(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, sep_token_id=tok.sep_token_id)
    text = tiny_text(tok, 64, encoder_hidden_size=32, **ids)
    config = tf.BlipConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(seed)
    model = (tf.BlipForConditionalGeneration if kind == "caption" else tf.BlipForImageTextRetrieval)(config)
    processor = tf.BlipImageProcessorPil(size={"height": 32, "width": 32})
    return save_random(model, directory, processor, tok)
