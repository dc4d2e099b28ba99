"""The content box: the photo a screenshot, a frame or letterbox bars show, found in the pixels
so that its descriptor meets the original's full frame (``descriptor.content_box``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from curation.schema import VEC_DESC_DIM, VEC_REGIONS
from engines.profiling.decode import decode_image
from engines.vector.descriptor import CONTENT_REGION, N_REGIONS, content_box, describe, global_descriptor, working_gray
from engines.vector.synth import make_variant


def _gray(data: bytes) -> np.ndarray:
    return working_gray(decode_image(data).array)


def _cut(g: np.ndarray, box) -> np.ndarray:
    y, x, h, w = box
    return g[y : y + h, x : x + w]


def test_screenshots_give_the_photo_back_and_photos_have_no_box(coco_dir: Path):
    files = sorted((coco_dir / "images").glob("*.jpg"))[:24]
    sims, areas = [], []
    for seed, p in enumerate(files):
        data = p.read_bytes()
        photo = _gray(data)
        assert content_box(photo) is None, p.name  # a photo fills its picture: nothing to trim
        shot = _gray(make_variant(data, "frame", seed))
        box = content_box(shot)
        assert box is not None, p.name
        areas.append(box[2] * box[3] / shot.size)
        sims.append(float(global_descriptor(_cut(shot, box)) @ global_descriptor(photo)))
    # the photo is pasted at 65-80% of each side (0.42-0.64 of the area) below a title bar
    assert 0.38 <= min(areas) and max(areas) <= 0.68, areas
    assert np.median(sims) >= 0.98 and min(sims) >= 0.8, sims
    whole = [
        float(global_descriptor(_gray(make_variant(p.read_bytes(), "frame", s))) @ global_descriptor(_gray(p.read_bytes())))
        for s, p in enumerate(files[:8])
    ]
    assert max(whole) < 0.9, whole  # why it is needed: the screenshot's full frame is far from the photo


def test_letterbox_bars_are_trimmed_to_the_photo(coco_dir: Path):
    p = sorted((coco_dir / "images").glob("*.jpg"))[3]
    im = Image.open(p).convert("RGB")
    w, h = im.size
    canvas = Image.new("RGB", (w, int(h * 1.6)), (0, 0, 0))
    top = (canvas.height - h) // 2
    canvas.paste(im, (0, top))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    g = _gray(buf.getvalue())
    box = content_box(g)
    s = g.shape[0] / canvas.height
    assert box is not None
    y, x, bh, bw = box
    assert abs(y - top * s) <= 3 and abs(bh - h * s) <= 4 and x <= 2 and bw >= g.shape[1] - 3, (box, top * s, h * s)


def test_describe_puts_the_content_box_last_and_the_full_frame_there_when_none(coco_dir: Path):
    data = sorted((coco_dir / "images").glob("*.jpg"))[0].read_bytes()
    full, regions = describe(_gray(data))
    assert regions.shape == (N_REGIONS, full.shape[0])
    # the stored columns (the core's schema cannot import this engine) are sized for what it makes
    assert (N_REGIONS, full.shape[0]) == (VEC_REGIONS, VEC_DESC_DIM)
    assert np.array_equal(regions[CONTENT_REGION], full)
    shot = _gray(make_variant(data, "frame", 0))
    sfull, sreg = describe(shot)
    assert float(sreg[CONTENT_REGION] @ full) > float(sfull @ full) + 0.1


def test_flat_or_tiny_pictures_have_no_box():
    assert content_box(np.full((64, 64), 128, np.uint8)) is None  # blank: nothing but fill
    assert content_box(np.full((6, 6), 10, np.uint8)) is None
    rng = np.random.default_rng(0)
    assert content_box(rng.integers(0, 255, (100, 80), dtype=np.uint8)) is None  # all content


def test_a_content_box_equal_to_the_full_frame_is_neither_indexed_nor_queried(coco_dir: Path):
    """Most rows have no box: their content slot repeats the full frame, which in the index would
    take a second place in every top-k and per-list quota; so it is left out there, and so is the
    query. A screenshot's box is kept, under its own label."""
    from engines.vector.dedup import CENTRE_REGIONS, CONTENT_SLOT, candidate_queries, content_queries_kept, entry_table

    data = sorted((coco_dir / "images").glob("*.jpg"))[0].read_bytes()
    photo, shot = describe(_gray(data)), describe(_gray(make_variant(data, "frame", 0)))
    full = np.stack([photo[0], shot[0]])
    reg = np.stack([photo[1], shot[1]])
    rows = np.array([40, 41])
    x, labels = entry_table(full, reg, rows, N_REGIONS + 1)
    assert len(x) == 2 * (N_REGIONS + 1) - 1
    assert 40 * (N_REGIONS + 1) + CONTENT_SLOT not in labels.tolist() and 41 * (N_REGIONS + 1) + CONTENT_SLOT in labels.tolist()
    assert np.array_equal(x[labels.tolist().index(41 * (N_REGIONS + 1) + CONTENT_SLOT)], reg[1, CONTENT_REGION])
    q = candidate_queries(full, True, reg[:, list(CENTRE_REGIONS)])
    kept, qrow = content_queries_kept(q, rows, reg, full)
    assert len(kept) == len(q) - 1 and qrow.tolist().count(40) == qrow.tolist().count(41) - 1
    assert np.array_equal(kept[-1], reg[1, CONTENT_REGION]) and qrow[-1] == 41
    # as a dataset stores them (full frame float16, regions int8) and the job reads them back
    import pyarrow as pa

    from engines.vector.dedup import has_content_box
    from engines.vector.descriptor import to_int8
    from engines.vector.index import to_matrix

    d = full.shape[1]
    col = pa.FixedSizeListArray.from_arrays(pa.array(to_int8(reg.reshape(-1, d)).ravel()), N_REGIONS * d)
    back, _ = to_matrix(col, unit=d)
    assert has_content_box(full.astype(np.float16).astype(np.float32), back.reshape(2, N_REGIONS, d)).tolist() == [False, True]
