"""The training-shard schema: the contract between ``curate export`` (writer) and the loader (reader).

One home for it so that the export job and ``training.loader`` import the same definition; pure
Arrow, no torch, so the export job does not need the training stack to write plain shards.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from curation.schema import CAPTION_TYPE

__all__ = ["SHARD_SCHEMA", "MANIFEST_KEY", "shard_schema", "normalise_image", "ShardImage", "EXIF_TRANSPOSE"]

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the sample id in the source dataset
        pa.field("image", pa.large_binary()),  # encoded bytes as ingested
        pa.field("captions", pa.list_(CAPTION_TYPE)),  # caption variants (kinds: short, long, tags, ...)
        pa.field("caption_tokens", pa.list_(pa.int32())),  # token estimate per caption variant
        pa.field("width", pa.int32()),  # original size
        pa.field("height", pa.int32()),
        pa.field("resolution", pa.int32()),  # training resolution level the bucket belongs to
        pa.field("bucket_w", pa.int32()),  # crop size, multiples of 16
        pa.field("bucket_h", pa.int32()),
        pa.field("image_tokens", pa.int32()),  # bucket_h/16 * bucket_w/16
        pa.field("weight", pa.float32()),  # sampling weight (1 = as often as any other row)
        pa.field("curriculum_stage", pa.int32()),  # 0 = first stage; null when the source has no curriculum
    ]
)
"""One row per training sample, written by ``curate export`` and read by the loader."""


def shard_schema(latents: bool = False, text: bool = False, feature_dtype: str = "float32") -> pa.Schema:
    """``SHARD_SCHEMA`` plus the pre-encoded columns ``curate export`` writes when encoders are configured.

    * ``latents``: the normalised VAE latent of the row's centre crop to its bucket, flattened
      (C x bucket_h/8 x bucket_w/8, C = 16 for the Flux VAE); the loader reshapes it.
    * ``cap_feats``: per caption variant, the text encoder's features flattened (tokens x dim);
      ``cap_feat_tokens`` holds the token count per variant (so dim = len / tokens).

    Flat lists keep the Arrow -> NumPy path zero-copy (nested lists of floats would go through
    Python objects, which is slow at 262k floats per 1024² latent). ``feature_dtype`` float16
    halves the storage; the loader hands over float32 either way."""
    vt = {"float32": pa.float32(), "float16": pa.float16()}[feature_dtype]
    fields = list(SHARD_SCHEMA)
    if latents:
        fields.append(pa.field("latents", pa.large_list(vt)))
    if text:
        fields += [pa.field("cap_feats", pa.list_(pa.large_list(vt))), pa.field("cap_feat_tokens", pa.list_(pa.int32()))]
    return pa.schema(fields)


MANIFEST_KEY = "curation.manifest"
"""Schema-metadata key of the shard's provenance manifest (JSON: source URI, version, selection)."""


# --- what the image bytes in a shard may be --------------------------------------------------

SHARD_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
"""Encodings a shard's ``image`` holds: 8-bit RGB, orientation applied (no EXIF rotation left)."""

_LOSSY = ("JPEG", "WEBP", "MPO")

_T = Image.Transpose
EXIF_TRANSPOSE = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}
"""EXIF orientation -> transpose, as ``PIL.ImageOps.exif_transpose`` maps them; one table for the
export's normalisation and the loader's decode."""


@dataclass(frozen=True)
class ShardImage:
    """Encoded bytes as the loader expects them, their size and why they were re-encoded (None: kept as is)."""

    data: bytes
    width: int
    height: int
    converted: str | None = None


def normalise_image(data: bytes, *, max_pixels: int = 178_956_970, quality: int = 95) -> ShardImage:
    """The bytes unchanged when they already are 8-bit RGB JPEG/PNG/WebP without an EXIF rotation
    (a header read, no decode: most rows); else decoded, oriented, made RGB (transparency on white,
    16-bit scaled to 8, CMYK/palette/grey converted, the first frame of an animation) and re-encoded:
    JPEG at ``quality`` when the source was lossy, else PNG, so no second loss is added to a lossless
    source. ``converted`` names what changed (``"CMYK JPEG"``, ``"GIF"``, ``"EXIF orientation 6"``).
    Raises ``ValueError`` for bytes that do not decode or are over ``max_pixels``."""
    from PIL import UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"not an image: {type(e).__name__}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
        try:  # a PNG's EXIF may follow its pixels: reading it decodes the image
            orient = im.getexif().get(0x0112, 1)
            why = _conversion_needed(im.format, im.mode, orient, getattr(im, "n_frames", 1))
            if why is None:
                return ShardImage(data, w, h)
            rgb = _to_rgb(im, orient)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ValueError(f"does not decode: {e}") from None
    buf = io.BytesIO()
    if im.format in _LOSSY:
        rgb.save(buf, "JPEG", quality=quality)
    else:
        rgb.save(buf, "PNG", compress_level=6)
    return ShardImage(buf.getvalue(), rgb.width, rgb.height, why)


def _conversion_needed(fmt: str | None, mode: str, orient: int, frames: int) -> str | None:
    if fmt not in SHARD_IMAGE_FORMATS:
        return fmt or "unknown format"
    if mode != "RGB":
        return f"{mode} {fmt}"
    if orient not in (0, 1):
        return f"EXIF orientation {orient}"
    if frames > 1:
        return f"animated {fmt}"
    return None


def _to_rgb(im, orient: int):
    """First frame -> 8-bit RGB with the EXIF orientation applied; alpha composited on white."""
    import numpy as np

    im.seek(0)
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.uint32)
        scale = 257 if int(a.max(initial=0)) > 255 or im.mode.startswith("I;16") else 1
        im = Image.fromarray((a // scale).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = im.convert("RGB")
    return rgb.transpose(EXIF_TRANSPOSE[orient]) if orient in EXIF_TRANSPOSE else rgb
