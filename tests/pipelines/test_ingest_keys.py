"""Row ids unique within and across ingests (audit #1, #2) and the ``--dataset`` guard (#10),
through ``ingest`` on Ray and ``curate ingest``, on coco-mini photos written to disk."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.config import ConfigError
from curation.store import Store
from pipelines.ingest import IngestConfig, ingest


def _photos(coco_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((coco_dir / "images").glob("*.jpg"))[:n]]


def _ids(store: Store) -> list[str]:
    return store.to_arrow(columns=["id"]).column("id").to_pylist()


def _cfg(*srcs: Path, **kw) -> IngestConfig:
    return IngestConfig(source=[str(s) for s in srcs], flag_exact_duplicates=False, **kw)


def test_overlapping_sources_store_each_row_once(tmp_path, coco_dir, ray_session):
    a, b, c = _photos(coco_dir, 3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(a)
    (src / "b.jpg").write_bytes(b)
    with tarfile.open(src / "good.tar", "w") as tf:
        info = tarfile.TarInfo("000001.jpg")
        info.size = len(c)
        tf.addfile(info, io.BytesIO(c))
    store = Store(tmp_path / "ds.lance")
    res = ingest(store, _cfg(src, src, src / "good.tar"), show_progress=False)
    ids = _ids(store)
    assert len(ids) == len(set(ids)) == 3
    assert res[0].stats.counters["skipped_repeated_source"] == 2


def test_same_key_in_two_units_is_renamed_not_stored_twice(tmp_path, coco_dir, ray_session):
    """Row groups are separate units: no reader sees both copies, the driver's check does."""
    (tmp_path / "x.jpg").write_bytes(_photos(coco_dir, 1)[0])
    recs = [{"id": k, "image": "x.jpg", "caption": c} for k, c in (("k", "first"), ("m", "other"), ("k", "again"))]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet", row_group_size=1)
    store = Store(tmp_path / "ds.lance")
    res = ingest(store, _cfg(tmp_path / "t.parquet"), show_progress=False)
    rows = {r["source_key"]: r for r in store.to_arrow(columns=["id", "source_key", "error", "captions"]).to_pylist()}
    assert sorted(rows) == ["k", "k#2", "m"] and len({r["id"] for r in rows.values()}) == 3
    assert rows["k#2"]["error"] == "duplicate_key: key 'k' appears more than once in t.parquet"
    assert rows["k#2"]["captions"][0]["text"] == "again" and rows["k"]["error"] is None
    assert res[0].stats.counters["error_duplicate_key"] == 1
    assert ingest(store, _cfg(tmp_path / "t.parquet"), show_progress=False)[0].status == "skipped"  # re-ingest adds nothing


def test_prepended_line_and_retry_errors_add_no_copies(tmp_path, coco_dir, ray_session):
    (tmp_path / "x.jpg").write_bytes(_photos(coco_dir, 1)[0])
    recs = [
        {"id": "a", "image": "x.jpg", "caption": "zero"},
        {"id": "b", "image": "x.jpg", "caption": 5},  # bad_record
        {"id": "c", "image": "x.jpg", "caption": "two"},
    ]
    jl = tmp_path / "rows.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    store = Store(tmp_path / "ds.lance")
    ingest(store, _cfg(jl), show_progress=False)
    recs[1]["caption"] = "one, fixed"  # the user fixes the bad line: later lines move
    jl.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "new", "image": "x.jpg", "caption": "added"}, *recs]))
    res = ingest(store, _cfg(jl, retry_errors=True), show_progress=False)
    assert res[0].stats.counters["retried_errors"] == 1
    rows = store.to_arrow(columns=["id", "source_key", "error"]).to_pylist()
    assert sorted(r["source_key"] for r in rows) == ["a", "b", "c", "new"]
    assert all(r["error"] is None for r in rows) and len({r["id"] for r in rows}) == 4


def test_dataset_that_is_an_image_folder_is_refused(tmp_path, coco_dir):
    from cli.main import app

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_photos(coco_dir, 1)[0])
    before = sorted(os.listdir(photos))
    res = CliRunner().invoke(app, ["ingest", str(photos), "--dataset", str(photos)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "is a folder of other files (a.jpg), not a Lance dataset" in out and "Traceback" not in res.output
    with pytest.raises(ConfigError, match="not a Lance dataset"):
        ingest(Store(photos), _cfg(photos), show_progress=False)
    assert sorted(os.listdir(photos)) == before  # nothing written into the user's folder


def test_dataset_that_is_a_file_is_refused(tmp_path, coco_dir):
    from cli.main import app

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_photos(coco_dir, 1)[0])
    log = tmp_path / "run1.log"
    log.write_text("yesterday's log\n")
    res = CliRunner().invoke(app, ["ingest", str(photos), "--dataset", str(log)])
    assert res.exit_code == 2, res.output
    assert "is a file, not a Lance dataset" in " ".join(res.output.split()) and "bug" not in res.output
    assert log.read_text() == "yesterday's log\n"


def test_a_coco_folder_is_ingested_with_its_captions(tmp_path, coco_dir, ray_session):
    """COCO keeps a folder's captions in one JSON file (``captions_train2017.json``): a folder
    ingest counted it as a caption without an image and stored 80 uncaptioned photos. Now every
    photo gets its five human captions; the object annotations are counted as no captions."""
    store = Store(tmp_path / "coco.lance")
    res = ingest(store, _cfg(coco_dir), show_progress=False)
    t = store.open().to_table(columns=["source_key", "captions", "error"]).to_pylist()
    coco = json.loads((coco_dir / "captions_train2017.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    want: dict[str, list[str]] = {}
    for a in coco["annotations"]:
        want.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
    assert len(t) == 80 and all(r["error"] is None for r in t)
    assert {r["source_key"].rsplit("/", 1)[-1]: sorted(c["text"] for c in r["captions"]) for r in t} == {
        k: sorted(v) for k, v in want.items()
    }
    counters = res[0].stats.counters
    assert counters.get("skipped_coco_annotations_without_captions") == 1 and "skipped_caption_without_image" not in counters


def test_a_dataset_inside_the_source_is_not_read_as_samples(tmp_path, coco_dir, ray_session):
    """`curate ingest pile -d pile/sub/e.lance`, then again: the dataset's own files were read
    as samples the second time (skipped_unsupported_file=9, captions without an image)."""
    pile = tmp_path / "pile"
    pile.mkdir()
    for k, data in enumerate(_photos(coco_dir, 2)):
        (pile / f"{k}.jpg").write_bytes(data)
    store = Store(pile / "sub" / "e.lance")
    ingest(store, _cfg(pile), show_progress=False)
    again = ingest(store, _cfg(pile), show_progress=False)
    counters = again[0].stats.counters
    assert store.open().count_rows() == 2 and counters.get("skipped_lance_dataset") == 1
    assert not any(k in counters for k in ("skipped_unsupported_file", "skipped_caption_without_image")), counters
