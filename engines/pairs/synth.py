"""Object-editing pairs with ground truth from instance masks (COCO annotations).

One pair is a real photo (the source, untouched), an edited copy (the target) and an instruction
in English and Chinese that names the object's category:

- ``recolour``: the object's hue is set to a named colour inside its mask ("Make the dog red.");
- ``remove``: the object's mask, dilated, is inpainted (OpenCV Telea or Navier-Stokes);
- ``move``: the object is cut out, its hole inpainted, and it is pasted shifted left or right;
- ``resize``: the same, pasted scaled up or down about the bottom centre of its box (objects
  stand on something: the scaled copy keeps its footing).

Remove, move and resize take the object together with the smaller objects *attached* to it (most
of their box inside its box: the backpack of a person, the cups on a table), so nothing is left
floating where the object was. Recolour changes the object alone.

Why pixels outside the edit region are untouched by construction: every change is a blend
``photo * (1 - a) + edited * a`` with ``a == 0`` outside the region, and an inpainted hole is
copied in through its mask only. The region is the mask itself (recolour), the mask dilated by
``inpaint_dilate(h, w)`` px (remove), or that dilated old mask together with the object's new
mask (move, resize). ``box`` of a pair is the bounding box of its region.

What is exact and what is not: the source is the photo itself, and the target is the photo
outside the region, pixel for pixel. Inside the region, a recolour or a paste is exact given the
mask; an inpainted hole is a plausible fill, not a photograph of what was behind the object (large
holes come out smeared).

Everything is deterministic given the seed (``numpy.random.default_rng(seed)``). Pure functions on
NumPy arrays and plain dicts (the COCO JSON, already parsed): no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.pairs.render import where_words

__all__ = [
    "SYNTH_VERSION",
    "SYNTH_KINDS",
    "COCO_ZH",
    "COLOURS",
    "Skip",
    "SynthPair",
    "decode_segmentation",
    "index_annotations",
    "eligible_objects",
    "attached_objects",
    "refer",
    "inpaint_dilate",
    "dilate",
    "warp_mask",
    "synth_pair",
]

SYNTH_VERSION = "synth v1"
SYNTH_KINDS = ("recolour", "remove", "move", "resize")

INPAINT_RADIUS = 5  # cv2.inpaint's neighbourhood
INPAINT_MAX_PX = 10_000  # a larger hole is inpainted on a shrunk copy (cost grows faster than the hole)
NO_RECOLOUR = frozenset({"person"})  # "make the person green" paints skin too: not an edit worth learning
ATTACHED_INSIDE = 0.6  # a smaller object with this share of its box inside the object's box goes with it
EDGE_PX = 2  # move / resize take only objects whose box keeps this far from the frame
MOVE_MIN = (0.25, 0.08)  # a shift is at least 25 % of the object's width and 8 % of the frame's
MOVE_MAX = 0.4  # and at most 40 % of the frame's width
SCALE_UP = (1.25, 1.5)
SCALE_DOWN = (0.6, 0.8)

COCO_ZH: dict[str, tuple[str, str]] = {
    "person": ("person", "人"),
    "bicycle": ("bicycle", "自行车"),
    "car": ("car", "汽车"),
    "motorcycle": ("motorcycle", "摩托车"),
    "airplane": ("airplane", "飞机"),
    "bus": ("bus", "公交车"),
    "train": ("train", "火车"),
    "truck": ("truck", "卡车"),
    "boat": ("boat", "船"),
    "traffic light": ("traffic light", "红绿灯"),
    "fire hydrant": ("fire hydrant", "消防栓"),
    "stop sign": ("stop sign", "停车标志"),
    "parking meter": ("parking meter", "停车计时器"),
    "bench": ("bench", "长椅"),
    "bird": ("bird", "鸟"),
    "cat": ("cat", "猫"),
    "dog": ("dog", "狗"),
    "horse": ("horse", "马"),
    "sheep": ("sheep", "羊"),
    "cow": ("cow", "牛"),
    "elephant": ("elephant", "大象"),
    "bear": ("bear", "熊"),
    "zebra": ("zebra", "斑马"),
    "giraffe": ("giraffe", "长颈鹿"),
    "backpack": ("backpack", "背包"),
    "umbrella": ("umbrella", "雨伞"),
    "handbag": ("handbag", "手提包"),
    "tie": ("tie", "领带"),
    "suitcase": ("suitcase", "行李箱"),
    "frisbee": ("frisbee", "飞盘"),
    "skis": ("skis", "滑雪板"),
    "snowboard": ("snowboard", "单板滑雪板"),
    "sports ball": ("ball", "球"),
    "kite": ("kite", "风筝"),
    "baseball bat": ("baseball bat", "棒球棒"),
    "baseball glove": ("baseball glove", "棒球手套"),
    "skateboard": ("skateboard", "滑板"),
    "surfboard": ("surfboard", "冲浪板"),
    "tennis racket": ("tennis racket", "网球拍"),
    "bottle": ("bottle", "瓶子"),
    "wine glass": ("wine glass", "酒杯"),
    "cup": ("cup", "杯子"),
    "fork": ("fork", "叉子"),
    "knife": ("knife", "刀"),
    "spoon": ("spoon", "勺子"),
    "bowl": ("bowl", "碗"),
    "banana": ("banana", "香蕉"),
    "apple": ("apple", "苹果"),
    "sandwich": ("sandwich", "三明治"),
    "orange": ("orange", "橙子"),
    "broccoli": ("broccoli", "西兰花"),
    "carrot": ("carrot", "胡萝卜"),
    "hot dog": ("hot dog", "热狗"),
    "pizza": ("pizza", "披萨"),
    "donut": ("donut", "甜甜圈"),
    "cake": ("cake", "蛋糕"),
    "chair": ("chair", "椅子"),
    "couch": ("couch", "沙发"),
    "potted plant": ("potted plant", "盆栽"),
    "bed": ("bed", "床"),
    "dining table": ("dining table", "餐桌"),
    "toilet": ("toilet", "马桶"),
    "tv": ("TV", "电视"),
    "laptop": ("laptop", "笔记本电脑"),
    "mouse": ("mouse", "鼠标"),
    "remote": ("remote control", "遥控器"),
    "keyboard": ("keyboard", "键盘"),
    "cell phone": ("cell phone", "手机"),
    "microwave": ("microwave", "微波炉"),
    "oven": ("oven", "烤箱"),
    "toaster": ("toaster", "烤面包机"),
    "sink": ("sink", "水槽"),
    "refrigerator": ("refrigerator", "冰箱"),
    "book": ("book", "书"),
    "clock": ("clock", "时钟"),
    "vase": ("vase", "花瓶"),
    "scissors": ("scissors", "剪刀"),
    "teddy bear": ("teddy bear", "泰迪熊"),
    "hair drier": ("hair dryer", "吹风机"),
    "toothbrush": ("toothbrush", "牙刷"),
}
"""COCO category name -> (the English word the instruction uses, the Chinese one): the 80 COCO
categories. A category outside this table is not edited (no Chinese name to instruct with)."""

COLOURS: tuple[tuple[str, str, int], ...] = (
    ("red", "红色", 0),
    ("orange", "橙色", 12),
    ("yellow", "黄色", 28),
    ("green", "绿色", 60),
    ("blue", "蓝色", 115),
    ("purple", "紫色", 140),
)
"""Target colours of a recolour: English, Chinese, OpenCV hue (0-179)."""
MIN_SAT = 160  # a recoloured pixel gets at least this saturation (0-255), so a white or grey object takes the colour
V_LIFT = 48  # V' = V_LIFT + V * (255 - V_LIFT) / 255: black objects become a dark shade of the colour
HUE_AWAY = 25  # a colour within this hue distance (of 180) of the object's own is not chosen


class Skip(Exception):
    """This object cannot take this edit (``reason`` becomes a ``skipped_<reason>`` counter)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- masks --------------------------------------------------------------------------------------


def _rle_counts(s: str) -> list[int]:
    """COCO's compressed RLE string (``maskApi.c rleFrString``) -> run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, or RLE with a list or a compressed string of counts)
    -> an H x W bool mask."""
    import cv2

    if isinstance(seg, dict):
        counts = seg["counts"]
        counts = _rle_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
        rh, rw = (int(v) for v in seg.get("size", (h, w)))
        flat = np.zeros(rh * rw, dtype=bool)
        pos, val = 0, False
        for c in counts:
            if val:
                flat[pos : pos + c] = True
            pos += c
            val = not val
        mask = flat.reshape((rh, rw), order="F")  # COCO RLE runs down columns
        if (rh, rw) != (h, w):
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        return mask
    out = np.zeros((h, w), dtype=np.uint8)
    polys = [np.round(np.asarray(p, dtype=np.float64).reshape(-1, 2) * 8).astype(np.int32) for p in seg if len(p) >= 6]
    if polys:
        cv2.fillPoly(out, polys, 1, lineType=cv2.LINE_8, shift=3)  # 3 fractional bits: sub-pixel vertices
    return out.astype(bool)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` grown by ``r`` px (an elliptical structuring element, 2r + 1 wide)."""
    import cv2

    if r <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def inpaint_dilate(h: int, w: int) -> int:
    """px the mask of a removed or moved object is grown by before inpainting (1.5 % of the short
    side, at least 3): COCO polygons run along the object's edge, and its fringe must go too."""
    return max(3, round(0.015 * min(h, w)))


def warp_mask(mask: np.ndarray, scale: float, ax: float, ay: float, dx: int, dy: int) -> np.ndarray:
    """Where the object lands: ``mask`` scaled by ``scale`` about (ax, ay), then shifted by
    (dx, dy) (the same affine map the pasted pixels take)."""
    import cv2

    m = _affine(scale, ax, ay, dx, dy)
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.uint8) * 255, m, (w, h), flags=cv2.INTER_LINEAR) >= 128


def _affine(scale: float, ax: float, ay: float, dx: int, dy: int) -> np.ndarray:
    return np.array([[scale, 0.0, ax - scale * ax + dx], [0.0, scale, ay - scale * ay + dy]], dtype=np.float64)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- annotations --------------------------------------------------------------------------------


def index_annotations(coco: dict) -> dict[str, dict]:
    """A COCO instances file (parsed JSON) -> ``{file_name: {"width", "height", "image_id",
    "objects": [{"ann_id", "category", "bbox", "area", "iscrowd", "segmentation"}, ...]}}``."""
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_id: dict[Any, dict] = {}
    out: dict[str, dict] = {}
    for im in coco.get("images", []):
        entry = {"width": int(im["width"]), "height": int(im["height"]), "image_id": im["id"], "objects": []}
        by_id[im["id"]] = entry
        out[str(im["file_name"])] = entry
    for a in coco.get("annotations", []):
        entry = by_id.get(a.get("image_id"))
        if entry is None or "segmentation" not in a:
            continue
        entry["objects"].append(
            {
                "ann_id": a["id"],
                "category": names.get(a.get("category_id"), str(a.get("category_id"))),
                "bbox": [float(v) for v in a["bbox"]],
                "area": float(a.get("area", a["bbox"][2] * a["bbox"][3])),
                "iscrowd": int(a.get("iscrowd", 0)),
                "segmentation": a["segmentation"],
            }
        )
    return out


def attached_objects(entry: dict, obj: dict) -> list[dict]:
    """The objects of the image that go with ``obj`` when it is removed or moved: of another
    category (a second elephant is not the first one's), smaller, and with at least
    ``ATTACHED_INSIDE`` of their box inside its box."""
    x, y, bw, bh = obj["bbox"]
    out = []
    for o in entry["objects"]:
        if o["ann_id"] == obj["ann_id"] or o["category"] == obj["category"] or o["area"] >= obj["area"]:
            continue
        ox, oy, ow, oh = o["bbox"]
        inter = max(0.0, min(x + bw, ox + ow) - max(x, ox)) * max(0.0, min(y + bh, oy + oh) - max(y, oy))
        if inter >= ATTACHED_INSIDE * max(ow * oh, 1e-9):
            out.append(o)
    return out


def eligible_objects(entry: dict, kind: str, min_area: float, max_area: float) -> list[dict]:
    """The objects of one image (an ``index_annotations`` entry) a ``kind`` edit may take, each
    with ``with``: its attached objects (``attached_objects``; none for recolour). Taken: not a
    crowd, a category with a Chinese name, an area (with what is attached) between ``min_area``
    and ``max_area`` of the image. Recolour leaves out ``NO_RECOLOUR``; move and resize want a box
    clear of the frame (a cut-off object would be pasted with its cut edge showing)."""
    w, h = entry["width"], entry["height"]
    out = []
    for o in entry["objects"]:
        if o["iscrowd"] or o["category"] not in COCO_ZH or (kind == "recolour" and o["category"] in NO_RECOLOUR):
            continue
        extra = attached_objects(entry, o) if kind != "recolour" else []
        if not min_area <= (o["area"] + sum(a["area"] for a in extra)) / (w * h) <= max_area:
            continue
        if kind in ("move", "resize"):
            boxes = [o["bbox"], *(a["bbox"] for a in extra)]
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
            if x0 < EDGE_PX or y0 < EDGE_PX or x1 > w - EDGE_PX or y1 > h - EDGE_PX:
                continue
        out.append({**o, "with": extra})
    return out


def refer(category: str, bbox: Sequence[float], peers: Iterable[Sequence[float]], w: int, h: int) -> tuple[str, str]:
    """How the instruction names the object, in English and Chinese: the category alone when it is
    the image's only one ("dog", "狗"); else the leftmost / rightmost / largest of them, or where it
    is by thirds of the frame ("dog on the left", "左侧的狗"). ``bbox`` and ``peers`` are COCO
    boxes (x, y, w, h) of it and of the image's other objects of its category."""
    en, zh = COCO_ZH[category]
    peers = list(peers)
    if not peers:
        return en, zh
    cx = bbox[0] + bbox[2] / 2
    pcx = [p[0] + p[2] / 2 for p in peers]
    if all(cx < c for c in pcx):
        return f"leftmost {en}", f"最左边的{zh}"
    if all(cx > c for c in pcx):
        return f"rightmost {en}", f"最右边的{zh}"
    if all(bbox[2] * bbox[3] >= 1.5 * p[2] * p[3] for p in peers):
        return f"largest {en}", f"最大的{zh}"
    where_en, where_zh = where_words((bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]), h, w)
    return f"{en} {where_en}", f"{where_zh}的{zh}"


# --- instructions -------------------------------------------------------------------------------

_EN = {
    "recolour": ("Make the {obj} {x}.", "Change the colour of the {obj} to {x}.", "Turn the {obj} {x}."),
    "remove": ("Remove the {obj}.", "Erase the {obj} from the picture.", "Take the {obj} out of the image."),
    "move": ("Move the {obj} to the {x}.", "Shift the {obj} to the {x}.", "Slide the {obj} over to the {x}."),
    "bigger": ("Make the {obj} bigger.", "Enlarge the {obj}.", "Scale the {obj} up."),
    "smaller": ("Make the {obj} smaller.", "Shrink the {obj}.", "Scale the {obj} down."),
}
_ZH = {
    "recolour": ("把{obj}变成{x}。", "将{obj}的颜色改为{x}。", "把{obj}染成{x}。"),
    "remove": ("去掉{obj}。", "把{obj}从图片中删除。", "从图中移除{obj}。"),
    "move": ("把{obj}向{x}移动。", "将{obj}往{x}移一些。", "把{obj}挪到{x}边。"),
    "bigger": ("把{obj}变大。", "把{obj}放大。", "将{obj}放大一些。"),
    "smaller": ("把{obj}变小。", "把{obj}缩小。", "将{obj}缩小一些。"),
}


def _instructions(template: str, obj: tuple[str, str], x: tuple[str, str], rng: np.random.Generator) -> tuple[str, str]:
    i, j = int(rng.integers(3)), int(rng.integers(3))
    return _EN[template][i].format(obj=obj[0], x=x[0]), _ZH[template][j].format(obj=obj[1], x=x[1])


# --- edits --------------------------------------------------------------------------------------


@dataclass
class SynthPair:
    """Source (the photo) and target (H x W x 3 uint8), the instruction, and what changed where."""

    kind: str
    source: np.ndarray
    target: np.ndarray
    instruction_en: str
    instruction_zh: str
    box: tuple[int, int, int, int]  # bounding box of ``region``: x0, y0, x1, y1 (exclusive)
    detail: str  # what the object becomes: the colour, "" (remove), left / right, bigger / smaller
    params: str  # the edit, machine-readable: "hue=0 sat>=160 dilate=0", "scale=1.000 ax=.. ay=.. dx=-90 dy=0 inpaint=telea dilate=7"
    changed_fraction: float  # share of the image's pixels that differ between source and target
    region: np.ndarray = field(repr=False)  # H x W bool: where the target may differ from the source


def _recolour(photo: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[str, str], str]:
    import cv2

    region = mask
    x0, y0, x1, y1 = _bbox(region)
    crop = photo[y0:y1, x0:x1]
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    m = mask[y0:y1, x0:x1]
    hue, sat, val = hsv[..., 0][m].astype(np.float64), hsv[..., 1][m], hsv[..., 2][m]
    vivid = (sat > 60) & (val > 50)
    choices = list(COLOURS)
    if vivid.mean() > 0.2:  # a coloured object: not its own colour
        ang = hue[vivid] * (np.pi / 90)
        own = (np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) / 2) % 180
        choices = [c for c in COLOURS if min(abs(c[2] - own), 180 - abs(c[2] - own)) > HUE_AWAY] or choices
    en, zh, h_new = choices[int(rng.integers(len(choices)))]
    new = hsv.copy()
    new[..., 0] = h_new
    new[..., 1] = np.maximum(hsv[..., 1], MIN_SAT)
    new[..., 2] = (V_LIFT + hsv[..., 2].astype(np.float32) * ((255 - V_LIFT) / 255)).round().astype(np.uint8)
    rgb = cv2.cvtColor(new, cv2.COLOR_HSV2RGB)
    reg = region[y0:y1, x0:x1].astype(np.float32)
    alpha = (cv2.GaussianBlur(reg, (3, 3), 0) * reg)[..., None]  # soft edge inside the mask, zero outside
    out = photo.copy()
    out[y0:y1, x0:x1] = (crop * (1 - alpha) + rgb * alpha).round().astype(np.uint8)
    return out, region, (en, zh), f"hue={h_new} sat>={MIN_SAT} dilate=0"


def _inpaint(photo: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
    """``photo`` with ``hole`` filled by ``cv2.inpaint``; a hole over ``INPAINT_MAX_PX`` is filled on
    a shrunk copy and the fill scaled back (a 20 % hole at 640 x 480: 2-3 s at full size). Only the
    pixels of ``hole`` are written."""
    import cv2

    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    photo = np.ascontiguousarray(photo)
    n = int(hole.sum())
    s = min(1.0, float(np.sqrt(INPAINT_MAX_PX / max(n, 1))))
    if s > 0.9:
        fill = cv2.inpaint(photo, hole.astype(np.uint8) * 255, INPAINT_RADIUS, flag)
    else:
        h, w = hole.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        small = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
        small_hole = dilate(cv2.resize(hole.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0, 1)
        fill = cv2.resize(cv2.inpaint(small, small_hole.astype(np.uint8) * 255, max(2, round(INPAINT_RADIUS * s)), flag), (w, h))
    out = photo.copy()
    out[hole] = fill[hole]
    return out


def _transform(kind: str, mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, int, int, tuple[str, str]]:
    """(scale, ax, ay, dx, dy, direction words) of a move or resize that keeps the object inside
    the frame; ``Skip("no_room")`` when none does."""
    h, w = mask.shape
    x0, y0, x1, y1 = _bbox(mask)
    bw = x1 - x0
    if kind == "move":
        lo = max(MOVE_MIN[0] * bw, MOVE_MIN[1] * w)
        room = {"left": x0 - EDGE_PX, "right": w - EDGE_PX - x1}
        sides = [s for s in ("left", "right") if min(room[s], MOVE_MAX * w) >= lo]
        if not sides:
            raise Skip("no_room")
        side = sides[int(rng.integers(len(sides)))]
        d = int(round(rng.uniform(lo, min(room[side], MOVE_MAX * w))))
        words = {"left": ("left", "左"), "right": ("right", "右")}[side]
        return 1.0, 0.0, 0.0, -d if side == "left" else d, 0, words
    ax, ay = (x0 + x1) / 2, float(y1)  # the bottom centre stays put
    fits = {}
    for way, (a, b) in (("bigger", SCALE_UP), ("smaller", SCALE_DOWN)):
        s = round(float(rng.uniform(a, b)), 3)
        nx0, nx1, ny0 = ax - s * (ax - x0), ax + s * (x1 - ax), ay - s * (ay - y0)
        if nx0 >= EDGE_PX and nx1 <= w - EDGE_PX and ny0 >= EDGE_PX:
            fits[way] = s
    if not fits:
        raise Skip("no_room")
    ways = sorted(fits)
    way = ways[int(rng.integers(len(ways)))]
    words = {"bigger": ("bigger", "变大"), "smaller": ("smaller", "变小")}[way]
    return fits[way], ax, ay, 0, 0, words


def synth_pair(photo: np.ndarray, mask: np.ndarray, kind: str, seed: Any, obj: tuple[str, str]) -> SynthPair:
    """One object-editing pair from ``photo`` (H x W x 3 uint8 RGB) and the object's ``mask``
    (H x W bool; for remove, move and resize the union with its attached objects), deterministic
    given ``seed``. ``obj``: how the instructions name the object (``refer``). Raises ``Skip``
    when the object cannot take the edit (an empty mask, no room to move or scale it)."""
    import cv2

    if kind not in SYNTH_KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(SYNTH_KINDS)}")
    photo = np.ascontiguousarray(photo[..., :3], dtype=np.uint8)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != photo.shape[:2]:
        raise ValueError(f"mask {mask.shape} and photo {photo.shape[:2]} differ in size")
    if not mask.any():
        raise Skip("empty_mask")
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    if kind == "recolour":
        target, region, colour, params = _recolour(photo, mask, rng)
        en, zh = _instructions("recolour", obj, colour, rng)
        detail = colour[0]
    else:
        r = inpaint_dilate(h, w)
        method = ("telea", "ns")[int(rng.integers(2))]
        hole = dilate(mask, r)
        if kind == "remove":
            target, region = _inpaint(photo, hole, method), hole
            en, zh = _instructions("remove", obj, ("", ""), rng)
            detail, params = "", f"inpaint={method} dilate={r}"
        else:
            scale, ax, ay, dx, dy, words = _transform(kind, mask, rng)
            moved = warp_mask(mask, scale, ax, ay, dx, dy)
            if not moved.any():
                raise Skip("no_room")
            m = _affine(scale, ax, ay, dx, dy)
            pixels = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            mv = moved.astype(np.float32)
            alpha = (cv2.GaussianBlur(mv, (3, 3), 0) * mv)[..., None]  # soft edge, inside the new mask only
            bg = _inpaint(photo, hole, method)
            target = (bg * (1 - alpha) + pixels * alpha).round().astype(np.uint8)
            region = hole | moved
            en, zh = _instructions("move" if kind == "move" else words[0], obj, words, rng)
            detail = words[0]
            params = f"scale={scale:.3f} ax={ax:.1f} ay={ay:.1f} dx={dx} dy={dy} inpaint={method} dilate={r}"
    changed = np.any(photo != target, axis=-1)
    if not changed.any():
        raise Skip("no_change")
    return SynthPair(
        kind=kind,
        source=photo,
        target=target,
        instruction_en=en,
        instruction_zh=zh,
        box=_bbox(region),
        detail=detail,
        params=params,
        changed_fraction=float(changed.mean()),
        region=region,
    )
