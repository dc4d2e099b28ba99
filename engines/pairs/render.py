"""Text-editing pairs with exact ground truth: sign-like text rendered onto a real photo.

One pair is a source image, a target image and an instruction in English and Chinese:

- ``remove``: the source has text, the target is the photo itself (the clean photo is the exact
  ground truth: nothing was painted over, so nothing has to be inpainted);
- ``add``: the reverse (source clean, target with text);
- ``replace``: the same box with one text, then another ("replace 'OPEN' with 'CLOSED'").

Where the text goes: the flattest place of the photo that fits it. A box-sized window slides over
a map of local variance (7 x 7 windows of luma, on a copy at most 256 px wide), and the placement is
drawn at random among the 5 % lowest-cost windows (so text lands on a wall, the sky, a table
top rather than on a face, and not always in the same spot). Text height is 6-11 % of the short
side of the photo.

Why the pixels outside the box are untouched by construction: the text (and the sign behind it)
is drawn onto a crop of the box and pasted back, so ``source != target`` can only hold inside
``box``. The box includes the sign or the text's ink box plus its outline, with a 2 px pad.

Everything is deterministic given the seed (``numpy.random.default_rng(seed)``); the font is
WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``: Latin and CJK in one file), found with
``fc-list``. Pure functions on NumPy arrays: no I/O besides reading the font.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from curation.errors import UserError

__all__ = [
    "KINDS",
    "SIGN_WORDS",
    "EditPair",
    "Layout",
    "FontMissing",
    "find_font",
    "local_variance",
    "pick_placement",
    "plan_layout",
    "draw_text",
    "render_pair",
    "instructions",
    "where_words",
    "encode_image",
    "RENDER_VERSION",
]

RENDER_VERSION = "render v1"
KINDS = ("replace", "remove", "add")

SIGN_WORDS: tuple[tuple[str, str], ...] = (
    ("OPEN", "营业中"),
    ("CLOSED", "休息"),
    ("SALE", "促销"),
    ("EXIT", "出口"),
    ("ENTRANCE", "入口"),
    ("PARKING", "停车场"),
    ("HOTEL", "酒店"),
    ("CAFE", "咖啡馆"),
    ("BAKERY", "面包店"),
    ("PHARMACY", "药店"),
    ("TICKETS", "售票处"),
    ("WELCOME", "欢迎光临"),
    ("NO ENTRY", "禁止入内"),
    ("RESTROOM", "洗手间"),
    ("TAXI", "出租车"),
    ("BUS STOP", "公交车站"),
    ("SOLD OUT", "已售完"),
    ("DANGER", "危险"),
    ("QUIET", "请安静"),
    ("BOOKS", "书店"),
    ("MARKET", "市场"),
    ("NOODLES", "面馆"),
    ("FRESH FRUIT", "新鲜水果"),
    ("INFORMATION", "服务台"),
)
"""Sign-like words, English with a Chinese sign of the same meaning. Every entry has at least
three Latin letters or two Chinese characters: OCR's short-line filters (engines.profiling.ocr)
treat one- or two-glyph Latin lines as suspect."""

# sign colours (background, text, border): a shop sign, an exit sign, a road sign, a notice
SIGN_COLORS: tuple[tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((200, 30, 35), (255, 255, 255), (120, 15, 20)),
    ((20, 120, 60), (255, 255, 255), (10, 70, 35)),
    ((25, 70, 160), (255, 255, 255), (15, 40, 100)),
    ((245, 245, 240), (20, 20, 20), (150, 150, 150)),
    ((250, 205, 40), (20, 20, 20), (160, 120, 10)),
    ((25, 25, 25), (250, 220, 60), (90, 90, 90)),
)
STYLES = ("sign", "plain")
TEXT_HEIGHT = (0.06, 0.11)  # glyph size as a share of the photo's short side
MIN_FONT_PX = 16
PAD = 2  # px around the ink (antialiasing) in the box
EDGE_MARGIN = 0.03  # share of each side kept free between the box and the frame
FLAT_QUANTILE = 0.05  # the placement is drawn among the windows with the lowest 5 % cost
WORK_SIDE = 256  # the variance map is computed on a copy this wide at most

FONT_FALLBACKS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc")


class FontMissing(UserError, RuntimeError):
    """No CJK font to render Chinese with."""


@functools.lru_cache(maxsize=1)
def find_font() -> str:
    """The path of WenQuanYi Micro Hei (``ZCURATE_PAIRS_FONT`` overrides): ``fc-list`` first,
    then Debian's path. Any font ``fc-list`` lists for ``:lang=zh`` is the last resort."""
    env = os.environ.get("ZCURATE_PAIRS_FONT")
    if env:
        if not os.path.isfile(env):
            raise FontMissing(f"ZCURATE_PAIRS_FONT={env} is not a file")
        return env
    listed: list[str] = []
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=30).stdout
            listed = sorted(line.split(":", 1)[0].strip() for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError):
            listed = []
    for path in [p for p in listed if "wqy-microhei" in p.lower()] + list(FONT_FALLBACKS) + listed:
        if os.path.isfile(path):
            return path
    raise FontMissing(
        "no CJK font found (fc-list :lang=zh lists none); install the Debian package fonts-wqy-microhei "
        "(apt-get install fonts-wqy-microhei) or set ZCURATE_PAIRS_FONT to a .ttf/.ttc with Chinese glyphs"
    )


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: no shaping needed for these scripts; same glyph positions with or without libraqm
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


# --- where the text goes ----------------------------------------------------------------------


def local_variance(gray: np.ndarray, window: int = 7) -> np.ndarray:
    """Per-pixel variance of luma in a ``window`` x ``window`` neighbourhood (float32): near 0 on
    flat areas (a wall, the sky, even under a smooth gradient), high on texture and edges."""
    import cv2

    g = gray.astype(np.float32)
    mu = cv2.blur(g, (window, window))
    return np.maximum(cv2.blur(g * g, (window, window)) - mu * mu, 0.0)


def pick_placement(gray: np.ndarray, box_w: int, box_h: int, rng: np.random.Generator) -> tuple[int, int, float] | None:
    """Top-left (x, y) of a ``box_w`` x ``box_h`` box on the flattest part of ``gray`` (H x W
    luma), and its cost (mean local variance under it); None when the box does not fit inside
    the frame's margins. Drawn at random among the lowest ``FLAT_QUANTILE`` of windows."""
    import cv2

    h, w = gray.shape[:2]
    s = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else gray
    sh, sw = small.shape[:2]
    bw, bh = max(1, int(np.ceil(box_w * s))), max(1, int(np.ceil(box_h * s)))
    mx, my = int(np.ceil(EDGE_MARGIN * sw)), int(np.ceil(EDGE_MARGIN * sh))
    nx, ny = sw - 2 * mx - bw + 1, sh - 2 * my - bh + 1
    if nx < 1 or ny < 1 or box_w > w or box_h > h:
        return None
    integral = cv2.integral(local_variance(small))  # (sh + 1) x (sw + 1), float64
    y0, x0 = np.arange(my, my + ny), np.arange(mx, mx + nx)
    yy, xx = np.meshgrid(y0, x0, indexing="ij")
    total = integral[yy + bh, xx + bw] - integral[yy, xx + bw] - integral[yy + bh, xx] + integral[yy, xx]
    cost = total / (bw * bh)
    flat = np.flatnonzero(cost.ravel() <= np.quantile(cost, FLAT_QUANTILE))
    k = int(flat[rng.integers(len(flat))])
    cy, cx = divmod(k, nx)
    x, y = int(round(x0[cx] / s)), int(round(y0[cy] / s))
    x, y = min(max(0, x), w - box_w), min(max(0, y), h - box_h)
    return x, y, float(cost.ravel()[k])


@dataclass(frozen=True)
class Layout:
    """How and where the text of one pair is drawn (shared by both images of a ``replace``)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in photo pixels
    font_size: int
    style: str  # "sign" or "plain"
    fill: tuple[int, int, int]
    stroke: tuple[int, int, int]
    stroke_width: int
    sign: tuple[int, int, int] | None = None  # sign background
    border: tuple[int, int, int] | None = None


def _ink(text: str, font: ImageFont.FreeTypeFont, stroke_width: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font.getbbox(text, stroke_width=stroke_width))  # type: ignore[return-value]


def _box_size(texts: Sequence[str], font: ImageFont.FreeTypeFont, style: str, size: int, sw: int) -> tuple[int, int]:
    inks = [_ink(t, font, sw) for t in texts]
    tw, th = max(b[2] - b[0] for b in inks), max(b[3] - b[1] for b in inks)
    if style == "sign":
        return tw + 2 * round(0.45 * size) + 2 * PAD, th + 2 * round(0.3 * size) + 2 * PAD
    return tw + 2 * PAD, th + 2 * PAD


def plan_layout(
    photo: np.ndarray, texts: Sequence[str], rng: np.random.Generator, *, style: str | None = None, font_path: str | None = None
) -> Layout | None:
    """Size, style, colours and the placement of a box that holds every text of ``texts`` (both
    texts of a replace), on the flattest part of ``photo`` (H x W x 3 uint8). The font shrinks
    until the box fits; None when even ``MIN_FONT_PX`` does not fit."""
    import cv2

    font_path = font_path or find_font()
    h, w = photo.shape[:2]
    style = style or str(rng.choice(STYLES))
    size = max(MIN_FONT_PX, int(round(rng.uniform(*TEXT_HEIGHT) * min(h, w))))
    gray = cv2.cvtColor(np.ascontiguousarray(photo), cv2.COLOR_RGB2GRAY)
    colors = SIGN_COLORS[int(rng.integers(len(SIGN_COLORS)))]
    while True:
        sw = 0 if style == "sign" else max(1, round(size / 16))
        bw, bh = _box_size(texts, _font(font_path, size), style, size, sw)
        found = pick_placement(gray, bw, bh, rng)
        if found is not None:
            break
        if size <= MIN_FONT_PX:
            return None
        size = max(MIN_FONT_PX, int(size * 0.85))
    x, y, _ = found
    box = (x, y, x + bw, y + bh)
    if style == "sign":
        bg, fg, border = colors
        return Layout(box, size, style, fg, fg, 0, sign=bg, border=border)
    bright = float(gray[y : y + bh, x : x + bw].mean()) > 128
    dark = ((15, 15, 15), (110, 20, 20), (20, 30, 90))[int(rng.integers(3))]
    light = ((255, 255, 255), (255, 235, 80))[int(rng.integers(2))]
    fill, stroke = (dark, (255, 255, 255)) if bright else (light, (10, 10, 10))
    return Layout(box, size, style, fill, stroke, sw)


def draw_text(photo: np.ndarray, text: str, layout: Layout, font_path: str | None = None) -> np.ndarray:
    """A copy of ``photo`` with ``text`` (and its sign) drawn in ``layout.box``: drawn on a crop
    of the box and pasted back, so no pixel outside the box changes."""
    font = _font(font_path or find_font(), layout.font_size)
    x0, y0, x1, y1 = layout.box
    out = np.array(photo, copy=True)
    crop = Image.fromarray(np.ascontiguousarray(out[y0:y1, x0:x1]))
    draw = ImageDraw.Draw(crop)
    bw, bh = x1 - x0, y1 - y0
    if layout.style == "sign":
        radius = max(2, layout.font_size // 5)
        width = max(1, layout.font_size // 20)
        draw.rounded_rectangle((PAD, PAD, bw - 1 - PAD, bh - 1 - PAD), radius=radius, fill=layout.sign, outline=layout.border, width=width)
    b = _ink(text, font, layout.stroke_width)
    origin = (bw / 2 - (b[0] + b[2]) / 2, bh / 2 - (b[1] + b[3]) / 2)  # the ink box centred in the box
    draw.text(origin, text, font=font, fill=layout.fill, stroke_width=layout.stroke_width, stroke_fill=layout.stroke)
    out[y0:y1, x0:x1] = np.asarray(crop)
    return out


# --- instructions -------------------------------------------------------------------------------

_WHERE = {
    ("top", "left"): ("in the top left corner", "左上角"),
    ("top", "center"): ("at the top", "上方"),
    ("top", "right"): ("in the top right corner", "右上角"),
    ("middle", "left"): ("on the left", "左侧"),
    ("middle", "center"): ("in the middle", "中间"),
    ("middle", "right"): ("on the right", "右侧"),
    ("bottom", "left"): ("in the bottom left corner", "左下角"),
    ("bottom", "center"): ("at the bottom", "下方"),
    ("bottom", "right"): ("in the bottom right corner", "右下角"),
}


def where_words(box: Sequence[int], h: int, w: int) -> tuple[str, str]:
    """Where the box's centre is, by thirds of the frame, in English and Chinese."""
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    return _WHERE[(row, col)]


_EN = {
    "replace": ("Replace '{a}' with '{b}'.", "Change the text '{a}' to '{b}'.", "Make the {thing} say '{b}' instead of '{a}'."),
    "remove": ("Remove the {thing} that says '{a}'.", "Erase the text '{a}' {where}.", "Delete '{a}' from the picture."),
    "add": ("Add a {thing} that says '{b}' {where}.", "Put the text '{b}' {where}.", "Write '{b}' {where}."),
}
_ZH = {
    "replace": ("把'{a}'改为'{b}'。", "将文字'{a}'替换为'{b}'。", "把{thing}上的'{a}'改成'{b}'。"),
    "remove": ("去掉写着'{a}'的{thing}。", "擦掉{where}的文字'{a}'。", "从图片中删除'{a}'。"),
    "add": ("在{where}添加写着'{b}'的{thing}。", "在{where}加上文字'{b}'。", "在{where}写上'{b}'。"),
}


def instructions(kind: str, a: str, b: str, style: str, box: Sequence[int], h: int, w: int, rng: np.random.Generator) -> tuple[str, str]:
    """(English, Chinese) instruction; each names the text(s) it is about verbatim, in quotes
    (``a``: the text in the source, ``b``: the one in the target)."""
    where_en, where_zh = where_words(box, h, w)
    thing_en, thing_zh = ("sign", "招牌") if style == "sign" else ("text", "文字")
    if kind == "replace" and style != "sign":
        thing_zh = "图片"
    i, j = int(rng.integers(3)), int(rng.integers(3))
    en = _EN[kind][i].format(a=a, b=b, thing=thing_en, where=where_en)
    zh = _ZH[kind][j].format(a=a, b=b, thing=thing_zh, where=where_zh)
    return en, zh


# --- one pair -----------------------------------------------------------------------------------


@dataclass
class EditPair:
    """Source and target images (H x W x 3 uint8), the instruction, and what changed where."""

    kind: str
    source: np.ndarray
    target: np.ndarray
    instruction_en: str
    instruction_zh: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels of both images
    src_text: str  # "" for add
    tgt_text: str  # "" for remove
    changed_fraction: float  # share of the image's pixels that differ between source and target
    lang: str  # "en" or "zh": the script of the texts
    style: str  # "sign" or "plain"


def render_pair(
    photo: np.ndarray,
    kind: str,
    seed: Any,
    *,
    lang: str | None = None,
    style: str | None = None,
    font_path: str | None = None,
) -> EditPair | None:
    """One editing pair made from ``photo`` (H x W x 3 uint8 RGB), deterministic given ``seed``
    (anything ``numpy.random.default_rng`` takes). None when the photo is too small for legible
    text."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    lang = lang or ("en", "zh")[int(rng.integers(2))]
    li = {"en": 0, "zh": 1}[lang]
    i, j = rng.choice(len(SIGN_WORDS), size=2, replace=False)
    a, b = SIGN_WORDS[int(i)][li], SIGN_WORDS[int(j)][li]
    texts = {"replace": (a, b), "remove": (a,), "add": (b,)}[kind]
    font_path = font_path or find_font()
    photo = np.ascontiguousarray(photo[..., :3], dtype=np.uint8)
    layout = plan_layout(photo, texts, rng, style=style, font_path=font_path)
    if layout is None:
        return None
    if kind == "replace":
        src, tgt = draw_text(photo, a, layout, font_path), draw_text(photo, b, layout, font_path)
    elif kind == "remove":
        src, tgt = draw_text(photo, a, layout, font_path), photo.copy()
    else:
        src, tgt = photo.copy(), draw_text(photo, b, layout, font_path)
    h, w = photo.shape[:2]
    en, zh = instructions(kind, a, b, layout.style, layout.box, h, w, rng)
    changed = float(np.any(src != tgt, axis=-1).mean())
    return EditPair(
        kind=kind,
        source=src,
        target=tgt,
        instruction_en=en,
        instruction_zh=zh,
        box=layout.box,
        src_text=a if kind in ("replace", "remove") else "",
        tgt_text=b if kind in ("replace", "add") else "",
        changed_fraction=changed,
        lang=lang,
        style=layout.style,
    )


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """PNG (lossless: the exact-ground-truth claims hold after decoding) or JPEG at ``quality``
    (4:4:4, no chroma subsampling; pixels outside the box then differ by compression noise)."""
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=4)
    elif fmt == "jpeg":
        im.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")
    return buf.getvalue()
