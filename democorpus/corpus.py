"""The demo corpus: a small, realistic image-text corpus built from real photographs that ship in
packages (scikit-image, scikit-learn, matplotlib), so every engine has something real to chew on
without a download.

What makes it useful for testing a curation platform is the ground truth recorded next to it in
``manifest.json``: which images are near-duplicates of which photo (crops, resizes, low-quality
JPEG re-encodes, watermarks, colour shifts, flips, frames), which are byte-for-byte copies, which
carry rendered English/Chinese text and whether their captions mention that text (an OCR-vs-caption
signal), and which were degraded on purpose (blur, noise, darkness, low resolution).

The corpus is written in the three layouts ``curate ingest`` reads (an image folder with caption
sidecars, an img2dataset-style WebDataset tar, a JSONL table with image paths) and is
deterministic: the same seed gives the same bytes on the same machine.

``build_corpus`` is pure (it returns items in memory, a few MB); ``write_corpus`` writes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from curation.errors import UserError
from democorpus.captions import FACES, PHOTOS, TEXT_CARDS, WATERMARKS, Photo, TextCard

__all__ = [
    "FORMATS",
    "CJK_FONT",
    "GENERATOR",
    "DemoDataError",
    "DemoItem",
    "DemoCorpus",
    "parse_formats",
    "build_corpus",
    "write_corpus",
    "check_out",
    "manifest",
]

FORMATS = ("folder", "webdataset", "jsonl")
CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
GENERATOR = "curate demo-data"
MANIFEST_VERSION = 1
SHARD_NAME = "shard-00000.tar"

# Share of the corpus each layout receives when all three are written.
_LAYOUT_SHARE = {"folder": 0.55, "webdataset": 0.25, "jsonl": 0.20}

# Where each package keeps its sample files, relative to the package folder. Found with
# importlib's find_spec so building the corpus does not import scikit-learn or matplotlib.
_PACKAGE_DATA = {"skimage": "data", "sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}

# Photos that get near-duplicates and degraded copies (real photographs with enough detail).
_VARIANT_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "retina",
    "rocket",
    "motorcycle",
    "china",
    "flower",
    "grace_hopper",
    "immunohistochemistry",
    "page",
)
_NEAR_DUP_OPS = ("crop", "resize", "jpeg", "watermark", "colour", "hflip", "frame", "crop_jpeg")
_DEGRADE_OPS = ("blur", "noise", "dark", "low_res")

# Region crops: (photo, crop width, crop height, x range, y range) in source pixels. Each keeps
# the photo's main subject, so the photo's short caption and tags stay true; they keep well under
# 70% of the area, so they are *not* near-duplicates (only related by origin).
_REGION_CROPS = (
    ("hubble_deep_field", 1000, 250, (0, 0), (0, 622)),  # 4:1 panorama
    ("china", 640, 200, (0, 0), (100, 130)),  # ~3:1 panorama through the tower
    ("rocket", 240, 427, (190, 210), (0, 0)),  # 9:16 portrait around the rocket
    ("flower", 260, 427, (165, 185), (0, 0)),  # portrait around the dahlia
    ("astronaut", 340, 510, (60, 90), (0, 2)),  # 2:3 portrait
    ("grass", 512, 128, (0, 0), (0, 384)),  # 4:1 banner
    ("brick", 160, 512, (0, 352), (0, 0)),  # 1:3.2 tall strip
    ("gravel", 512, 170, (0, 0), (0, 342)),  # 3:1 panorama
)


class DemoDataError(UserError, RuntimeError):
    """The corpus cannot be built or written (missing package/font, output folder not ours)."""


class Captions(NamedTuple):
    """The captions available for an item; ``long`` entries may be None."""

    en: tuple[str, str | None, str]  # short, long, tags
    zh: tuple[str, str | None, str]
    alt: str


@dataclass
class DemoItem:
    """One image of the corpus, its ground truth, and (after layout assignment) where it goes."""

    origin: str  # key of the source photo (PHOTOS), "lfw_subset", or "rendered"
    role: str  # original | near_duplicate | degraded | region_crop | text | face | exact_duplicate
    image: bytes
    format: str  # JPEG | PNG
    width: int
    height: int
    pool: Captions
    transforms: list[dict] = field(default_factory=list)
    near_dup_group: str | None = None
    degradations: list[str] = field(default_factory=list)
    text: dict | None = None
    copy_of: DemoItem | None = None
    # set by layout assignment
    id: str = ""
    layout: str = ""
    sidecar: str | None = None  # folder only: json | txt | None
    captions: list[dict] = field(default_factory=list)
    key: str | None = None  # webdataset key

    @property
    def ext(self) -> str:
        return "jpg" if self.format == "JPEG" else "png"

    @property
    def path(self) -> str:
        """Where the image lives, relative to the corpus root."""
        if self.layout == "folder":
            return f"folder/{self.id}.{self.ext}"
        if self.layout == "jsonl":
            return f"jsonl/images/{self.id}.{self.ext}"
        return f"webdataset/{SHARD_NAME}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


@dataclass
class DemoCorpus:
    seed: int
    formats: tuple[str, ...]
    items: list[DemoItem]
    font: str

    def summary(self) -> dict:
        """Counts a person wants to see after a build (also stored in the manifest)."""
        by_layout = {
            f: {"images": sum(i.layout == f for i in self.items), "bytes": sum(len(i.image) for i in self.items if i.layout == f)}
            for f in self.formats
        }
        groups = _groups(self.items)
        text = [i for i in self.items if i.text]
        sizes = [(i.width, i.height) for i in self.items]
        return {
            "images": len(self.items),
            "image_bytes": sum(len(i.image) for i in self.items),
            "by_layout": by_layout,
            "by_role": {r: sum(i.role == r for i in self.items) for r in sorted({i.role for i in self.items})},
            "near_dup_groups": len(groups),
            "near_dup_items": sum(len(v) for v in groups.values()),
            "exact_duplicates": sum(i.copy_of is not None for i in self.items),
            "text_images": len(text),
            "text_mentioned_in_captions": sum(i.text["caption_mentions_text"] for i in text),
            "degraded": sum(bool(i.degradations) for i in self.items),
            "min_side": min(min(s) for s in sizes),
            "max_side": max(max(s) for s in sizes),
            "aspect_range": [round(min(w / h for w, h in sizes), 3), round(max(w / h for w, h in sizes), 3)],
        }


# --- inputs ------------------------------------------------------------------------------------


def parse_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    """'folder,jsonl' -> ('folder', 'jsonl') in canonical order; unknown names are an error."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise DemoDataError(f"--formats: unknown layout(s) {bad or names!r}; choose one or more of {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def _data_dir(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataError(
            f"the demo corpus needs the {package!r} package for its sample photos; install the demo extra: pip install 'zcurate[demo]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _PACKAGE_DATA[package]


def _read_source(photo: Photo) -> bytes:
    path = _data_dir(photo.package) / photo.file
    if not path.is_file():
        raise DemoDataError(f"sample file {path} is missing from the installed {photo.package} (a version without it?)")
    return path.read_bytes()


def _check_font(font_path: Path) -> Path:
    if not Path(font_path).is_file():
        raise DemoDataError(
            f"CJK font not found at {font_path}: the demo corpus renders Chinese text with WenQuanYi Micro Hei; "
            "install the Debian package fonts-wqy-microhei (apt-get install fonts-wqy-microhei)"
        )
    return Path(font_path)


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: CJK needs no shaping, and it gives the same glyph positions with or without libraqm
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


# --- encoding and pixel operations -------------------------------------------------------------


def _flatten(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB or L for JPEG: transparency composited onto white (what a browser shows)."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("RGBA", "LA", "P", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        _flatten(im).save(buf, "JPEG", quality=int(quality), **kw)
    else:
        im.save(buf, "PNG")
    return buf.getvalue()


def _item(origin: str, role: str, im: Image.Image, pool: Captions, fmt: str = "JPEG", quality: int = 90, **kw) -> DemoItem:
    data = _encode(im, fmt, quality)
    return DemoItem(origin, role, data, fmt, im.width, im.height, pool, **kw)


def _rgb(im: Image.Image) -> Image.Image:
    return _flatten(im).convert("RGB")


def _fit_font(font_path: str, lines: list[str], max_w: int, max_h: int, start: int) -> ImageFont.FreeTypeFont:
    """Largest font (from ``start`` down) whose lines fit in max_w x max_h."""
    size = max(start, 8)
    while size > 8:
        f = _font(font_path, size)
        widths = [f.getbbox(line)[2] for line in lines]
        if max(widths) <= max_w and size * 1.35 * len(lines) <= max_h:
            return f
        size = int(size * 0.9)
    return _font(font_path, 8)


def _draw_lines(
    im: Image.Image,
    lines: list[str],
    box: tuple[int, int, int, int],
    fill,
    font_path: str,
    start_size: int,
    stroke: int = 0,
    stroke_fill=None,
) -> None:
    """Centre ``lines`` in ``box`` with the largest font that fits."""
    x0, y0, x1, y1 = box
    font = _fit_font(font_path, lines, int((x1 - x0) * 0.9), int((y1 - y0) * 0.9), start_size)
    step = font.size * 1.35
    top = (y0 + y1) / 2 - step * (len(lines) - 1) / 2
    d = ImageDraw.Draw(im)
    for k, line in enumerate(lines):
        d.text(((x0 + x1) / 2, top + k * step), line, font=font, fill=fill, anchor="mm", stroke_width=stroke, stroke_fill=stroke_fill)


def _near_dup(
    im: Image.Image, op: str, rng: np.random.Generator, font_path: str, mark: str = WATERMARKS[0]
) -> tuple[Image.Image, list[dict], int, dict | None]:
    """Apply one near-duplicate operation: returns (image, transform records, JPEG quality, text)."""
    w, h = im.size
    quality = int(rng.integers(82, 95))
    text = None
    if op in ("crop", "crop_jpeg"):
        kx, ky = rng.uniform(0.85, 0.95, 2)
        cw, ch = round(w * kx), round(h * ky)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        rec = {"op": "crop", "box": [x0, y0, x0 + cw, y0 + ch]}
        if op == "crop_jpeg":  # a crop saved again at middling quality: two steps
            quality = int(rng.integers(30, 46))
            return im, [rec, {"op": "jpeg", "quality": quality}], quality, text
    elif op == "resize":
        s = float(rng.uniform(0.4, 0.7))
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
        rec = {"op": "resize", "size": list(im.size)}
    elif op == "jpeg":
        quality = int(rng.integers(8, 20))
        rec = {"op": "jpeg"}
    elif op == "watermark":
        base = _rgb(im).convert("RGBA")
        layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
        alpha = int(rng.integers(110, 170))
        where = str(rng.choice(["centre", "bottom_right"]))
        if where == "centre":
            box = (0, int(h * 0.35), w, int(h * 0.65))
        else:
            box = (int(w * 0.45), int(h * 0.82), int(w * 0.98), int(h * 0.98))
        _draw_lines(
            layer,
            [mark],
            box,
            (255, 255, 255, alpha),
            font_path,
            max(14, w // 9),
            stroke=max(1, w // 300),
            stroke_fill=(0, 0, 0, alpha // 2),
        )
        im = Image.alpha_composite(base, layer).convert("RGB")
        rec = {"op": "watermark", "text": mark, "position": where, "alpha": alpha}
        text = {"lines": [mark], "kind": "watermark"}
    elif op == "colour":
        gains = rng.uniform(0.7, 1.3, 3)
        arr = np.asarray(_rgb(im), dtype=np.float32) * gains
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        rec = {"op": "colour", "gains": [round(float(g), 3) for g in gains]}
    elif op == "hflip":
        im = ImageOps.mirror(im)
        rec = {"op": "hflip"}
    elif op == "frame":
        border = max(4, round(min(w, h) * float(rng.uniform(0.05, 0.09))))
        colour = str(rng.choice(["white", "black"]))
        im = ImageOps.expand(_rgb(im), border=border, fill=colour)
        rec = {"op": "frame", "border": border, "colour": colour}
    else:
        raise ValueError(op)
    rec["quality"] = quality
    return im, [rec], quality, text


def _degrade(im: Image.Image, op: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Make a low-quality copy: blurred, noisy, dark, or low resolution upscaled back."""
    w, h = im.size
    if op == "blur":
        r = float(rng.uniform(3.0, 5.0))
        return im.filter(ImageFilter.GaussianBlur(r)), {"op": "blur", "radius": round(r, 2)}
    if op == "noise":
        sigma = float(rng.uniform(18, 30))
        arr = np.asarray(im, dtype=np.float32)
        arr = arr + rng.normal(0.0, sigma, arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), im.mode), {"op": "noise", "sigma": round(sigma, 2)}
    if op == "dark":
        f = float(rng.uniform(0.18, 0.32))
        return ImageEnhance.Brightness(im).enhance(f), {"op": "dark", "brightness": round(f, 3)}
    if op == "low_res":
        k = int(rng.integers(6, 9))
        small = im.resize((max(1, w // k), max(1, h // k)), Image.BILINEAR)
        return small.resize((w, h), Image.BICUBIC), {"op": "low_res", "factor": k}
    raise ValueError(op)


def _render_card(card: TextCard, base: Image.Image | None, font_path: str) -> Image.Image:
    """Draw a text card: a plain sign/poster/banner, or text on a photo (banner, title, meme, greeting)."""
    lines = list(card.lines)
    if card.style == "greeting":
        w, h = card.size
        im = Image.new("RGB", (w, h), card.bg)
        art = base.convert("RGBA")
        art.thumbnail((int(h * 0.55), int(h * 0.55)))
        im.paste(art, ((w - art.width) // 2, int(h * 0.06)), art)
        _draw_lines(im, lines, (0, int(h * 0.62), w, h), card.fg, font_path, h // 7)
        return im
    if base is None:
        w, h = card.size
        im = Image.new("RGB", (w, h), card.bg)
        if card.style == "sign":
            m = max(6, min(w, h) // 20)
            ImageDraw.Draw(im).rectangle((m, m, w - m, h - m), outline=card.fg, width=max(3, m // 2))
        _draw_lines(im, lines, (0, 0, w, h), card.fg, font_path, h // (len(lines) + 1))
        return im
    im = _rgb(base)
    w, h = im.size
    if card.style == "banner":  # a dark band along the bottom with the text
        band = Image.new("RGBA", (w, int(h * 0.2)), (0, 0, 0, 150))
        rgba = im.convert("RGBA")
        rgba.alpha_composite(band, (0, h - band.height))
        im = rgba.convert("RGB")
        _draw_lines(im, lines, (0, h - band.height, w, h), card.fg, font_path, band.height // 2)
    elif card.style == "title":
        _draw_lines(
            im,
            lines,
            (0, 0, w, int(h * 0.22)),
            card.fg,
            font_path,
            int(h * 0.12),
            stroke=2,
            stroke_fill="#ffffff" if card.fg != "#ffffff" else "#000000",
        )
    elif card.style == "meme":
        top, bottom = lines[0], lines[-1]
        _draw_lines(im, [top], (0, 0, w, int(h * 0.22)), card.fg, font_path, int(h * 0.14), stroke=3, stroke_fill="#000000")
        _draw_lines(im, [bottom], (0, int(h * 0.78), w, h), card.fg, font_path, int(h * 0.14), stroke=3, stroke_fill="#000000")
    else:
        raise ValueError(card.style)
    return im


# --- the build ---------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def _text_langs(lines: list[str]) -> list[str]:
    s = " ".join(lines)
    return [lang for lang, rx in (("en", _LATIN), ("zh", _CJK)) if rx.search(s)]


def _pool(photo: Photo, long: bool = True) -> Captions:
    en, zh = photo.en, photo.zh
    if not long:
        en, zh = (en[0], None, en[2]), (zh[0], None, zh[2])
    return Captions(en, zh, photo.alt)


def _card_pool(card: TextCard, mention: bool) -> Captions:
    if mention:
        return Captions((card.en_mention, None, card.tags_en), (card.zh_mention, None, card.tags_zh), card.en_mention)
    if card.en_plain is None:  # text on a photo that the caption ignores: the photo's own captions
        return _pool(PHOTOS[card.base])
    return Captions((card.en_plain, None, card.tags_en), (card.zh_plain, None, card.tags_zh), card.en_plain)


def build_corpus(
    seed: int = 0,
    formats: Iterable[str] = FORMATS,
    font_path: Path | str = CJK_FONT,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoCorpus:
    """Build the corpus in memory (about 115 images, 6-8 MB). Same seed -> same bytes.

    ``on_progress(done, total)`` is called after each rendered image.
    """
    formats = parse_formats(list(formats))
    font = str(_check_font(Path(font_path)))
    rng = np.random.default_rng(seed)

    raw = {k: _read_source(p) for k, p in PHOTOS.items()}
    images: dict[str, Image.Image] = {}

    def src(key: str) -> Image.Image:
        if key not in images:
            im = Image.open(io.BytesIO(raw[key]))
            im.load()
            images[key] = im
        return images[key]

    faces = np.load(_data_dir("skimage") / FACES.file)

    # Plan with the master generator; each job then draws from its own child generator so a job's
    # random choices do not depend on how many numbers the jobs before it used.
    jobs: list[Callable[[np.random.Generator], DemoItem]] = []

    for key, photo in PHOTOS.items():
        jobs.append(lambda r, key=key, photo=photo: _original(key, photo, raw[key], src(key)))

    face_ids = sorted(int(i) for i in rng.choice(100, 10, replace=False))  # the first 100 are faces
    for n, idx in enumerate(face_ids):
        jobs.append(lambda r, idx=idx, n=n: _face(faces[idx], idx, native=n % 4 == 0))

    near = [str(k) for k in rng.choice(_VARIANT_PHOTOS, 12, replace=False)]
    n_marks = 0
    for key in near:
        for op in rng.choice(_NEAR_DUP_OPS, int(rng.integers(3, 6)), replace=False):
            mark = WATERMARKS[n_marks % len(WATERMARKS)]
            n_marks += op == "watermark"
            jobs.append(lambda r, key=key, op=str(op), mark=mark: _variant(key, src(key), op, r, font, mark))
    # One CMYK and one progressive JPEG: valid files that naive decoders get wrong.
    for key, mode in zip(rng.choice(_VARIANT_PHOTOS, 2, replace=False), ("cmyk", "progressive")):
        jobs.append(lambda r, key=str(key), mode=mode: _reencode(key, src(key), mode))

    for op in _DEGRADE_OPS:
        for key in rng.choice(_VARIANT_PHOTOS, 2, replace=False):
            jobs.append(lambda r, key=str(key), op=op: _degraded(key, src(key), op, r))

    for spec in _REGION_CROPS:
        jobs.append(lambda r, spec=spec: _region(spec, src(spec[0]), r))

    mention = rng.permutation(len(TEXT_CARDS)) < (len(TEXT_CARDS) + 1) // 2
    for card, m in zip(TEXT_CARDS, mention):
        jobs.append(lambda r, card=card, m=bool(m): _text_item(card, src(card.base) if card.base else None, m, font))

    children = np.random.SeedSequence(seed).spawn(len(jobs))
    items: list[DemoItem] = []
    for k, (job, child) in enumerate(zip(jobs, children)):
        items.append(job(np.random.default_rng(child)))
        if on_progress:
            on_progress(k + 1, len(jobs))

    # Byte-for-byte copies of a few JPEGs (a repost under another name, with other captions).
    candidates = [i for i in items if i.format == "JPEG" and i.role in ("original", "near_duplicate", "text")]
    for k in sorted(rng.choice(len(candidates), 6, replace=False)):
        s = candidates[int(k)]
        s.near_dup_group = s.near_dup_group or f"{s.origin}-copy"  # a copy and its source always group
        items.append(
            DemoItem(
                s.origin,
                "exact_duplicate",
                s.image,
                s.format,
                s.width,
                s.height,
                s.pool,
                transforms=[{"op": "copy"}],
                near_dup_group=s.near_dup_group,
                degradations=list(s.degradations),
                text=dict(s.text) if s.text else None,
                copy_of=s,
            )
        )

    # A group needs two members to be a group.
    sizes: dict[str, int] = {}
    for i in items:
        if i.near_dup_group:
            sizes[i.near_dup_group] = sizes.get(i.near_dup_group, 0) + 1
    for i in items:
        if i.near_dup_group and sizes[i.near_dup_group] < 2:
            i.near_dup_group = None

    _assign(items, formats, rng)
    return DemoCorpus(seed, formats, items, font)


def _original(key: str, photo: Photo, data: bytes, im: Image.Image) -> DemoItem:
    """The photo itself: the package's file byte for byte, or re-encoded as a web JPEG."""
    group = key if key in _VARIANT_PHOTOS else None
    common = dict(near_dup_group=group, degradations=list(photo.degradations))
    if photo.keep_bytes:
        return DemoItem(key, "original", data, im.format, im.width, im.height, _pool(photo), transforms=[{"op": "as_shipped"}], **common)
    return _item(key, "original", im, _pool(photo), "JPEG", 90, transforms=[{"op": "reencode", "quality": 90}], **common)


def _face(arr: np.ndarray, idx: int, native: bool) -> DemoItem:
    im = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    tr = [{"op": "select", "index": idx}]
    if native:  # 25x25 thumbnails, as found on the web
        return _item("lfw_subset", "face", im, _pool(FACES), "PNG", transforms=tr, degradations=["low_res"])
    im = im.resize((100, 100), Image.BICUBIC)
    tr.append({"op": "upscale", "size": [100, 100]})
    return _item("lfw_subset", "face", im, _pool(FACES), "JPEG", 92, transforms=tr, degradations=["low_res"])


def _variant(key: str, im: Image.Image, op: str, rng: np.random.Generator, font: str, mark: str) -> DemoItem:
    out, recs, quality, text = _near_dup(im, op, rng, font, mark)
    if text:
        text = {**text, "langs": _text_langs(text["lines"])}
    degr = ["jpeg_artifacts"] if quality < 25 else []
    return _item(
        key, "near_duplicate", out, _pool(PHOTOS[key]), "JPEG", quality, transforms=recs, near_dup_group=key, degradations=degr, text=text
    )


def _reencode(key: str, im: Image.Image, mode: str) -> DemoItem:
    rgb, buf = _rgb(im), io.BytesIO()
    if mode == "cmyk":
        rgb.convert("CMYK").save(buf, "JPEG", quality=88)
    else:
        rgb.save(buf, "JPEG", quality=88, progressive=True)
    return DemoItem(
        key,
        "near_duplicate",
        buf.getvalue(),
        "JPEG",
        rgb.width,
        rgb.height,
        _pool(PHOTOS[key]),
        transforms=[{"op": mode, "quality": 88}],
        near_dup_group=key,
    )


def _degraded(key: str, im: Image.Image, op: str, rng: np.random.Generator) -> DemoItem:
    out, rec = _degrade(_flatten(im), op, rng)
    return _item(
        key,
        "degraded",
        out,
        _pool(PHOTOS[key]),
        "JPEG",
        88,
        transforms=[rec],
        near_dup_group=key,
        degradations=[{"blur": "blurred", "noise": "noisy"}.get(op, op)],
    )


def _region(spec, im: Image.Image, rng: np.random.Generator) -> DemoItem:
    key, cw, ch, (xa, xb), (ya, yb) = spec
    x0, y0 = int(rng.integers(xa, xb + 1)), int(rng.integers(ya, yb + 1))
    box = (x0, y0, min(x0 + cw, im.width), min(y0 + ch, im.height))
    out = im.crop(box)
    area = out.width * out.height / (im.width * im.height)
    return _item(
        key,
        "region_crop",
        out,
        _pool(PHOTOS[key], long=False),
        "JPEG",
        90,
        transforms=[{"op": "crop", "box": list(box), "area_fraction": round(area, 3)}],
    )


def _text_item(card: TextCard, base: Image.Image | None, mention: bool, font: str) -> DemoItem:
    im = _render_card(card, base, font)
    text = {"lines": list(card.lines), "kind": "rendered", "langs": _text_langs(list(card.lines))}
    full_frame = card.base is not None and card.style != "greeting"
    tr = [{"op": "render_text", "card": card.key, "style": card.style}]
    origin = card.base or "rendered"
    if card.base is None:  # flat colours: a PNG, as a designer would export it
        return _item(origin, "text", im, _card_pool(card, mention), "PNG", transforms=tr, text=text)
    return _item(
        origin,
        "text",
        im,
        _card_pool(card, mention),
        "JPEG",
        90,
        transforms=tr,
        text=text,
        near_dup_group=card.base if full_frame else None,
    )


def _assign(items: list[DemoItem], formats: tuple[str, ...], rng: np.random.Generator) -> None:
    """Shuffle, name, spread over the layouts, and choose which captions each layout carries."""
    order = rng.permutation(len(items))
    shuffled = [items[int(k)] for k in order]
    items[:] = shuffled
    share = np.array([_LAYOUT_SHARE[f] for f in formats])
    counts = np.floor(share / share.sum() * len(items)).astype(int)
    counts[0] += len(items) - counts.sum()
    layouts = [f for f, c in zip(formats, counts) for _ in range(c)]
    n_folder = 0
    for n, (item, layout) in enumerate(zip(items, layouts)):
        item.id = f"demo-{n:04d}"
        item.layout = layout
        if layout == "folder":
            # most images get a JSON sidecar; every 5th a plain .txt; every 12th no caption at all
            item.sidecar = None if n_folder % 12 == 5 else "txt" if n_folder % 5 == 2 else "json"
            n_folder += 1
        if layout == "webdataset" and item.format != "JPEG":  # img2dataset writes JPEG only
            im = Image.open(io.BytesIO(item.image))
            item.image, item.format = _encode(im, "JPEG", 92), "JPEG"
            item.transforms = item.transforms + [{"op": "to_jpeg", "quality": 92}]
        item.captions = _present(item, rng)
    keys = 0
    for item in items:
        if item.layout == "webdataset":
            item.key = f"{keys:09d}"
            keys += 1
        if item.text is not None:
            item.text["content"] = "\n".join(item.text["lines"])
            item.text["caption_mentions_text"] = any(line in c["text"] for line in item.text["lines"] for c in item.captions)


def _cap(text: str, kind: str, lang: str) -> dict:
    return {"text": text, "kind": kind, "lang": lang}


def _present(item: DemoItem, rng: np.random.Generator) -> list[dict]:
    """The captions this item's layout carries, as a real source of that kind would."""
    (en_s, en_l, en_t), (zh_s, zh_l, zh_t), alt = item.pool
    if item.layout == "folder":
        if item.sidecar is None:
            return []
        if item.sidecar == "txt":
            return [_cap(zh_s, "short", "zh")] if rng.random() < 0.35 else [_cap(en_s, "short", "en")]
        caps = [_cap(en_s, "short", "en")]
        with_long, with_tags = rng.random() < 0.7, rng.random() < 0.6
        if en_l and with_long:
            caps.append(_cap(en_l, "long", "en"))
        if with_tags:
            caps.append(_cap(en_t, "tags", "en"))
        caps.append(_cap(zh_s, "short", "zh"))
        if zh_l and with_long:
            caps.append(_cap(zh_l, "long", "zh"))
        if with_tags:
            caps.append(_cap(zh_t, "tags", "zh"))
        if rng.random() < 0.3:
            caps.append(_cap(alt, "alt", "en"))
        return caps
    if item.layout == "webdataset":  # one alt text, like a crawled pair; some from Chinese sites
        return [_cap(zh_s, "alt", "zh")] if rng.random() < 0.25 else [_cap(alt, "alt", "en")]
    en = _cap(en_l, "long", "en") if en_l and rng.random() < 0.3 else _cap(en_s, "short", "en")
    zh = _cap(zh_l, "long", "zh") if zh_l and rng.random() < 0.3 else _cap(zh_s, "short", "zh")
    return [en, zh]


def _groups(items: list[DemoItem]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in sorted(items, key=lambda i: i.id):
        if i.near_dup_group:
            out.setdefault(i.near_dup_group, []).append(i.id)
    return dict(sorted(out.items()))


# --- writing -----------------------------------------------------------------------------------


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def check_out(out: Path) -> None:
    """An output folder is usable when absent, empty, or an earlier demo corpus (replaced)."""
    if out.exists() and not out.is_dir():
        raise DemoDataError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / "manifest.json"
    try:
        ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DemoDataError(
            f"{out} is not empty and holds no demo corpus (no manifest.json of ours); choose a new folder; nothing was written or deleted"
        )


def manifest(corpus: DemoCorpus) -> dict:
    """Ground truth for every item: origin, transforms, duplicate groups, rendered text, captions."""
    sources = {
        k: {
            "package": p.package,
            "file": p.file,
            "title": p.title,
            "license": p.license,
            "attribution": p.attribution,
            "kind": p.kind,
            "text_in_image": p.text_in_image,
            "degradations": list(p.degradations),
        }
        for k, p in PHOTOS.items()
    }
    sources["lfw_subset"] = {
        "package": FACES.package,
        "file": FACES.file,
        "title": FACES.title,
        "license": FACES.license,
        "attribution": FACES.attribution,
        "kind": "photo",
        "text_in_image": None,
        "degradations": ["low_res"],
    }
    sources["rendered"] = {
        "package": None,
        "file": None,
        "title": "text rendered by curate demo-data",
        "license": "CC0",
        "attribution": "generated",
        "kind": "graphic",
        "text_in_image": None,
        "degradations": [],
    }
    items = []
    for i in sorted(corpus.items, key=lambda i: i.id):
        items.append(
            {
                "id": i.id,
                "layout": i.layout,
                "path": i.path,
                "key": i.key,
                "sidecar": i.sidecar,
                "format": i.format,
                "width": i.width,
                "height": i.height,
                "bytes": len(i.image),
                "sha256": i.sha256,
                "origin": i.origin,
                "role": i.role,
                "transforms": i.transforms,
                "near_dup_group": i.near_dup_group,
                "exact_dup_of": i.copy_of.id if i.copy_of else None,
                "degradations": i.degradations,
                "text": {k: i.text[k] for k in ("content", "lines", "langs", "kind", "caption_mentions_text")} if i.text else None,
                "captions": i.captions,
            }
        )
    return {
        "generator": GENERATOR,
        "manifest_version": MANIFEST_VERSION,
        "seed": corpus.seed,
        "formats": list(corpus.formats),
        "font": corpus.font,
        "summary": corpus.summary(),
        "sources": sources,
        "near_dup_groups": _groups(corpus.items),
        "items": items,
    }


def write_corpus(corpus: DemoCorpus, out: Path | str, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the corpus under ``out`` (layouts + manifest.json) and return its summary.

    Everything is written to a staging folder next to ``out`` first and moved into place at the
    end, so an interrupted run never leaves a half corpus that looks complete.
    """
    out = Path(out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        items = sorted(corpus.items, key=lambda i: i.id)
        tar = None
        if "webdataset" in corpus.formats:
            (stage / "webdataset").mkdir()
            tar = tarfile.open(stage / "webdataset" / SHARD_NAME, "w", format=tarfile.USTAR_FORMAT)
        rows = []
        for n, i in enumerate(items):
            if i.layout == "folder":
                d = stage / "folder"
                d.mkdir(exist_ok=True)
                (d / f"{i.id}.{i.ext}").write_bytes(i.image)
                if i.sidecar == "txt":
                    (d / f"{i.id}.txt").write_text(i.captions[0]["text"] + "\n", encoding="utf-8")
                elif i.sidecar == "json":
                    meta = {"captions": i.captions, "origin": i.origin}
                    if i.origin in PHOTOS:
                        meta.update(license=PHOTOS[i.origin].license, attribution=PHOTOS[i.origin].attribution)
                    (d / f"{i.id}.json").write_text(_dumps(meta), encoding="utf-8")
            elif i.layout == "jsonl":
                d = stage / "jsonl" / "images"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{i.id}.{i.ext}").write_bytes(i.image)
                rows.append(
                    {"image": f"images/{i.id}.{i.ext}", "caption": i.captions[0]["text"], "caption_zh": i.captions[1]["text"], "id": i.id}
                )
            else:
                cap = i.captions[0]["text"]
                meta = {
                    "url": f"demo://{i.origin}/{i.id}.jpg",
                    "key": i.key,
                    "caption": cap,
                    "status": "success",
                    "error_message": None,
                    "width": i.width,
                    "height": i.height,
                    "original_width": i.width,
                    "original_height": i.height,
                    "sha256": i.sha256,
                }
                _tar_add(tar, f"{i.key}.jpg", i.image)
                _tar_add(tar, f"{i.key}.txt", cap.encode("utf-8"))
                _tar_add(tar, f"{i.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            if on_progress:
                on_progress(n + 1, len(items))
        if tar is not None:
            tar.close()
        if rows:
            (stage / "jsonl" / "captions.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
            )
        (stage / "manifest.json").write_text(_dumps(manifest(corpus)), encoding="utf-8")
        # replace an earlier corpus's parts (all three layouts: it may have had others), then move in
        for name in (*FORMATS, "manifest.json"):
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for entry in sorted(stage.iterdir()):
            entry.rename(out / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return corpus.summary()
