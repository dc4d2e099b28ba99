"""Safe decoding of untrusted image bytes into an oriented RGB picture plus header metadata.

Every pixel signal reads images through here, so hostile files are handled once:

- decompression bombs: the pixel count is read from the header and checked *before* any pixel
  is decoded (PIL's own guard only warns below 2x its limit);
- truncated / corrupt files: decoding is forced (``load()``) and failures become a reason;
- CMYK, 16-bit, palette with transparency, LA/RGBA: converted to 8-bit RGB (alpha composited on
  white, 16-bit scaled, not clipped);
- animated images: the first frame is profiled, the frame count is recorded;
- EXIF orientation is applied before anything else, so hashes and crops see the upright image.

Nothing here raises on bad input: ``decode_image`` returns a ``Decoded`` or a ``DecodeFailure``
with a short machine reason (``no_image``, ``decompression_bomb``, ``truncated``,
``undecodable``, ``too_large_file``) and a human detail.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["DecodeOptions", "Decoded", "DecodeFailure", "decode_image", "decode_rows", "image_bytes_of"]

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half

_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_CHANNELS = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I": 1,
    "F": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
}


@dataclass(frozen=True)
class DecodeOptions:
    """``max_pixels`` caps width x height (checked from the header, before decoding);
    ``max_side`` bounds the working copy the signals see: its longest side ends up between
    ``max_side / 2`` and ``max_side`` (JPEG is decoded at a reduced DCT scale, which is where most
    of the decode time goes; other formats are shrunk after decoding). None keeps full size."""

    max_pixels: int = 64_000_000
    max_file_bytes: int = 256 * 1024 * 1024
    max_side: int | None = 512


@dataclass
class Decoded:
    """An upright 8-bit RGB working image and what the header said about the original."""

    rgb: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)
    _gray: np.ndarray | None = None
    _arr: np.ndarray | None = None
    _half: np.ndarray | None = None
    _hist: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """H x W x 3 uint8."""
        if self._arr is None:
            self._arr = np.asarray(self.rgb)
        return self._arr

    @property
    def gray(self) -> np.ndarray:
        """H x W uint8 luma (ITU-R 601, as PIL's ``L``)."""
        if self._gray is None:
            import cv2

            self._gray = cv2.cvtColor(self.array, cv2.COLOR_RGB2GRAY)
        return self._gray

    @property
    def gray_half(self) -> np.ndarray:
        """Luma at half size (2x2 area average): the coarse sharpness scale and the hashes' input,
        shared so each image is shrunk once."""
        if self._half is None:
            import cv2

            g = self.gray
            self._half = cv2.resize(g, (max(1, g.shape[1] // 2), max(1, g.shape[0] // 2)), interpolation=cv2.INTER_AREA)
        return self._half

    @property
    def gray_hist(self) -> np.ndarray:
        """256-bin luma histogram (float64): entropy, exposure, brightness and contrast all read
        it, one pass over the pixels instead of one per statistic."""
        if self._hist is None:
            import cv2

            self._hist = cv2.calcHist([self.gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
        return self._hist


@dataclass(frozen=True)
class DecodeFailure:
    reason: str
    detail: str

    @property
    def message(self) -> str:
        # no object addresses in messages: a re-run must give byte-identical values
        detail = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the bytes", self.detail)
        return f"{self.reason}: {detail}"[:500]


def image_bytes_of(image: bytes | None, uri: str | None, max_file_bytes: int) -> bytes | DecodeFailure:
    """Inline bytes, or the bytes of a local ``image_uri`` (remote URIs are ingest's job)."""
    if image is not None:
        return image
    if not uri:
        return DecodeFailure("no_image", "row has neither image bytes nor image_uri")
    path = uri[7:] if uri.startswith("file://") else uri
    if "://" in path:
        return DecodeFailure("no_image", f"image not stored inline and {uri!r} is not a local path")
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_file_bytes:
            return DecodeFailure("too_large_file", f"{size} bytes > max_file_bytes {max_file_bytes}")
        return p.read_bytes()
    except OSError as e:
        return DecodeFailure("no_image", f"cannot read {uri!r}: {e.strerror or e}")


def _png_bit_depth(data: bytes) -> int | None:
    # PIL reports 16-bit RGB PNGs as mode RGB; the IHDR chunk has the real depth.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        return int(data[24])
    return None


def _to_rgb(im: Image.Image, bits: int) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = float(2**bits - 1) if mode != "F" else max(float(arr.max(initial=0.0)), 1.0)
        if mode == "I" and arr.max(initial=0) <= 255:  # 8-bit data stored as int32
            top = 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(data: bytes | None, opts: DecodeOptions = DecodeOptions()) -> Decoded | DecodeFailure:
    """Decode ``data`` safely; see the module doc for what is handled and the failure reasons."""
    if data is None or len(data) == 0:
        return DecodeFailure("no_image", "empty image bytes")
    if len(data) > opts.max_file_bytes:
        return DecodeFailure("too_large_file", f"{len(data)} bytes > max_file_bytes {opts.max_file_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: we check ourselves
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                return DecodeFailure("undecodable", f"invalid size {w}x{h}")
            if w * h > opts.max_pixels:
                return DecodeFailure("decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {opts.max_pixels}")
            meta = _header_meta(im, data)
            rgb = _working_copy(im, (w, h), meta, opts)
    except Image.DecompressionBombError as e:
        return DecodeFailure("decompression_bomb", str(e))
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg or "broken data stream" in msg else "undecodable"
        return DecodeFailure(reason, msg or type(e).__name__)
    except Exception as e:  # anything else a codec can throw at us: a reason, not a crash
        return DecodeFailure("undecodable", f"{type(e).__name__}: {e}")
    return Decoded(rgb, meta)


def _header_meta(im: Image.Image, data: bytes) -> dict[str, Any]:
    """What the header says about the original file, read before any pixel is decoded: the
    signals report the file's format, depth and upright size, not the working copy's."""
    w, h = im.size
    fmt, mode = im.format, im.mode
    bits = _png_bit_depth(data) if fmt == "PNG" else None
    if bits is None or mode == "P":
        bits = _BITS.get(mode, 8)
    channels = _CHANNELS.get(mode, len(im.getbands()))
    has_alpha = "A" in mode or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if mode == "P":
        channels = 4 if has_alpha else 3
    frames = int(getattr(im, "n_frames", 1) or 1) if getattr(im, "is_animated", False) else 1
    if frames > 1:
        im.seek(0)  # an animation is profiled by its first frame
    orientation = _exif_orientation(im)
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return {
        "format": fmt,
        "mode": mode,
        "bit_depth": bits,
        "channels": channels,
        "orientation": orientation,
        "width": ow,
        "height": oh,
        "file_bytes": len(data),
        "frames": frames,
        "has_alpha": bool(has_alpha),
    }


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) to apply before anything else; 1 (upright) when the tag is
    absent, out of range or unreadable."""
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # broken EXIF must not lose the picture
        orientation = 1
    if orientation not in range(1, 9):
        orientation = 1
    return orientation


def _working_copy(im: Image.Image, size: tuple[int, int], meta: dict[str, Any], opts: DecodeOptions) -> Image.Image:
    """Decode the pixels (forced, so truncation is caught here) into the upright 8-bit RGB copy the
    signals see, its longest side at most ``opts.max_side``; ``size`` is the header's width x height."""
    w, h = size
    if opts.max_side and meta["format"] == "JPEG" and max(w, h) > opts.max_side:
        # DCT scaling (1/2, 1/4, 1/8) is most of the decode cost saved: accept a working
        # copy between max_side/2 and max_side rather than decode big and shrink
        # (PIL picks the scale from w // req_w and h // req_h: round the request down, or
        # a 640x427 image asked for 320x214 gets 427 // 214 = 1, no reduction at all)
        scale = opts.max_side / 2 / max(w, h)
        im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
    im.load()
    if meta["orientation"] != 1:
        im = ImageOps.exif_transpose(im)
    rgb = _to_rgb(im, meta["bit_depth"])
    if opts.max_side and max(rgb.size) > opts.max_side:
        rgb.thumbnail((opts.max_side, opts.max_side), Image.Resampling.BILINEAR)
    return rgb


def decode_rows(images: list[bytes | None], uris: list[str | None] | None, opts: DecodeOptions) -> list[Decoded | DecodeFailure]:
    """Decode a batch column; one result per row, in order."""
    uris = uris if uris is not None else [None] * len(images)
    out: list[Decoded | DecodeFailure] = []
    for data, uri in zip(images, uris):
        got = image_bytes_of(data, uri, opts.max_file_bytes)
        out.append(got if isinstance(got, DecodeFailure) else decode_image(got, opts))
    return out
