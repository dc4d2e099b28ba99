"""Crafted images for profiling tests: hostile files and pictures with a known ordering."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(seed: int = 0, size=(320, 240)) -> Image.Image:
    """A textured synthetic 'photo': smooth gradients plus shapes plus mild noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200 + 30, y / h * 180 + 40, (x + y) / (w + h) * 150 + 60], -1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        d.rectangle(
            [x0, y0, x0 + int(rng.integers(10, 80)), y0 + int(rng.integers(10, 60))], fill=tuple(int(v) for v in rng.integers(0, 255, 3))
        )
        d.ellipse([y0 % w, x0 % h, y0 % w + 30, x0 % h + 30], outline=(0, 0, 0), width=2)
    return im


def text_image(text: str, size=(960, 160), font_size=56) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((24, (size[1] - font_size) // 2 - 6), text, font=ImageFont.truetype(CJK_FONT, font_size), fill="black")
    return im


def decompression_bomb_png(w: int = 12000, h: int = 12000) -> bytes:
    """A tiny PNG whose header claims w x h 1-bit pixels (compresses ~1000:1 when filled)."""
    raw = zlib.compress(b"\x00" * (1 + (w + 7) // 8) * 64)  # only a few rows of data: never decoded anyway

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 200x100 (stored) JPEG with EXIF orientation 6: upright it is 100x200."""
    im = photo(3, (200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=90, exif=exif.tobytes())


def hostile_set() -> dict[str, bytes]:
    """name -> bytes; every entry must yield a profile or an error reason, never a crash."""
    good = encode(photo(1), "JPEG", quality=90)
    pal = Image.new("P", (64, 48))
    pal.putpalette([i % 256 for i in range(768)])
    ImageDraw.Draw(pal).rectangle([8, 8, 40, 30], fill=7)
    frames = [photo(i, (64, 48)) for i in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    deep = Image.fromarray((np.linspace(0, 65535, 96 * 64).reshape(64, 96)).astype(np.uint16))
    return {
        "ok_jpeg": good,
        "decompression_bomb": decompression_bomb_png(),
        "truncated": good[: len(good) // 2],
        "garbage": b"this is not an image at all" * 10,
        "empty": b"",
        "cmyk_jpeg": encode(photo(2).convert("CMYK"), "JPEG", quality=90),
        "png16": encode(deep, "PNG"),
        "palette_transparency": encode(pal, "PNG", transparency=0),
        "animated_gif": anim.getvalue(),
        "exif_rotated": exif_rotated_jpeg(),
        "one_pixel": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "very_wide": encode(Image.new("L", (20000, 10), 128), "PNG"),
    }


def blurred(im: Image.Image, radius: float = 3) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius))
