"""Sequence packing for S3-DiT: the samples of a batch laid end to end in one sequence.

Why: the padded path pads every sample to the batch's longest and masks the padding out of
attention with a boolean key mask. The padding costs compute, and the mask rules out the
FlashAttention kernel. Packed, each sample's segments (image, caption, each already padded to a
multiple of 32 as the released model pads them) are concatenated into one stream of batch size
1. Positions are each sample's own 3D RoPE positions, the adaLN modulation is gathered per token
from its sample's timestep, and attention only sees keys of the same sample (a "document").
Padding, if any (``pad_to``), is one extra document at the end. Outputs equal the padded path's
(``tests/training/test_packing.py``).

Attention backends (``S3DiTConfig.attn_backend``), all exact and equal on CPU (tested):

* ``varlen`` (what ``auto`` picks): on CUDA in bf16/fp16, torch's FlashAttention variable-length
  kernel (``torch.nn.attention.varlen.varlen_attn``) over ``cu_seqlens``; elsewhere (CPU, fp32)
  one unmasked SDPA call per document. No mask is built and no compilation is needed.
* ``flex``: FlexAttention with a block mask ``doc[q] == doc[kv]`` (block sparse: blocks outside
  every document are skipped). Compiled on CUDA (uncompiled flex is a slow reference path), so
  each new packed length costs a compile unless ``pad_to`` rounds lengths. On CPU torch has no
  FlexAttention backward: inference only.
* ``sdpa``: one SDPA call with a dense block-diagonal boolean mask built from ``cu_seqlens``
  (T x T bools; the memory-efficient kernel on CUDA, never FlashAttention). A fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BACKENDS", "Packed", "PackedLayout", "image_segment", "pack_layout", "segment_tokens", "resolve_backend"]

BACKENDS = ("auto", "varlen", "flex", "sdpa")


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def segment_tokens(n, multiple: int = 32):
    """Tokens the model runs for a segment of ``n`` real tokens (ints or NumPy arrays): padded up
    to ``multiple``. Budgets count this, not ``n``, or batches overshoot by the padding."""
    return -(-n // multiple) * multiple


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``varlen``: exact everywhere, FlashAttention on CUDA, no compile, no mask."""
    if backend not in BACKENDS:
        raise ValueError(f"attn_backend {backend!r} is not one of {BACKENDS}")
    return "varlen" if backend == "auto" else backend


@dataclass
class Packed:
    """One packed stream's documents: passed to the blocks where the padded path passes its key
    mask, so a block knows which tokens may attend to which and whose timestep each token has."""

    lengths: list[int]  # tokens per document; end padding, if any, is the last document
    sample: torch.Tensor  # (T,) int64: sample of each token (end padding: 0, its outputs are discarded)
    cu_seqlens: torch.Tensor  # (docs + 1,) int32 document boundaries
    backend: str
    mask: Any = None  # flex: BlockMask; sdpa: (1, 1, T, T) bool; varlen: None

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def per_token(self, per_sample: torch.Tensor) -> torch.Tensor:
        """(B, n) per-sample values (adaLN modulation) -> (1, T, n), each token its sample's row."""
        return per_sample[self.sample][None]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> torch.Tensor:
        """Attention of (1, H, T, D) q/k/v restricted to each document."""
        if self.backend == "flex":
            return _flex(q.device.type)(q, k, v, block_mask=self.mask, enable_gqa=gqa)
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=gqa)
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_attn() is not None:
            m = max(self.lengths)
            qt, kt, vt = (z[0].transpose(0, 1) for z in (q, k, v))  # (T, H, D)
            o = _varlen_attn()(qt, kt, vt, self.cu_seqlens, self.cu_seqlens, m, m, enable_gqa=gqa)
            return o.transpose(0, 1)[None]
        return _sdpa_per_doc(q, k, v, self.lengths, gqa)


def _doc_mask(lengths: list[int], backend: str, device: torch.device):
    """The mask a backend needs, built once per forward before the blocks run (so neither
    activation checkpointing nor compilation of a block sees it built): None for varlen."""
    if backend == "varlen":
        return None
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device)
    if backend == "sdpa":
        return (doc[:, None] == doc[None, :])[None, None]
    from torch.nn.attention.flex_attention import create_block_mask

    T = sum(lengths)
    return create_block_mask(lambda b, h, q, kv: doc[q] == doc[kv], None, None, T, T, device=device)


@torch.compiler.disable  # a Python loop over document lengths: compiled, it would recompile per batch
def _sdpa_per_doc(q, k, v, lengths: list[int], gqa: bool) -> torch.Tensor:
    """One unmasked SDPA call per document: exact, and no T x T mask is ever built."""
    outs, s = [], 0
    for n in lengths:
        outs.append(F.scaled_dot_product_attention(q[:, :, s : s + n], k[:, :, s : s + n], v[:, :, s : s + n], enable_gqa=gqa))
        s += n
    return torch.cat(outs, dim=2)


@cache
def _flex(device_type: str):
    """FlexAttention, compiled on CUDA (the fused kernel); eager elsewhere (tests on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


@cache
def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch: the per-document SDPA loop
        return None
    return varlen_attn


def image_segment(
    grid: tuple[int, int], src: tuple[int, int] | None, cap_len: int, multiple: int = 32
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One sample's image segment: the target's tokens padded to ``multiple``, then (omni mode, an
    editing sample) the source image's, padded too. Returns its length, the rows of its real tokens
    (target first, so a sample's outputs are the segment's first h*w rows either way) and their
    (t, h, w) positions. Text holds temporal positions 1..cap_len; a source sits at cap_len + 1 and
    its target after it at cap_len + 2, so the temporal RoPE axis tells them apart, as the report
    describes; a text-to-image target is at cap_len + 1, as released. No new parameters."""
    h, w = grid
    parts = [(0, grid, cap_len + (2 if src else 1))]
    if src:
        parts.append((_ceil(h * w, multiple), src, cap_len + 1))
    rows, pos = [], []
    for off, (gh, gw), t in parts:
        hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        rows.append(off + torch.arange(gh * gw))
        pos.append(torch.stack([torch.full((gh * gw,), t), hh.flatten(), ww.flatten()], dim=1))
    length = _ceil(h * w, multiple) + (_ceil(src[0] * src[1], multiple) if src else 0)
    return length, torch.cat(rows), torch.cat(pos)


def check_sources(grids: list, src_grids: list | None) -> list:
    """``src_grids`` as one entry per sample (None: no source)."""
    if src_grids is None:
        return [None] * len(grids)
    if len(src_grids) != len(grids):
        raise ValueError(f"{len(grids)} images but {len(src_grids)} source entries (None for a sample without one)")
    return list(src_grids)


@dataclass
class PackedLayout:
    """Where every token of a packed batch lives: the image, text and single streams, their
    positions, and where each sample's real tokens are. Integer bookkeeping, once per forward."""

    img: Packed
    cap: Packed
    uni: Packed
    img_pos: torch.Tensor  # (1, TI, 3) int64 (t, h, w); pad tokens at (0, 0, 0)
    cap_pos: torch.Tensor  # (1, TC, 3)
    uni_pos: torch.Tensor  # (1, TU, 3)
    img_real: torch.Tensor  # rows of the image stream that hold patch tokens, sample by sample (target, then source)
    cap_real: torch.Tensor  # (sum L,) rows of the text stream that hold caption tokens
    uni_index: torch.Tensor  # (TU,) into cat(image stream, text stream, [zero row])
    img_start: list[int]  # first row of sample b's image segment in the single stream (its outputs)


def _stream(lengths: list[int], pad_to: int, backend: str, device) -> Packed:
    """A stream of the given segment lengths, plus an end-padding document up to ``pad_to``."""
    total = sum(lengths)
    tail = _ceil(total, pad_to) - total
    docs = lengths + ([tail] if tail else [])
    sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    sample = torch.cat([sample, torch.zeros(tail, dtype=torch.long)])
    cu = torch.tensor([0, *accumulate(docs)], dtype=torch.int32)
    return Packed(docs, sample.to(device), cu.to(device), backend, _doc_mask(docs, backend, device))


def pack_layout(
    grids: list[tuple[int, int]],
    cap_lens: list[int],
    multiple: int = 32,
    pad_to: int = 1,
    backend: str = "auto",
    device=None,
    src_grids: list[tuple[int, int] | None] | None = None,
) -> PackedLayout:
    """The packed layout of a batch of image grids (h, w tokens) and caption lengths, with the
    positions of ``training.model.make_layout``: text token k at (k, 0, 0), image (h, w) at
    (L + 1, h, w) where L is the padded caption length; with a source grid, see ``image_segment``."""
    if len(grids) != len(cap_lens):
        raise ValueError(f"{len(grids)} images but {len(cap_lens)} captions")
    if any(n < 1 for n in cap_lens):
        raise ValueError("every caption needs at least one token (use the null caption for unconditional samples)")
    backend, device = resolve_backend(backend), torch.device(device if device is not None else "cpu")
    cap_len = [_ceil(n, multiple) for n in cap_lens]
    segs = [image_segment(g, s, lc, multiple) for g, s, lc in zip(grids, check_sources(grids, src_grids), cap_len)]
    img_len = [seg[0] for seg in segs]
    img, cap = _stream(img_len, pad_to, backend, device), _stream(cap_len, pad_to, backend, device)
    uni = _stream([a + b for a, b in zip(img_len, cap_len)], pad_to, backend, device)
    oi, oc, ou = ([0, *accumulate(n)] for n in (img_len, cap_len, uni.lengths))  # host ints: no device sync
    img_pos, cap_pos = torch.zeros(img.total, 3, dtype=torch.long), torch.zeros(cap.total, 3, dtype=torch.long)
    uni_index = torch.full((uni.total,), img.total + cap.total, dtype=torch.long)  # end padding: the zero row
    uni_pos = torch.zeros(uni.total, 3, dtype=torch.long)
    img_real, cap_real = [], []
    for b, n in enumerate(cap_lens):
        Li, Lc = img_len[b], cap_len[b]
        rows = oi[b] + segs[b][1]
        img_pos[rows] = segs[b][2]
        cap_pos[oc[b] : oc[b] + Lc, 0] = torch.arange(1, Lc + 1)
        img_real.append(rows)
        cap_real.append(oc[b] + torch.arange(n))
        uni_index[ou[b] : ou[b] + Li] = oi[b] + torch.arange(Li)
        uni_index[ou[b] + Li : ou[b] + Li + Lc] = img.total + oc[b] + torch.arange(Lc)
        uni_pos[ou[b] : ou[b] + Li] = img_pos[oi[b] : oi[b] + Li]
        uni_pos[ou[b] + Li : ou[b] + Li + Lc] = cap_pos[oc[b] : oc[b] + Lc]
    to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return PackedLayout(
        img,
        cap,
        uni,
        to(img_pos[None]),
        to(cap_pos[None]),
        to(uni_pos[None]),
        to(torch.cat(img_real)),
        to(torch.cat(cap_real)),
        to(uni_index),
        ou[: len(grids)],
    )
