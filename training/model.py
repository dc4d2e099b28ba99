"""S3-DiT: the single-stream diffusion transformer of Z-Image (arXiv 2511.22699, section 4.1).

Read top to bottom it is the math of the report:

* a caption embedder (RMSNorm + Linear) maps text-encoder features to the model width, a patch
  embedder maps 2x2 patches of 16-channel VAE latents to the same width;
* each modality is refined by its own blocks (``noise_refiner`` for the image, timestep-modulated;
  ``context_refiner`` for the text, unmodulated);
* per sample, image and text tokens are concatenated into one stream that the main blocks process
  with full attention (the "single stream");
* positions are 3D unified RoPE over (t, h, w): text token k sits at (k, 0, 0) for k = 1..L and image
  token (h, w) at (L + 1, h, w), so text and image never share a position and the image grid keeps
  its 2D structure;
* blocks are pre+post ("sandwich") RMSNorm around attention and a SwiGLU MLP, RMS QK-norm, and an
  adaLN that gives only a scale and a tanh gate per branch (no shift), projected from one shared
  low-rank (256-d) timestep embedding; the projections start at zero, so a fresh block is the
  identity on its residual stream;
* every segment is padded to a multiple of 32 tokens with a learned pad token (``x_pad_token`` /
  ``cap_pad_token``); samples of different lengths in one batch are either packed into one
  sequence with attention kept inside each sample (``packing``, the default; ``training.packing``)
  or padded further and masked out of attention.

Parameter names and shapes follow the released checkpoint (``layers.N.attention.to_q`` ...), so the
released safetensors load with :func:`load_safetensors` and the model matches diffusers'
``ZImageTransformer2DModel`` output for the same weights (tested). The timestep convention is the
released one: ``t = 0`` is pure noise, ``t = 1`` is data; the model predicts the velocity
``data - noise`` (see ``training.flow``).

Two orderings are worth knowing: positions put the text first, but the stream holds the image
segment first and the text after it, as the released code does (attention does not care about the
storage order, only about positions and the mask); and L above is the caption length after
padding to 32 (the pad tokens take positions L_real + 1 .. L).
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from training.packing import Packed, check_sources, image_segment, pack_layout, resolve_backend

__all__ = [
    "S3DiTConfig",
    "tiny",
    "small",
    "z_image_6b",
    "CONFIGS",
    "S3DiT",
    "Layout",
    "make_layout",
    "patchify",
    "unpatchify",
    "rope_cos_sin",
    "load_safetensors",
    "config_from_diffusers",
    "param_count",
    "flops_per_sample",
]


@dataclass(frozen=True)
class S3DiTConfig:
    in_channels: int = 16  # Flux VAE latent channels
    patch_size: int = 2  # 2x2 latent patches: one token per 16x16 pixels
    dim: int = 3840
    n_layers: int = 30  # main single-stream blocks
    n_refiner_layers: int = 2  # per modality (noise refiner, context refiner)
    n_heads: int = 30
    n_kv_heads: int = 30
    cap_feat_dim: int = 2560  # Qwen3-4B hidden size
    norm_eps: float = 1e-5
    qk_norm: bool = True
    rope_theta: float = 256.0
    axes_dims: tuple[int, int, int] = (32, 48, 48)  # head_dim split over (t, h, w)
    axes_lens: tuple[int, int, int] = (1024, 512, 512)  # released table sizes (positions used must stay below)
    t_scale: float = 1000.0  # t in [0, 1] is embedded as t * 1000
    adaln_dim: int = 256  # the shared low-rank timestep embedding (min(dim, 256) when released)
    t_mid_dim: int = 1024  # hidden width of the timestep MLP
    seq_multiple: int = 32  # segments are padded to this many tokens
    packing: bool = True  # samples of a batch in one sequence, attention per sample (training.packing)
    attn_backend: str = "auto"  # packed attention: auto | varlen | flex | sdpa (training.packing)

    def __post_init__(self):
        if self.dim % self.n_heads or self.dim // self.n_heads != sum(self.axes_dims):
            raise ValueError(f"head dim {self.dim}/{self.n_heads} must equal sum(axes_dims)={sum(self.axes_dims)}")
        if any(d % 2 for d in self.axes_dims):
            raise ValueError(f"every RoPE axis needs an even width, got {self.axes_dims}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        resolve_backend(self.attn_backend)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)  # SwiGLU hidden width, as released (10240 at dim 3840)

    @property
    def patch_key(self) -> str:
        return f"{self.patch_size}-1"  # released ModuleDict key: "<patch>-<frame patch>"


def tiny(**kw) -> S3DiTConfig:
    """A few hundred thousand parameters: tests and CPU smoke runs."""
    base = dict(
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,
        axes_dims=(8, 12, 12),
        axes_lens=(256, 64, 64),
        adaln_dim=64,
    )
    return S3DiTConfig(**{**base, **kw})


def small(**kw) -> S3DiTConfig:
    """About 0.5B parameters: 128-wide heads like the released model, Qwen3-4B text features."""
    return S3DiTConfig(**{**dict(dim=1536, n_layers=16, n_refiner_layers=2, n_heads=12, n_kv_heads=12), **kw})


def z_image_6b(**kw) -> S3DiTConfig:
    """The released Z-Image configuration (about 6.15B parameters)."""
    return S3DiTConfig(**kw)


CONFIGS = {"tiny": tiny, "small": small, "6b": z_image_6b}


# ----------------------------------------------------------------------------- layout of a batch


@dataclass
class Layout:
    """Where every token of a mixed batch lives: per-segment padded lengths, positions and masks.

    Pure integer bookkeeping computed once per forward from the image grids and caption lengths;
    tests read it to check positions and masks."""

    grids: list[tuple[int, int]]  # (h, w) image tokens per sample
    cap_lens: list[int]  # real caption tokens per sample
    img_len: list[int]  # image segment length, padded to the multiple
    cap_len: list[int]  # caption segment length, padded to the multiple
    img_pos: torch.Tensor  # (B, max img_len, 3) int64 (t, h, w)
    cap_pos: torch.Tensor  # (B, max cap_len, 3)
    img_pad: torch.Tensor  # (B, max img_len) bool: learned pad token here
    cap_pad: torch.Tensor  # (B, max cap_len) bool
    uni_index: torch.Tensor  # (B, max uni_len) into cat(img.flatten, cap.flatten, [zero row])
    uni_pos: torch.Tensor  # (B, max uni_len, 3)
    img_real: torch.Tensor | None = None  # rows of img.flatten holding patch tokens (target, then source)

    @property
    def uni_len(self) -> list[int]:
        return [a + b for a, b in zip(self.img_len, self.cap_len)]

    @staticmethod
    def key_mask(lengths: list[int], width: int, device) -> torch.Tensor | None:
        """(B, 1, 1, width) bool attention mask over keys, or None when no sample is padded."""
        if all(n == width for n in lengths):
            return None
        idx = torch.arange(width, device=device)
        return (idx[None, :] < torch.tensor(lengths, device=device)[:, None])[:, None, None, :]


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def make_layout(
    grids: list[tuple[int, int]],
    cap_lens: list[int],
    multiple: int = 32,
    device=None,
    src_grids: list[tuple[int, int] | None] | None = None,
) -> Layout:
    """Positions and masks for a batch of image grids (h, w tokens) and caption lengths, with the
    source grids of editing samples (omni mode: ``training.packing.image_segment``)."""
    if len(grids) != len(cap_lens):
        raise ValueError(f"{len(grids)} images but {len(cap_lens)} captions")
    if any(n < 1 for n in cap_lens):
        raise ValueError("every caption needs at least one token (use the null caption for unconditional samples)")
    B = len(grids)
    cap_len = [_ceil(n, multiple) for n in cap_lens]
    segs = [image_segment(g, sg, lc, multiple) for g, sg, lc in zip(grids, check_sources(grids, src_grids), cap_len)]
    img_len = [seg[0] for seg in segs]
    NI, NC = max(img_len), max(cap_len)
    img_pos = torch.zeros(B, NI, 3, dtype=torch.long)
    cap_pos = torch.zeros(B, NC, 3, dtype=torch.long)
    img_pad = torch.zeros(B, NI, dtype=torch.bool)
    cap_pad = torch.zeros(B, NC, dtype=torch.bool)
    NU = max(a + b for a, b in zip(img_len, cap_len))
    sentinel = B * (NI + NC)
    uni_index = torch.full((B, NU), sentinel, dtype=torch.long)
    uni_pos = torch.zeros(B, NU, 3, dtype=torch.long)
    img_real = []
    for b, n in enumerate(cap_lens):
        Lc, Li = cap_len[b], img_len[b]
        cap_pos[b, :Lc, 0] = torch.arange(1, Lc + 1)  # text at (1..L, 0, 0), pads included
        cap_pad[b, n:Lc] = True
        rows = segs[b][1]
        img_pos[b, rows] = segs[b][2]  # image at (L + 1, h, w); omni: source there, target at L + 2
        img_pad[b, :Li] = True
        img_pad[b, rows] = False  # pad tokens keep position (0, 0, 0)
        img_real.append(b * NI + rows)
        uni_index[b, :Li] = b * NI + torch.arange(Li)
        uni_index[b, Li : Li + Lc] = B * NI + b * NC + torch.arange(Lc)
        uni_pos[b, :Li] = img_pos[b, :Li]
        uni_pos[b, Li : Li + Lc] = cap_pos[b, :Lc]
    lay = Layout(list(grids), list(cap_lens), img_len, cap_len, img_pos, cap_pos, img_pad, cap_pad, uni_index, uni_pos, torch.cat(img_real))
    if device is not None:
        for f in ("img_pos", "cap_pos", "img_pad", "cap_pad", "uni_index", "uni_pos", "img_real"):
            setattr(lay, f, getattr(lay, f).to(device, non_blocking=True))
    return lay


# ----------------------------------------------------------------------------- patches and RoPE


def patchify(lat: torch.Tensor, p: int) -> torch.Tensor:
    """(C, H, W) latent -> (H/p * W/p, p*p*C) tokens, row-major over the grid, features (ph, pw, c)."""
    C, H, W = lat.shape
    if H % p or W % p:
        raise ValueError(f"latent {H}x{W} is not divisible by the patch size {p}")
    return lat.view(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape((H // p) * (W // p), p * p * C)


def unpatchify(tok: torch.Tensor, grid: tuple[int, int], p: int, C: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for the first h*w tokens."""
    h, w = grid
    return tok[: h * w].view(h, w, p, p, C).permute(4, 0, 2, 1, 3).reshape(C, h * p, w * p)


def rope_cos_sin(pos: torch.Tensor, axes_dims, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotation angles for integer positions (..., 3) -> (..., head_dim/2) each.

    Each axis gets its own frequency ladder theta^(-2i/d_axis); the angle is computed in float64
    and rounded once, as the released tables are, so results match them to float32 precision."""
    angles = []
    for a, d in enumerate(axes_dims):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d))
        angles.append((pos[..., a : a + 1].double() * inv).float())
    ang = torch.cat(angles, dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of every head by the angle of its position.
    x: (B, S, H, D); cos/sin: (B, S, D/2). Computed in float32 like the reference."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).type_as(x)


# ----------------------------------------------------------------------------- blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # weight in the input's dtype: under bf16 autocast this keeps the fused kernel
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: S3DiTConfig):
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.to_q = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.to_k = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.to_v = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)])
        self.norm_q = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.norm_k = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x, mask, cos, sin):
        q = self.to_q(x).unflatten(-1, (self.n_heads, -1))
        k = self.to_k(x).unflatten(-1, (self.n_kv, -1))
        v = self.to_v(x).unflatten(-1, (self.n_kv, -1))
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v, gqa = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.n_kv != self.n_heads
        if isinstance(mask, Packed):  # one packed sequence: attention inside each sample
            o = mask.attend(q, k, v, gqa)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.to_out[0](o.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Sandwich-norm block. With modulation: x += tanh(g) * norm2(f(norm1(x) * (1 + s)))."""

    def __init__(self, cfg: S3DiTConfig, modulation: bool = True):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)
        self.attention_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.modulation = modulation
        if modulation:
            # scale_attn, gate_attn, scale_ffn, gate_ffn from the shared timestep embedding
            self.adaLN_modulation = nn.Sequential(nn.Linear(cfg.adaln_dim, 4 * cfg.dim))

    def forward(self, x, mask, cos, sin, c=None):
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        s_a, g_a, s_f, g_f = _per_token(self.adaLN_modulation(c), mask).chunk(4, dim=-1)
        x = x + g_a.tanh() * self.attention_norm2(self.attention(self.attention_norm1(x) * (1 + s_a), mask, cos, sin))
        return x + g_f.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + s_f)))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t * t_scale -> MLP -> the shared adaLN conditioning vector."""

    def __init__(self, out_dim: int, mid_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, mid_dim), nn.SiLU(), nn.Linear(mid_dim, out_dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) scaled by 1 + adaLN(c), then a linear map back to patch pixels."""

    def __init__(self, cfg: S3DiTConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(cfg.dim, cfg.patch_size**2 * cfg.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))

    def forward(self, x, c, mask=None):
        return self.linear(self.norm_final(x) * (1 + _per_token(self.adaLN_modulation(c), mask)))


def _per_token(mod: torch.Tensor, mask) -> torch.Tensor:
    """Per-sample modulation (B, n) made to broadcast over tokens: (B, 1, n) on the padded path;
    on the packed path (one sequence of all samples) each token takes its own sample's row."""
    return mask.per_token(mod) if isinstance(mask, Packed) else mod[:, None, :]


# ----------------------------------------------------------------------------- the model


class S3DiT(nn.Module):
    """``model(latents, t, cap_feats) -> velocities``: lists of per-sample tensors, any mix of sizes.

    latents: list of (C, H, W) (or a (B, C, H, W) tensor); t: (B,) in [0, 1], 1 = data;
    cap_feats: list of (L_i, cap_feat_dim) text features. Returns a list of (C, H, W).

    Omni mode (the report's omni-pre-training: generation and editing in one model): ``sources``
    gives editing samples their clean source latent (None for a text-to-image sample in the same
    batch). The source's tokens join the sample's image segment, on the same patch embedder and
    refiner, one step earlier on the temporal RoPE axis than the target (``image_segment``); only the
    target's velocity comes out, so the loss is on the target alone. The source is modulated with the
    sample's timestep like the rest of the sequence. No new parameters: the released state dict
    loads unchanged, and a sample without a source runs exactly as in text-to-image."""

    def __init__(self, cfg: S3DiTConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.patch_key
        self.all_x_embedder = nn.ModuleDict({k: nn.Linear(cfg.patch_size**2 * cfg.in_channels, cfg.dim)})
        self.cap_embedder = nn.Sequential(RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), nn.Linear(cfg.cap_feat_dim, cfg.dim))
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim, cfg.t_mid_dim)
        self.x_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.noise_refiner = nn.ModuleList([Block(cfg, modulation=True) for _ in range(cfg.n_refiner_layers)])
        self.context_refiner = nn.ModuleList([Block(cfg, modulation=False) for _ in range(cfg.n_refiner_layers)])
        self.layers = nn.ModuleList([Block(cfg, modulation=True) for _ in range(cfg.n_layers)])
        self.all_final_layer = nn.ModuleDict({k: FinalLayer(cfg)})
        self.gradient_checkpointing = False
        self.packing = cfg.packing  # settable, like gradient_checkpointing: same weights, either path
        self.attn_backend = cfg.attn_backend
        self.pack_to = 1  # packed length rounded up to this (end padding only), e.g. 128 for compiled flex
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier linears with zero biases; zero adaLN projections (gates tanh(0) = 0, scales 1)
        and a zero output layer, so training starts from the identity on every residual."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (Block, FinalLayer)) and hasattr(m, "adaLN_modulation"):
                lin = m.adaLN_modulation[-1]
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        fl = self.all_final_layer[self.cfg.patch_key].linear
        nn.init.zeros_(fl.weight)
        nn.init.zeros_(fl.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.x_pad_token, std=0.02)
        nn.init.normal_(self.cap_pad_token, std=0.02)

    def blocks(self) -> list[Block]:
        return [*self.noise_refiner, *self.context_refiner, *self.layers]

    def _run(self, block, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, latents, t: torch.Tensor, cap_feats: list[torch.Tensor], sources=None) -> list[torch.Tensor]:
        cfg, p = self.cfg, self.cfg.patch_size
        latents = list(latents.unbind(0)) if isinstance(latents, torch.Tensor) else list(latents)
        B, dev = len(latents), latents[0].device
        t = t.to(dev).float().reshape(-1).expand(B) if torch.is_tensor(t) else torch.full((B,), float(t), device=dev)
        grids = [(x.shape[-2] // p, x.shape[-1] // p) for x in latents]
        sources = check_sources(grids, None if sources is None else list(sources))
        src_grids = [None if s is None else (s.shape[-2] // p, s.shape[-1] // p) for s in sources]
        c = self.t_embedder(t * cfg.t_scale)
        tokens = [patchify(z, p) for lat, src in zip(latents, sources) for z in ((lat,) if src is None else (lat, src.to(lat)))]
        x = self.all_x_embedder[cfg.patch_key](torch.cat(tokens))  # per sample: target, then source
        c = c.to(x.dtype)
        y = self.cap_embedder(torch.cat(list(cap_feats)).to(x.dtype))
        cap_lens = [len(f) for f in cap_feats]
        out = (self._forward_packed if self.packing else self._forward_padded)(x, y, c, grids, cap_lens, src_grids)
        return [unpatchify(o, g, p, cfg.in_channels) for o, g in zip(out, grids)]

    def _forward_padded(self, x, y, c, grids, cap_lens, src_grids=None) -> list[torch.Tensor]:
        """Samples padded to the batch's longest, padding masked out of attention: per-sample tokens out."""
        cfg, dev, B = self.cfg, x.device, len(grids)
        lay = make_layout(grids, cap_lens, cfg.seq_multiple, device=dev, src_grids=src_grids)

        # image segment: scatter patch tokens into (B, NI, dim), learned pad tokens, refine
        NI = lay.img_pos.shape[1]
        img = x.new_zeros(B * NI, cfg.dim).index_copy(0, lay.img_real, x).view(B, NI, cfg.dim)
        img = torch.where(lay.img_pad[..., None], self.x_pad_token.to(img.dtype), img)
        cos, sin = rope_cos_sin(lay.img_pos, cfg.axes_dims, cfg.rope_theta)
        mask = Layout.key_mask(lay.img_len, NI, dev)
        for blk in self.noise_refiner:
            img = self._run(blk, img, mask, cos, sin, c)

        # text segment: same, unmodulated
        NC = lay.cap_pos.shape[1]
        real = torch.cat([torch.arange(n, device=dev) + b * NC for b, n in enumerate(cap_lens)])
        cap = y.new_zeros(B * NC, cfg.dim).index_copy(0, real, y).view(B, NC, cfg.dim)
        cap = torch.where(lay.cap_pad[..., None], self.cap_pad_token.to(cap.dtype), cap)
        cos, sin = rope_cos_sin(lay.cap_pos, cfg.axes_dims, cfg.rope_theta)
        mask = Layout.key_mask(lay.cap_len, NC, dev)
        for blk in self.context_refiner:
            cap = self._run(blk, cap, mask, cos, sin)

        # single stream: per sample [image segment, text segment], batch-padded and masked
        flat = torch.cat([img.flatten(0, 1), cap.flatten(0, 1).to(img.dtype), img.new_zeros(1, cfg.dim)])
        u = flat[lay.uni_index]
        cos, sin = rope_cos_sin(lay.uni_pos, cfg.axes_dims, cfg.rope_theta)
        mask = Layout.key_mask(lay.uni_len, u.shape[1], dev)
        for blk in self.layers:
            u = self._run(blk, u, mask, cos, sin, c)
        out = self.all_final_layer[cfg.patch_key](u, c)
        return [out[b, : h * w] for b, (h, w) in enumerate(grids)]

    def _forward_packed(self, x, y, c, grids, cap_lens, src_grids=None) -> list[torch.Tensor]:
        """The same computation with the batch packed into one sequence (``training.packing``):
        no batch padding, attention restricted to each sample."""
        cfg = self.cfg
        lay = pack_layout(grids, cap_lens, cfg.seq_multiple, self.pack_to, self.attn_backend, x.device, src_grids)
        img = self._packed_stream(x, lay.img_real, lay.img.total, self.x_pad_token)
        cos, sin = rope_cos_sin(lay.img_pos, cfg.axes_dims, cfg.rope_theta)
        for blk in self.noise_refiner:
            img = self._run(blk, img, lay.img, cos, sin, c)
        cap = self._packed_stream(y, lay.cap_real, lay.cap.total, self.cap_pad_token)
        cos, sin = rope_cos_sin(lay.cap_pos, cfg.axes_dims, cfg.rope_theta)
        for blk in self.context_refiner:
            cap = self._run(blk, cap, lay.cap, cos, sin)
        u = torch.cat([img[0], cap[0].to(img.dtype), img.new_zeros(1, cfg.dim)])[lay.uni_index][None]
        cos, sin = rope_cos_sin(lay.uni_pos, cfg.axes_dims, cfg.rope_theta)
        for blk in self.layers:
            u = self._run(blk, u, lay.uni, cos, sin, c)
        out = self.all_final_layer[cfg.patch_key](u, c, lay.uni)[0]
        return [out[s : s + h * w] for s, (h, w) in zip(lay.img_start, grids)]

    @staticmethod
    def _packed_stream(tok: torch.Tensor, rows: torch.Tensor, total: int, pad: nn.Parameter) -> torch.Tensor:
        """(1, total, dim): the real tokens at ``rows``, the learned pad token everywhere else."""
        return pad.to(tok.dtype).expand(total, -1).contiguous().index_copy_(0, rows, tok)[None]


# ----------------------------------------------------------------------------- released weights

_DIFFUSERS_KEYS = {
    "in_channels",
    "dim",
    "n_layers",
    "n_refiner_layers",
    "n_heads",
    "n_kv_heads",
    "norm_eps",
    "qk_norm",
    "cap_feat_dim",
    "rope_theta",
    "t_scale",
}


def config_from_diffusers(conf: dict) -> S3DiTConfig:
    """Our config from a released / diffusers ``config.json`` of ``ZImageTransformer2DModel``."""
    kw = {k: conf[k] for k in _DIFFUSERS_KEYS if k in conf}
    if "all_patch_size" in conf:
        kw["patch_size"] = int(conf["all_patch_size"][0])
    for k in ("axes_dims", "axes_lens"):
        if k in conf:
            kw[k] = tuple(conf[k])
    dim = kw.get("dim", S3DiTConfig.dim)
    kw["adaln_dim"] = min(dim, 256)
    return S3DiTConfig(**kw)


def load_safetensors(path: str | Path, cfg: S3DiTConfig | None = None, device="cpu", dtype: torch.dtype | None = torch.float32) -> S3DiT:
    """Build a model from released weights: a ``.safetensors`` file, or a folder of shards with an
    optional diffusers ``config.json`` (the ``transformer/`` folder of the released repository).
    Names and shapes must match exactly; a mismatch lists the offending keys.

    Parameters come out in ``dtype``, fp32 by default whatever the file holds (the released weights
    are bf16): training needs fp32 master weights, and bf16 compute comes from autocast. Pass
    ``dtype=torch.bfloat16`` for inference, or ``None`` to keep each tensor's dtype from the file.
    The model is built on the meta device and each tensor is read, cast and assigned one at a time,
    so no second full copy of the weights is ever held (peak: the model in ``dtype`` plus one
    tensor as stored)."""
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .safetensors files under {path}")
    if cfg is None:
        conf = path / "config.json" if path.is_dir() else path.with_name("config.json")
        if not conf.exists():
            raise FileNotFoundError(f"{conf} not found: pass cfg= (e.g. training.model.z_image_6b())")
        cfg = config_from_diffusers(json.loads(conf.read_text()))
    with torch.device("meta"):
        model = S3DiT(cfg)
    expected = model.state_dict()
    state = {}
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt", device=str(device))) for f in files]
        keys = {k for h in handles for k in h.keys()}
        missing, unexpected = set(expected) - keys, keys - set(expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the S3-DiT layout: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
            )
        for h in handles:
            for k in h.keys():
                t = h.get_tensor(k)
                if t.shape != expected[k].shape:
                    raise ValueError(f"{k}: shape {tuple(t.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model")
                state[k] = t if dtype is None or t.dtype == dtype else t.to(dtype)  # the stored copy is freed here
    model.load_state_dict(state, strict=True, assign=True)
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: S3DiTConfig, img_tokens: int, cap_tokens: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one sample, counting matmuls only.

    A linear of n params costs 2n FLOPs per token forward; attention costs 4 * S^2 * dim per
    block forward (QK^T and AV). Used for model FLOPs utilisation (MFU)."""
    Li, Lc = _ceil(img_tokens, cfg.seq_multiple), _ceil(cap_tokens, cfg.seq_multiple)
    S = Li + Lc
    hd = cfg.head_dim
    attn_lin = cfg.dim * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    ffn = 3 * cfg.dim * cfg.ffn_dim
    blk = 2 * (attn_lin + ffn)
    fwd = (
        cfg.n_refiner_layers * (Li * blk + 4 * Li * Li * cfg.dim + Lc * blk + 4 * Lc * Lc * cfg.dim)
        + cfg.n_layers * (S * blk + 4 * S * S * cfg.dim)
        + 2 * Li * cfg.dim * cfg.patch_size**2 * cfg.in_channels * 2
        + 2 * Lc * cfg.dim * cfg.cap_feat_dim
    )
    return 3.0 * fwd
