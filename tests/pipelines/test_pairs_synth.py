"""``curate pairs synth`` on real photos: the real Ray job makes 12 object-editing pairs (3 of each
kind) from coco-mini photos and their COCO instance masks, and each pair is checked for what the
pair table promises.

- Pixels: source and target differ only inside the edit region: the mask itself for a recolour
  (margin 0), the mask dilated by the stated ``dilate=`` px for a remove (at most ``MAX_DILATE``),
  and that dilated old mask with the object's new mask for a move or resize (the new mask rebuilt
  from the stated scale, anchor and shift). ``box`` holds every change, and ``changed_fraction``
  is the measured difference, within ``AREA_TOL`` of the mask's share of the image.
- Exact ground truth: the source is the dataset's photo, pixel for pixel after decoding; a moved
  object's inner pixels are the source's, shifted; a recoloured object has the named hue.
- Instructions: both languages name the object's category (``COCO_ZH``) and what it becomes.
- Matching: a row whose file name is not in the annotations is skipped and counted; a tar-style
  key (no extension) matches.
"""

from __future__ import annotations

import io
import json
import re

import lance
import numpy as np
import pytest
from PIL import Image

from engines.pairs.synth import COCO_ZH, COLOURS, SYNTH_KINDS, Skip, decode_segmentation, dilate, inpaint_dilate, synth_pair, warp_mask
from pipelines.pairs import PAIRS_SCHEMA, SynthConfig, synth_pairs
from tests.helpers import sample_row, samples_table

N = 12
PHOTOS = 20
MAX_DILATE = 8
"""px: the largest dilation of a removed object's mask the test accepts (1.5 % of the short side:
7 px on coco-mini's 640 x 480 photos)."""
AREA_TOL = 0.7
"""``changed_fraction`` is at least this share of the mask's area (a recolour leaves pixels that
already had the colour, an inpaint pixels it happened to reproduce) and at most the region's."""


@pytest.fixture(scope="module")
def annotations(coco_dir):
    return coco_dir / "instances_train2017.json"


@pytest.fixture(scope="module")
def coco(annotations):
    return json.loads(annotations.read_text())


@pytest.fixture(scope="module")
def photos_store(tmp_path_factory, coco_sample_rows, coco_dir):
    """20 coco-mini photos as a folder ingest stores them, one more under a tar-style key (the
    file name without extension), one under a name the annotations do not have: 3 fragments."""
    from curation.store import Store

    rows = list(coco_sample_rows[:PHOTOS])
    tar_photo = sorted((coco_dir / "images").glob("*.jpg"))[PHOTOS]
    rows.append(sample_row(tar_photo.read_bytes(), "shards/000.tar", tar_photo.stem))
    rows.append(sample_row(coco_sample_rows[PHOTOS + 1]["image"], "holiday", "beach/IMG_0001.jpg"))
    uri = tmp_path_factory.mktemp("synth") / "photos.lance"
    lance.write_dataset(samples_table(rows), str(uri), max_rows_per_file=8)
    return Store(str(uri))


@pytest.fixture(scope="module")
def synthesised(photos_store, annotations, ray_session, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth-out") / "synth.lance")
    result = synth_pairs(photos_store, SynthConfig(annotations=str(annotations), n=N, seed=0, out=out), show_progress=False)
    return result, out


@pytest.fixture(scope="module")
def pairs(synthesised):
    return lance.dataset(synthesised[1]).to_table().to_pylist()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _params(p: dict) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in p["style"].split())


def _mask(p: dict, coco: dict) -> np.ndarray:
    """The union of the masks of the annotations the pair names (``ann=ID+ID`` in provenance)."""
    ids = [int(a) for a in re.search(r"ann=([\d+]+)", p["provenance"]).group(1).split("+")]
    anns = {a["id"]: a for a in coco["annotations"] if a["id"] in ids}
    mask = np.zeros((p["height"], p["width"]), dtype=bool)
    for a in ids:
        m = decode_segmentation(anns[a]["segmentation"], p["height"], p["width"])
        assert abs(int(m.sum()) - anns[a]["area"]) <= 0.1 * anns[a]["area"] + 50, "polygon raster far from COCO's area"
        mask |= m
    return mask


def _region(p: dict, mask: np.ndarray) -> np.ndarray:
    """Where the target may differ, rebuilt from the mask and the stated parameters."""
    q = _params(p)
    if p["kind"] == "recolour":
        assert q["dilate"] == "0"
        return mask
    r = int(q["dilate"])
    assert r == inpaint_dilate(p["height"], p["width"]) <= MAX_DILATE
    region = dilate(mask, r)
    if p["kind"] in ("move", "resize"):
        region |= warp_mask(mask, float(q["scale"]), float(q["ax"]), float(q["ay"]), int(q["dx"]), int(q["dy"]))
    return region


def test_the_job_writes_one_version_of_n_pairs(synthesised, pairs):
    result, out = synthesised
    ds = lance.dataset(out)
    assert result.status == "committed" and result.version == ds.version == 1
    assert ds.schema.names == PAIRS_SCHEMA.names
    assert len(pairs) == N == result.extra["pairs"], result.stats.counters
    assert result.extra["by_kind"] == {k: N // 4 for k in SYNTH_KINDS}
    assert len({p["pair_id"] for p in pairs}) == N
    assert all(p["target_id"] is None for p in pairs)  # the target is made here, not a dataset row
    assert all(
        re.match(r"synth v1 seed=0 annotations=instances_train2017\.json#[0-9a-f]{12} dataset=.*@v\d+ ann=\d", p["provenance"])
        for p in pairs
    )
    assert result.extra["pairs_per_second"] > 0


def test_rows_without_annotation_are_skipped_and_counted(synthesised, photos_store):
    x = synthesised[0].extra
    assert x["photos_matched"] == PHOTOS + 1  # the tar-style key matched
    assert x["photos_unmatched"] == 1 and x["photos_size_mismatch"] == 0
    stray = photos_store.to_arrow(["id"], filter="source = 'holiday'").column("id")[0].as_py()
    assert stray not in {p["source_id"] for p in lance.dataset(synthesised[1]).to_table(columns=["source_id"]).to_pylist()}


def test_pixels_change_only_inside_the_edit_region(pairs, coco):
    for p in pairs:
        src, tgt = _decode(p["src_image"]), _decode(p["tgt_image"])
        assert src.shape == tgt.shape == (p["height"], p["width"], 3)
        diff = np.any(src != tgt, axis=-1)
        mask = _mask(p, coco)
        region = _region(p, mask)
        assert diff.any(), p["pair_id"]
        assert not (diff & ~region).any(), f"{p['kind']} {p['pair_id']}: {int((diff & ~region).sum())} px changed outside the region"
        x0, y0, x1, y1 = p["box"]
        inside = np.zeros_like(diff)
        inside[y0:y1, x0:x1] = True
        assert not (diff & ~inside).any()
        assert p["changed_fraction"] == pytest.approx(diff.mean(), abs=1e-6)
        assert AREA_TOL * mask.mean() <= p["changed_fraction"] <= region.mean() + 1e-6, (p["kind"], p["changed_fraction"], mask.mean())


def test_the_source_is_the_original_photo_exactly(pairs, photos_store):
    quoted = ",".join(f"'{p['source_id']}'" for p in pairs)
    originals = {r["id"]: r["image"] for r in photos_store.to_arrow(["id", "image"], filter=f"id IN ({quoted})").to_pylist()}
    for p in pairs:
        assert np.array_equal(_decode(p["src_image"]), _decode(originals[p["source_id"]])), p["pair_id"]


def test_a_moved_object_is_the_same_pixels_and_a_recolour_has_the_named_hue(pairs, coco):
    import cv2

    checked = set()
    for p in pairs:
        src, tgt = _decode(p["src_image"]), _decode(p["tgt_image"])
        mask = _mask(p, coco)
        q = _params(p)
        if p["kind"] == "move":
            dx = int(q["dx"])
            assert q["scale"] == "1.000" and q["dy"] == "0" and dx != 0 and p["tgt_text"] == ("left" if dx < 0 else "right")
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # where the paste is opaque
            ys, xs = np.nonzero(inner)
            assert np.array_equal(tgt[ys, xs + dx], src[ys, xs])
            checked.add("move")
        elif p["kind"] == "recolour":
            hue = int(q["hue"])
            assert (p["tgt_text"], hue) in {(c[0], c[2]) for c in COLOURS}
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            hsv = cv2.cvtColor(tgt, cv2.COLOR_RGB2HSV)[inner]
            lit = hsv[hsv[:, 2] > 80]  # JPEG-free PNG, but dark pixels carry little hue
            d = np.abs(lit[:, 0].astype(int) - hue)
            assert np.median(np.minimum(d, 180 - d)) <= 4, (p["tgt_text"], np.median(lit[:, 0]))
            checked.add("recolour")
    assert checked == {"move", "recolour"}


def test_instructions_name_the_category_in_both_languages(pairs):
    words = {
        "move": {"left": ("left", "左"), "right": ("right", "右")},
        "resize": {"bigger": ("", "大"), "smaller": ("", "小")},
        "recolour": {c[0]: (c[0], c[1]) for c in COLOURS},
        "remove": {"": ("", "")},
    }
    for p in pairs:
        en, zh = COCO_ZH[p["src_text"]]
        assert en in p["instruction_en"] and zh in p["instruction_zh"], p
        w_en, w_zh = words[p["kind"]][p["tgt_text"]]
        assert w_en in p["instruction_en"] and w_zh in p["instruction_zh"], p
        assert re.search(r"[\u4e00-\u9fff]", p["instruction_zh"]) and re.fullmatch(r"[A-Za-z ,.']+", p["instruction_en"]), p
        assert p["lang"] is None


def test_a_rerun_adds_nothing(synthesised, photos_store, annotations):
    _, out = synthesised
    again = synth_pairs(photos_store, SynthConfig(annotations=str(annotations), n=N, seed=0, out=out), show_progress=False)
    assert again.status == "skipped" and again.extra["already_there"] == N
    assert lance.dataset(out).version == 1


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE (``maskApi.c rleToString``), to test the decoder against."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            out.append(chr(ch + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_segmentations_decode_polygons_and_both_rles(coco):
    crowd = next(a for a in coco["annotations"] if a["iscrowd"])
    h, w = crowd["segmentation"]["size"]
    m = decode_segmentation(crowd["segmentation"], h, w)
    assert int(m.sum()) == sum(crowd["segmentation"]["counts"][1::2])  # odd runs are the object's
    ys, xs = np.nonzero(m)  # runs go down columns: the box comes out where COCO says
    bx, by, bw, bh = crowd["bbox"]
    assert abs(xs.min() - bx) <= 1 and abs(ys.min() - by) <= 1 and abs(xs.max() + 1 - bx - bw) <= 1 and abs(ys.max() + 1 - by - bh) <= 1
    packed = {"size": [h, w], "counts": _rle_string(crowd["segmentation"]["counts"])}
    assert np.array_equal(decode_segmentation(packed, h, w), m)
    square = decode_segmentation([[10, 10, 30, 10, 30, 20, 10, 20]], 40, 40)
    assert square[12:19, 12:29].all() and not square[:8].any() and not square[:, 32:].any()


def test_synth_pair_is_deterministic_and_refuses_what_it_cannot_do(coco_dir):
    photo = np.asarray(Image.open(sorted((coco_dir / "images").glob("*.jpg"))[0]).convert("RGB"))
    h, w = photo.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 3 : h // 2, w // 3 : w // 2] = True
    a, b = synth_pair(photo, mask, "resize", [3, 1], ("dog", "狗")), synth_pair(photo, mask, "resize", [3, 1], ("dog", "狗"))
    assert np.array_equal(a.target, b.target) and a.params == b.params and a.instruction_en == b.instruction_en
    with pytest.raises(ValueError, match="unknown kind"):
        synth_pair(photo, mask, "swap", 0, ("dog", "狗"))
    wide = np.zeros((h, w), dtype=bool)
    wide[h // 3 : h // 2, 3 : w - 3] = True
    with pytest.raises(Skip, match="no_room"):
        synth_pair(photo, wide, "move", 0, ("bench", "长椅"))
    from curation.config import ConfigError, validate

    with pytest.raises(ConfigError, match="unknown kind 'swap'"):
        validate(SynthConfig, {"annotations": "x.json", "kinds": ["recolour", "swap"]})
    with pytest.raises(ConfigError, match="max_area"):
        validate(SynthConfig, {"annotations": "x.json", "min_area": 0.3, "max_area": 0.2})


def test_the_command_fails_in_one_line_before_ray(photos_store, tmp_path, coco):
    from typer.testing import CliRunner

    from cli.main import app

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(app, ["pairs", "synth", "--dataset", photos_store.uri, "--annotations", str(bad)])
    assert res.exit_code == 2 and "is not JSON" in " ".join(res.output.split()) and "Traceback" not in res.output
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 9, "height": 9}], "annotations": [], "categories": []})
    )
    res = CliRunner().invoke(app, ["pairs", "synth", "--dataset", photos_store.uri, "--annotations", str(other)])
    assert res.exit_code == 2 and "no photo of" in res.output and "22 rows with no such file name" in " ".join(res.output.split())
