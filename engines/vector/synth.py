"""Synthetic data with known answers, for tests and benchmarks of the vector engine.

- ``near_dup_variants``: edited copies of a real photograph (crops, resizes, re-encodes,
  watermarks, colour changes), the edits found in scraped web data. Each copy is a known
  near duplicate of its original, so precision and recall of a dedup method can be measured.
- ``clustered_embeddings``: unit vectors around random centres (a mixture of von Mises-Fisher
  like blobs), with planted near-duplicate groups: real embeddings are clustered, and uniform
  random vectors would make every ANN index look bad (no structure) or trivially good.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

__all__ = [
    "VARIANT_KINDS",
    "HARD_VARIANT_KINDS",
    "ALL_VARIANT_KINDS",
    "make_variant",
    "near_dup_variants",
    "encode_jpeg",
    "clustered_embeddings",
]


def encode_jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.7, 0.85)  # keep 70-85% of each side, anywhere in the frame
    cw, ch = int(w * f), int(h * f)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _resize(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    s = rng.uniform(0.35, 0.6)
    return im.resize((max(16, int(im.width * s)), max(16, int(im.height * s))), Image.Resampling.BICUBIC)


def _reencode(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    q = int(rng.integers(12, 30))
    return Image.open(io.BytesIO(encode_jpeg(im, q))).convert("RGB")


def _watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = im.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = out.size
    # a semi-transparent banner and text at a corner, plus a tiled diagonal text mark
    bx, by = int(w * rng.uniform(0.45, 0.6)), int(h * rng.uniform(0.8, 0.88))
    d.rectangle((bx, by, w - 4, h - 4), fill=(255, 255, 255, 120))
    d.text((bx + 6, by + 4), "(c) stockphoto.example", fill=(0, 0, 0, 220), font_size=max(10, h // 20))
    for i in range(4):
        d.text((int(w * 0.1 + i * w * 0.2), int(h * (0.2 + 0.15 * i))), "SAMPLE", fill=(255, 255, 255, 90), font_size=max(12, h // 12))
    return Image.alpha_composite(out, layer).convert("RGB")


def _colour(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return ImageOps.grayscale(im).convert("RGB")
    if kind == 1:  # hue rotation
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(40, 120))) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    im = ImageEnhance.Color(im).enhance(rng.uniform(1.6, 2.2))  # saturated, brighter, more contrast
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(1.1, 1.3))
    return ImageEnhance.Contrast(im).enhance(rng.uniform(1.2, 1.4))


def _combo(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _reencode(_resize(_colour(_crop(im, rng), rng), rng), rng)


VARIANTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": _crop,
    "resize": _resize,
    "reencode": _reencode,
    "watermark": _watermark,
    "colour": _colour,
    "combo": _combo,
}
VARIANT_KINDS = tuple(VARIANTS)


# --- harder edits: the development set of the dedup job ---------------------------------------


def _mirror(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(im)


def _rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im.rotate(int(rng.choice([90, 180, 270])), expand=True)


def _strong_crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.55, 0.65)  # about 40% of the area left
    cw, ch = int(w * f), int(h * f)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _banner(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A meme-style text band added above or below the photo (the canvas grows)."""
    w, h = im.size
    band = int(h * rng.uniform(0.12, 0.2))
    out = Image.new("RGB", (w, h + band), (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0))
    top = rng.random() < 0.5
    out.paste(im, (0, band if top else 0))
    d = ImageDraw.Draw(out)
    colour = (0, 0, 0) if out.getpixel((0, 0 if top else h + band - 1)) == (255, 255, 255) else (255, 255, 255)
    d.text((8, 4 if top else h + 4), "WHEN THE PHOTO GOES VIRAL", fill=colour, font_size=max(10, band // 2))
    return out


def _frame(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A screenshot: the photo shrunk inside a window with a title bar, margins and other UI."""
    w, h = im.size
    s = rng.uniform(0.65, 0.8)
    inner = im.resize((int(w * s), int(h * s)), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (w, h), (236, 236, 236))
    d = ImageDraw.Draw(out)
    d.rectangle((0, 0, w, int(h * 0.08)), fill=(60, 60, 70))
    d.text((10, 4), "photo.jpg - Viewer", fill=(240, 240, 240), font_size=max(9, h // 30))
    x = int((w - inner.width) * rng.uniform(0.3, 0.7))
    y = int(h * 0.08) + int((h - int(h * 0.08) - inner.height) * rng.uniform(0.2, 0.8))
    out.paste(inner, (x, max(int(h * 0.08), y)))
    d.rectangle((0, h - int(h * 0.05), w, h), fill=(210, 210, 215))
    return out


def _aspect(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    f = rng.uniform(1.3, 1.6)
    return im.resize((int(w * f), h) if rng.random() < 0.5 else (w, int(h * f)), Image.Resampling.BICUBIC)


def _heavy_reencode(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = im.resize((max(16, im.width // 2), max(16, im.height // 2)), Image.Resampling.BILINEAR)
    return Image.open(io.BytesIO(encode_jpeg(small, int(rng.integers(5, 10))))).convert("RGB")


def _mirror_combo(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _reencode(_colour(_crop(ImageOps.mirror(im), rng), rng), rng)


def _rotate_combo(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _watermark(_resize(_rotate(_crop(im, rng), rng), rng), rng)


VARIANTS.update(
    {
        "mirror": _mirror,
        "rotate": _rotate,
        "strong_crop": _strong_crop,
        "banner": _banner,
        "frame": _frame,
        "aspect": _aspect,
        "heavy_reencode": _heavy_reencode,
        "mirror_combo": _mirror_combo,
        "rotate_combo": _rotate_combo,
    }
)
HARD_VARIANT_KINDS = ("mirror", "rotate", "strong_crop", "banner", "frame", "aspect", "heavy_reencode", "mirror_combo", "rotate_combo")
"""Edits beyond ``VARIANT_KINDS`` that scraped data holds and a pixel hash misses: mirrors,
quarter turns, strong crops, text bands, screenshots inside a window, aspect changes, heavy
re-encoding, and combinations. With ``VARIANT_KINDS`` they make the dedup development set."""
ALL_VARIANT_KINDS = VARIANT_KINDS + HARD_VARIANT_KINDS


def make_variant(data: bytes, kind: str, seed: int) -> bytes:
    """One edited copy of encoded image ``data`` (JPEG bytes out); deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    im = Image.open(io.BytesIO(data)).convert("RGB")
    out = VARIANTS[kind](im, rng)
    return encode_jpeg(out, 92 if kind not in ("reencode", "combo") else 95)


def near_dup_variants(data: bytes, kinds: tuple[str, ...] = VARIANT_KINDS, seed: int = 0) -> list[tuple[str, bytes]]:
    """All ``kinds`` of edited copies of one image, as (kind, jpeg bytes)."""
    return [(k, make_variant(data, k, seed * 1000 + i)) for i, k in enumerate(kinds)]


def clustered_embeddings(
    n: int,
    dim: int = 512,
    *,
    n_clusters: int = 1000,
    spread: float = 0.6,
    dup_fraction: float = 0.02,
    dup_noise: float = 0.02,
    seed: int = 0,
    chunk: int = 65536,
) -> Iterator[np.ndarray]:
    """Yield float32 unit vectors in chunks (memory-bounded): each is a random centre plus
    Gaussian noise of norm ~``spread``; a ``dup_fraction`` of rows copy an earlier row of the same
    chunk plus tiny noise (planted near duplicates, ~cos 0.9998). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        lab = rng.integers(0, n_clusters, m)
        x = centres[lab] + rng.standard_normal((m, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        n_dup = int(m * dup_fraction)
        if n_dup and m > 1:
            src = rng.integers(0, m, n_dup)
            dst = rng.integers(0, m, n_dup)
            x[dst] = x[src] + rng.standard_normal((n_dup, dim)).astype(np.float32) * (dup_noise / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        done += m
        yield x
