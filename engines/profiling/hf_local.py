"""Transformers models from a local folder, for the plug-in profiling models (``vlm.py``, ``aigc.py``).

A model folder is what ``save_pretrained`` writes (``config.json`` + weights) next to the image
processor's ``preprocessor_config.json`` and, for text models, the tokenizer files. Nothing is
ever downloaded: ``check_model_dir`` says what is wrong with a path before any worker starts.

Random weights: a tiny randomly initialised model saved by ``save_random`` carries
``"zcurate": {"random_weights": true}`` in its ``config.json`` (the same marker ``save_open_clip``
writes into ``open_clip_config.json``, read by ``embed.weights_are_random``), so a stage that loads
it records ``random_weights: true`` in ``profiling/models.json``; the report and every consumer
that asks ``engines.vector.retrieval.check_random_weights`` then refuse or flag its columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.errors import UserError

__all__ = [
    "ModelDirError",
    "RANDOM_MARKER",
    "SEED",
    "check_model_dir",
    "hf_weights_are_random",
    "describe_model_dir",
    "model_record",
    "save_random",
    "torch_device",
    "TINY_VISION",
    "tiny_text",
    "load_with_processor",
    "pixel_values",
    "decoded_indices",
]

SEED = 1234
RANDOM_MARKER = "zcurate"  # config.json key: {"random_weights": true, "seed": SEED}
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
"""The vision tower of every tiny random test model (ViT/BLIP/CLIP): one size, so they run alike."""


def tiny_text(tok: Any, max_positions: int, **extra: Any) -> dict[str, Any]:
    """The text tower of the tiny random test models, sized to the tokenizer ``tok`` (the MiniLM
    WordPiece one that ships offline): one definition, so CLIP and BLIP test models stay alike."""
    base = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return {**base, "max_position_embeddings": max_positions, "pad_token_id": tok.pad_token_id, **extra}


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelDirError(UserError, ValueError):
    """A configured model path is not a usable local transformers model folder (says why)."""


def check_model_dir(path: str | None, what: str, architectures: tuple[str, ...] = (), *, tokenizer: bool = False) -> dict[str, Any]:
    """The ``config.json`` of the model folder ``path``, after checking that it holds a model of one
    of ``architectures`` with weights, an image processor and (``tokenizer``) a tokenizer. Raises
    ``ModelDirError`` naming ``what`` (the config field), the path and what is missing."""
    layout = "a local transformers model folder as written by save_pretrained (config.json, model.safetensors, preprocessor_config.json"
    layout += ", tokenizer files)" if tokenizer else ")"
    if not path:
        raise ModelDirError(f"{what}: no model path configured; set it to {layout}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelDirError(f"{what}: {path} does not exist; set it to {layout}; nothing is downloaded")
    if not p.is_dir():
        raise ModelDirError(f"{what}: {path} is a file; set it to {layout}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelDirError(f"{what}: {path} has no model (no config.json); set it to {layout}")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{what}: {cfg_file} is not readable JSON ({e})") from None
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ModelDirError(f"{what}: {path} has config.json but no weights ({' / '.join(WEIGHT_FILES[::2])})")
    archs = data.get("architectures") or []
    if architectures and not set(archs) & set(architectures):
        got = ", ".join(archs) or f"model_type {data.get('model_type')!r}"
        raise ModelDirError(f"{what}: {path} holds {got}; this stage needs {' or '.join(architectures)}")
    if not (p / "preprocessor_config.json").is_file():
        raise ModelDirError(f"{what}: {path} has no preprocessor_config.json (save the image processor next to the model)")
    if tokenizer and not any((p / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise ModelDirError(f"{what}: {path} has no tokenizer files (save the tokenizer next to the model)")
    return data


def hf_weights_are_random(path: str | None) -> bool:
    """True when the folder's ``config.json`` carries the random-weights marker (``save_random``)."""
    if not path:
        return False
    try:
        data = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool((data.get(RANDOM_MARKER) or {}).get("random_weights"))


def describe_model_dir(kind: str, path: str) -> str:
    what = f"{kind}:{path}"
    return what + " (RANDOM weights saved to a folder)" if hf_weights_are_random(path) else what


def model_record(kind: str, path: str, backend: str) -> dict[str, Any]:
    """What ``profiling/models.json`` says about one model (``{model, backend, random_weights}``)."""
    return {"model": describe_model_dir(kind, path), "backend": backend, "random_weights": hf_weights_are_random(path)}


def save_random(model: Any, directory: str | Path, *parts: Any) -> Path:
    """Save a randomly initialised ``model`` (and its image processor / tokenizer ``parts``) with
    ``save_pretrained``, marking the config so that whoever loads the folder is told."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    setattr(model.config, RANDOM_MARKER, {"random_weights": True, "seed": SEED})
    model.save_pretrained(str(d))
    for part in parts:
        part.save_pretrained(str(d))
    if not hf_weights_are_random(str(d)):  # a transformers version that drops unknown config keys
        data = json.loads((d / "config.json").read_text())
        data[RANDOM_MARKER] = {"random_weights": True, "seed": SEED}
        (d / "config.json").write_text(json.dumps(data, indent=2))
    return d


def torch_device(num_gpus: float, num_cpus: float | None = None) -> str:
    """``cuda`` when the worker was given a GPU, else ``cpu`` with torch's intra-op threads sized
    to the CPUs Ray granted it (``num_cpus``), not every core of the node."""
    import torch

    if num_gpus > 0 and torch.cuda.is_available():
        return "cuda"
    if num_cpus is not None:
        torch.set_num_threads(max(1, round(num_cpus)))
    return "cpu"


def load_with_processor(model_cls: Any, path: str, device: str):
    """``(model in eval mode on device, its PIL image processor)`` from a checked local folder:
    the PIL backend, so no torchvision is needed."""
    import transformers as tf

    model = model_cls.from_pretrained(path).eval().to(device)
    return model, tf.AutoImageProcessor.from_pretrained(path, backend="pil")


def pixel_values(processor: Any, images: list, device: str):
    """The processor's ``pixel_values`` tensor for ``images`` on ``device``."""
    return processor(images=images, return_tensors="pt")["pixel_values"].to(device)


def decoded_indices(results: list) -> list[int]:
    """Positions of the rows that decoded (``Decoded``, not ``DecodeFailure``): only they get a value."""
    from engines.profiling.decode import Decoded

    return [i for i, r in enumerate(results) if isinstance(r, Decoded)]
