"""Aspect-ratio buckets and sequence lengths: how many tokens one training sample costs.

A diffusion transformer sees an image as (H/16) x (W/16) tokens (a VAE that downsamples by 8,
then 2x2 patches), followed or preceded by the caption's text tokens. Training at native aspect
ratios means cropping each image to one of a list of sizes of about the target area whose sides
are multiples of 16 (Lumina-Image-2.0's ``generate_crop_size_list``): a 4:3 photo at 512 becomes
592x432, not a squashed 512x512. The bucket, the image token count and a caption token estimate
are all known before any pixel is decoded, which is what sequence-length-aware batching needs.

Pure functions, no torch: export and the loader both use them.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

__all__ = [
    "PATCH",
    "RESOLUTIONS",
    "crop_sizes",
    "choose_resolution",
    "assign_bucket",
    "image_tokens",
    "estimate_caption_tokens",
]

PATCH = 16
"""Pixels per image token along each side: VAE downsampling 8 x transformer patch 2."""

RESOLUTIONS = (256, 512, 1024)
"""Training resolutions (side of the square of the same area) that ``curate export`` offers."""


@lru_cache(maxsize=64)
def crop_sizes(resolution: int, patch: int = PATCH, max_ratio: float = 4.0) -> tuple[tuple[int, int], ...]:
    """All (width, height) crops of at most ``resolution``² pixels, sides multiples of ``patch``,
    each as large as the patch grid allows for its width, aspect between 1:max_ratio and max_ratio:1.

    Walks widths from widest to narrowest keeping the tallest height that fits, as Lumina-Image-2.0
    does, so every bucket's area is within a few percent of the target and the list covers aspect
    ratios evenly (denser near square at high resolution, where one patch matters less)."""
    if resolution % patch:
        raise ValueError(f"resolution {resolution} is not a multiple of the patch size {patch}")
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    budget = (resolution // patch) ** 2
    sizes = []
    wp, hp = budget, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * patch, hp * patch))
        if (hp + 1) * wp <= budget:
            hp += 1
        else:
            wp -= 1
    return tuple(sizes)


def choose_resolution(width: int, height: int, target: int, *, levels: tuple[int, ...] = RESOLUTIONS, max_upscale: float = 1.25) -> int:
    """The training resolution for an image: the largest level <= ``target`` that needs at most
    ``max_upscale`` linear upscaling; the smallest level when none does.

    Upscaling a 640x480 photo to 1024² adds tokens and no detail, so with ``--resolution 1024`` it
    trains at 512; this is what makes real exports a mix of resolutions."""
    side = math.sqrt(max(width, 1) * max(height, 1))
    usable = [lv for lv in levels if lv <= target and side * max_upscale >= lv]
    if usable:
        return max(usable)
    below = [lv for lv in levels if lv <= target]
    return min(below or levels)


def assign_bucket(width: int, height: int, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The crop size that keeps the most of the image after scale-to-cover and centre crop.

    The kept fraction is min(cw/w, ch/h) / max(cw/w, ch/h) = exp(-|log(bucket aspect / image aspect)|),
    so this is the bucket nearest in log aspect ratio; ties go to the wider bucket (list order)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    target = math.log(width / height)
    best, best_err = sizes[0], math.inf
    for cw, ch in sizes:
        err = abs(math.log(cw / ch) - target)
        if err < best_err - 1e-12:
            best, best_err = (cw, ch), err
    return best


def image_tokens(width: int, height: int, patch: int = PATCH) -> int:
    """Tokens of an image of this (bucket) size: (H/16) x (W/16)."""
    return (width // patch) * (height // patch)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002a6df]")
_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")


def estimate_caption_tokens(text: str | None) -> int:
    """A tokenizer-free estimate of a caption's BPE token count (Qwen/Llama-style vocabularies).

    One token per CJK character, per digit (digits are split one by one) and per punctuation
    mark; a Latin word is one token up to 7 letters and one more per further 7 (rare long words
    split). Within ~15% of a real BPE count on English captions, and never depends on a
    downloaded vocabulary; export takes a real tokenizer path when exact counts matter."""
    if not text:
        return 0
    n = len(_CJK.findall(text))
    for piece in _PIECE.findall(_CJK.sub(" ", text)):
        n += 1 + (len(piece) - 1) // 7 if piece[0].isalpha() else 1
    return n
