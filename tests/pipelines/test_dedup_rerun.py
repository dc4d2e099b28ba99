"""A pipeline re-run day after day: dedup groups the rows ingested since with the rest (it had
skipped whenever the dup_* columns existed, so a re-upload reached the export), keeps the
captioned original, and an unchanged dataset is left as it is (real COCO photos, Ray, Lance)."""

from __future__ import annotations

import io
import shutil

import yaml
from PIL import Image

from curation.store import Store
from pipelines.pipeline import run_pipeline


def _pipeline(tmp_path, src):
    cfg = {
        "dataset": str(tmp_path / "p.lance"),
        "steps": [
            {"stage": "ingest", "params": {"source": [str(src)], "shard_size": 4}},
            {"stage": "profile", "params": {"stages": ["meta", "hash", "entropy", "degradation", "scores"]}},
            {"stage": "dedup"},
        ],
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(store):
    t = store.open().to_table(columns=["source_key", "dup_keep", "dup_group", "dup_reason"]).to_pylist()
    return {r["source_key"]: r for r in t}


def test_a_rerun_pipeline_dedups_new_rows_and_leaves_an_unchanged_dataset(ray_session, tmp_path, coco_dir):
    src = tmp_path / "pile"
    src.mkdir()
    photos = sorted((coco_dir / "images").glob("*.jpg"))[:6]
    for p in photos:
        shutil.copy(p, src / p.name)
        (src / f"{p.stem}.txt").write_text(f"a photo {p.stem}")
    path = _pipeline(tmp_path, src)
    run_pipeline(path, show_progress=False)
    store = Store(tmp_path / "p.lance")
    assert all(r["dup_keep"] is True for r in _rows(store).values())  # six different photos
    # the next day: a byte copy and a half-size copy of the first photo, uncaptioned, and a PNG of it
    first = photos[0]
    shutil.copy(first, src / "zz_copy.jpg")
    im = Image.open(first)
    im.resize((im.width // 2, im.height // 2)).save(src / "zz_small.jpg", quality=90)
    png = io.BytesIO()
    im.save(png, "PNG")
    (src / "zz_png.png").write_bytes(png.getvalue())
    results = run_pipeline(path, show_progress=False)
    assert results[-1].status == "committed"
    rows = _rows(store)
    assert len(rows) == 9 and all(r["dup_keep"] is not None for r in rows.values())
    group = {k for k, r in rows.items() if r["dup_group"] is not None}
    assert group == {first.name, "zz_copy.jpg", "zz_small.jpg", "zz_png.png"}
    assert rows[first.name]["dup_keep"] is True  # the captioned original, not a later or bigger bare copy
    assert rows["zz_copy.jpg"]["dup_reason"] == "exact"
    # nothing new: dedup says so and commits nothing
    v = store.open().version
    again = run_pipeline(path, show_progress=False)
    assert again[-1].status == "up_to_date" and store.open().version == v
