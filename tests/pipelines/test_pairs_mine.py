"""``curate pairs mine`` on real photos with known ground truth: 12 coco-mini photos plus real edited
variants of some of them, saved as new rows (JPEG, as a crawl would store them):

- three copies of photo 0 with sign text added at different places (``render_pair``): a group of
  four shots of one scene, larger than the cap;
- photo 3 with an object recoloured through its COCO mask (``synth_pair``);
- the central 80 % of photo 4 with text added: only a homography aligns it with photo 4;
- photo 5 stored twice (an exact duplicate: similarity 1, above the band).

The real chain runs on Ray: descriptors (``vec_desc``, training-free: the offline embedding models
have random weights), index, ``curate knn``, then ``mine_pairs``. Checked: the edited pairs are
mined, the duplicate and unrelated photos are not (the graph shows why: above / below the band),
the changed area of a text edit is small and where the text is, the cap holds, there is no
instruction and the row says so, a re-run adds nothing, and the command's errors are one line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import lance
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.store import Store
from engines.pairs.mine import cap_pairs, caption_difference, load_instructor
from engines.pairs.render import render_pair
from engines.pairs.synth import decode_segmentation, eligible_objects, index_annotations, synth_pair
from pipelines.pairs import PAIRS_SCHEMA, MineConfig, mine_pairs, mined_fields
from tests.helpers import sample_row, samples_table

BASE = 12
CAP_IMAGE, CAP_GROUP = 2, 3


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _rgb(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))


def _variants(rows: list[dict], coco_dir: Path) -> tuple[list[dict], dict]:
    """The edited rows and the truth: which base row each comes from, and the edit's box."""
    out, truth = [], {}

    def add(key: str, rgb: np.ndarray, base: int, box, caption: str | None = None):
        r = sample_row(_jpeg(rgb), "variants", key, [caption] if caption else None)
        out.append(r)
        truth[r["id"]] = {"base": rows[base]["id"], "box": box, "key": key}

    p0 = _rgb(rows[0])
    for seed in (1, 2, 3):
        pair = render_pair(p0, "add", seed, lang="en")
        add(f"text{seed}", pair.target, 0, pair.box, f"{rows[0]['captions'][0]['text']} A sign says {pair.tgt_text}.")
    idx = index_annotations(json.loads((coco_dir / "instances_train2017.json").read_text()))
    entry = idx[rows[3]["source_key"]]
    obj = eligible_objects(entry, "recolour", 0.05, 0.3)[0]
    mask = decode_segmentation(obj["segmentation"], entry["height"], entry["width"])
    s = synth_pair(_rgb(rows[3]), mask, "recolour", 0, (obj["category"], obj["category"]))
    add("recolour", s.target, 3, s.box)
    p4 = _rgb(rows[4])
    h, w = p4.shape[:2]
    dy, dx = h // 10, w // 10
    crop = np.ascontiguousarray(p4[dy : h - dy, dx : w - dx])
    pair = render_pair(crop, "add", 7, lang="en")
    add("croptext", pair.target, 4, pair.box)
    truth[out[-1]["id"]]["offset"] = (dx, dy)
    dup = sample_row(rows[5]["image"], "variants", "dup")
    out.append(dup)
    truth[dup["id"]] = {"base": rows[5]["id"], "box": None, "key": "dup"}
    return out, truth


@pytest.fixture(scope="module")
def mined(tmp_path_factory, coco_sample_rows, coco_dir, ray_session):
    from pipelines.descriptors import ensure_visual
    from pipelines.index import IndexBuildConfig, build_index
    from pipelines.knn import KnnConfig, build_knn

    rows = coco_sample_rows[:BASE]
    extra, truth = _variants(rows, coco_dir)
    uri = tmp_path_factory.mktemp("mine") / "scenes.lance"
    lance.write_dataset(samples_table(rows + extra), str(uri), max_rows_per_file=8)
    store = Store(str(uri))
    ensure_visual(store, show_progress=False)
    build_index(store, IndexBuildConfig(column="vec_desc"), show_progress=False)
    build_knn(store, KnnConfig(column="vec_desc", k=6), show_progress=False)
    cfg = MineConfig(max_per_image=CAP_IMAGE, max_per_group=CAP_GROUP)
    result = mine_pairs(store, cfg, show_progress=False)
    pairs = lance.dataset(result.extra["out"]).to_table().to_pylist()
    return store, cfg, result, pairs, truth, [r["id"] for r in rows]


def _key(p: dict) -> frozenset:
    assert p["target_id"] == mined_fields(p["provenance"])["target"] != p["source_id"]  # the column and provenance agree
    return frozenset((p["source_id"], p["target_id"]))


def test_edited_variants_are_mined_duplicates_and_unrelated_photos_are_not(mined):
    store, cfg, result, pairs, truth, base = mined
    assert result.status == "committed" and pairs
    got = {_key(p) for p in pairs}
    for vid in (v for v, t in truth.items() if t["key"] in ("recolour", "croptext")):
        assert frozenset((vid, truth[vid]["base"])) in got, truth[vid]["key"]
    text = [v for v, t in truth.items() if t["key"].startswith("text")]
    assert any(frozenset((v, base[0])) in got for v in text)
    dup = next(v for v, t in truth.items() if t["key"] == "dup")
    assert all(dup not in k for k in got)
    assert not [k for k in got if k <= set(base)]  # no two different original photos
    graph = lance.dataset(str(store.state_dir / "vector" / "knn-vec_desc.lance")).to_table().to_pylist()
    sims = {frozenset((e["source_id"], e["neighbour_id"])): e["similarity"] for e in graph}
    assert sims[frozenset((dup, base[5]))] >= cfg.max_similarity  # above the band
    assert max(s for k, s in sims.items() if k <= set(base) and len(k) == 2) < cfg.min_similarity  # below it


def test_a_local_edit_is_small_and_where_the_edit_was(mined):
    _, _, _, pairs, truth, _ = mined
    checked = 0
    for p in pairs:
        a, b = p["source_id"], p["target_id"]
        variant = b if b in truth else a if a in truth else None
        if variant is None or truth[variant]["box"] is None or {a, b} != {variant, truth[variant]["base"]}:
            continue
        f = mined_fields(p["style"])
        assert f["change"] == "local" and p["changed_fraction"] < 0.15, f
        box = list(truth[variant]["box"])
        if "offset" in truth[variant] and p["source_id"] != variant:  # the crop's box, in the original's pixels
            dx, dy = truth[variant]["offset"]
            box = [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]
            assert f["align"] == "homography"
        assert _iou(p["box"], box) >= 0.6, (truth[variant]["key"], p["box"], box)
        checked += 1
    assert checked >= 3


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix)


def test_rows_have_no_instruction_say_why_and_keep_the_schema(mined):
    _, _, _, pairs, _, _ = mined
    assert lance.dataset(mined[2].extra["out"]).schema.names == PAIRS_SCHEMA.names
    for p in pairs:
        assert p["kind"] == "mined" and p["instruction_en"] is None and p["instruction_zh"] is None
        prov = mined_fields(p["provenance"])
        assert prov["instruction_source"] == "none" and float(prov["sim"]) > 0.9 and prov["column"] == "vec_desc"
        src, tgt = (Image.open(io.BytesIO(p[k])) for k in ("src_image", "tgt_image"))
        assert src.size == tgt.size == (p["width"], p["height"])
    with_caps = [p for p in pairs if p["src_text"] and p["tgt_text"]]
    assert with_caps and all(float(mined_fields(p["style"])["caption_diff"]) > 0 for p in with_caps)


def test_the_cap_holds(mined):
    _, _, _, pairs, truth, base = mined
    per: dict[str, int] = {}
    for k in map(_key, pairs):
        for x in k:
            per[x] = per.get(x, 0) + 1
    assert max(per.values()) <= CAP_IMAGE
    group = {base[0], *(v for v, t in truth.items() if t["key"].startswith("text"))}
    assert 1 <= sum(1 for k in map(_key, pairs) if k <= group) <= CAP_GROUP  # 6 candidates in the group
    ids = [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("x", "y")]
    assert cap_pairs(ids, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), 2, 2) == [0, 1, 4]
    # two tight scenes joined by one chance neighbour: two communities, each with its own cap
    two = [("a", "b"), ("a", "c"), ("b", "c"), ("d", "e"), ("d", "f"), ("e", "f"), ("c", "d")]
    sims = np.array([0.98, 0.97, 0.96, 0.98, 0.97, 0.96, 0.91])
    assert cap_pairs(two, sims, 5, 2) == [0, 1, 3, 4]
    assert cap_pairs(two, sims, 5, 2, groups="components") == [0, 3]  # one chained group: 2 pairs in all
    assert caption_difference("a dog on grass", "a dog on grass") == 0.0 and caption_difference("x", None) is None
    assert callable(load_instructor("json:dumps"))  # the plug-in interface loads a callable, and refuses anything else
    for bad in ("json", "json:nope", "no_such_module_x:f", "json:__doc__"):
        with pytest.raises(ValueError):
            load_instructor(bad)


def test_a_rerun_adds_nothing_and_errors_are_one_line(mined, tmp_path):
    from cli.main import app

    store, cfg, result, pairs, _, _ = mined
    again = mine_pairs(store, cfg, show_progress=False)
    assert again.status == "skipped" and again.version == result.version
    runner = CliRunner()
    args = ["pairs", "mine", "--dataset", store.uri, "--max-per-image", str(CAP_IMAGE), "--max-per-group", str(CAP_GROUP)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    res = runner.invoke(app, ["pairs", "mine", "--dataset", store.uri, "--min-similarity", "-1", "--max-similarity", "-0.99"])
    assert res.exit_code == 2 and "nothing to mine" in _one_line(res.output), res.output
    bare = tmp_path / "bare.lance"
    lance.write_dataset(lance.dataset(store.uri).to_table(columns=["id", "image", "image_sha256", "error"]).slice(0, 3), str(bare))
    res = runner.invoke(app, ["pairs", "mine", "--dataset", str(bare)])
    assert res.exit_code == 2 and "no k-NN graph" in _one_line(res.output) and "curate knn" in _one_line(res.output), res.output
    more = samples_table([sample_row(_jpeg(np.full((64, 64, 3), 128, np.uint8)), "late", "grey")])
    lance.write_dataset(more, store.uri, mode="append")
    res = runner.invoke(app, ["pairs", "mine", "--dataset", store.uri])
    assert res.exit_code == 2 and "older than the dataset" in _one_line(res.output), res.output


def _one_line(output: str) -> str:
    """The error message, unwrapped (the console wraps at its width): one ``error:`` and no traceback."""
    assert output.count("error:") == 1 and "Traceback" not in output, output
    return " ".join(output.split())
