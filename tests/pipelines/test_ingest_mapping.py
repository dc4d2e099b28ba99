"""Source mapping (issue #18): column mapping and LAION's capitalised names, extra columns kept in
``meta``, img2dataset folders read as one source, and ``--retry-errors``. Real files throughout
(coco-mini photos), through the real readers and, where it matters, the real Ray ingest."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.config import ConfigError
from curation.schema import SAMPLES_SCHEMA
from curation.sources import ColumnMappingError, ReadOptions, make_row, plan_units, read_unit
from curation.store import Store
from pipelines.ingest import IngestConfig, ingest


def _photos(coco_dir: Path, n: int) -> list[Path]:
    return sorted((coco_dir / "images").glob("*.jpg"))[:n]


def _rows(src: Path, opts: ReadOptions | None = None) -> list[dict]:
    opts = opts or ReadOptions()
    stats: dict[str, int] = {}
    return [r for u in plan_units([str(src)], opts) for r in read_unit(u, opts, stats)]


def _laion(path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "URL": ["https://example.org/a.jpg", "https://example.org/b.jpg"],
                "TEXT": ["a red bus", "two cats"],
                "WIDTH": [640, 800],
                "similarity": [0.31, 0.29],
                "punsafe": [0.01, float("nan")],
                "pwatermark": [0.2, 0.9],
            }
        ),
        path,
    )


def test_laion_capitalised_columns_and_extras(tmp_path):
    _laion(tmp_path / "laion.parquet")
    rows = _rows(tmp_path / "laion.parquet")
    assert [r["image_uri"] for r in rows] == ["https://example.org/a.jpg", "https://example.org/b.jpg"]
    assert [r["captions"][0]["text"] for r in rows] == ["a red bus", "two cats"]
    assert all(r["error"] is None for r in rows)
    meta = json.loads(rows[0]["meta"])
    assert meta == {"WIDTH": 640, "pwatermark": 0.2, "punsafe": 0.01, "similarity": 0.31}
    assert rows[0]["meta"] == json.dumps(meta, sort_keys=True, separators=(",", ":"))  # deterministic order
    assert json.loads(rows[1]["meta"])["punsafe"] is None  # NaN stored as null: valid JSON
    pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)  # storable


def test_explicit_mapping_and_unknown_column(tmp_path, coco_dir):
    photos = _photos(coco_dir, 2)
    for p in photos:  # table paths must stay inside the table's folder
        (tmp_path / p.name).write_bytes(p.read_bytes())
    recs = [{"pic": p.name, "desc": f"photo {i}", "caption": "not this one", "score": i} for i, p in enumerate(photos)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    opts = ReadOptions(image_column="PIC", caption_column="desc")  # case-insensitive match of a mapped name
    rows = _rows(tmp_path / "t.jsonl", opts)
    assert [r["error"] for r in rows] == [None, None]
    assert rows[0]["image"] == photos[0].read_bytes()
    assert [c["text"] for c in rows[1]["captions"]] == ["photo 1"]  # only the mapped column is the caption
    assert json.loads(rows[1]["meta"]) == {"caption": "not this one", "score": 1}
    with pytest.raises(ColumnMappingError, match=r"no column 'descr'.*the columns are: pic, desc, caption, score"):
        plan_units([str(tmp_path / "t.jsonl")], ReadOptions(caption_column="descr"))
    _laion(tmp_path / "laion.parquet")
    with pytest.raises(ConfigError, match="URL, TEXT, WIDTH"):
        ingest(Store(str(tmp_path / "ds")), IngestConfig(source=[str(tmp_path / "laion.parquet")], url_column="link"))
    assert not Store(str(tmp_path / "ds")).exists()


def test_cli_unknown_column_fails_before_ray(tmp_path):
    from cli.main import app

    _laion(tmp_path / "laion.parquet")
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "laion.parquet"), "--dataset", str(tmp_path / "ds"), "--caption-column", "txt"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # the console wraps long lines
    assert "no column 'txt' (--caption-column)" in out and "the columns are: URL, TEXT, WIDTH" in out
    assert "Traceback" not in res.output
    assert time.perf_counter() - t0 < 15  # no cluster was started for it


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_img2dataset(out: Path, photos: list[Path], failed: int = 2) -> Path:
    """img2dataset's webdataset output for one shard: 00000.tar (<key>.jpg/.txt/.json for each
    success), 00000.parquet (a row per input URL, failures included) and 00000_stats.json."""
    out.mkdir(parents=True)
    meta = []
    with tarfile.open(out / "00000.tar", "w") as tf:
        for i, p in enumerate(photos):
            key = f"{i:09d}"
            rec = {"key": key, "url": f"https://example.org/{i}.jpg", "caption": f"caption {i}", "status": "success", "error_message": None}
            rec |= {"width": 256, "height": 256, "original_width": 640, "original_height": 480}
            rec |= {"similarity": 0.3 + i / 100, "punsafe": 0.01, "pwatermark": 0.5}
            meta.append(rec)
            _add(tf, f"{key}.jpg", p.read_bytes())
            _add(tf, f"{key}.txt", rec["caption"].encode())
            _add(tf, f"{key}.json", json.dumps({k: rec[k] for k in ("key", "url", "caption", "status")}).encode())
    for j in range(failed):
        key = f"{len(photos) + j:09d}"
        meta.append({"key": key, "url": f"https://example.org/gone{j}.jpg", "caption": f"lost {j}", "status": "failed_to_download"})
        meta[-1] |= {"error_message": f"HTTP Error 404: Not Found ({j})", "similarity": 0.2}
    pq.write_table(pa.Table.from_pylist(meta), out / "00000.parquet")
    (out / "00000_stats.json").write_text(json.dumps({"count": len(meta), "successes": len(photos), "failed_to_download": failed}))
    return out


def test_img2dataset_folder_is_one_source(tmp_path, coco_dir, ray_session):
    src = write_img2dataset(tmp_path / "i2d", _photos(coco_dir, 4))
    assert [u["kind"] for u in plan_units([str(src)], ReadOptions())] == ["img2dataset"]
    store = Store(str(tmp_path / "ds"))
    res = ingest(store, IngestConfig(source=[str(src)]), show_progress=False)
    rows = {
        r["source_key"]: r for r in store.to_arrow(columns=["source_key", "image", "image_uri", "captions", "error", "meta"]).to_pylist()
    }
    assert len(rows) == 6  # 4 samples + 2 failed downloads, each once
    ok = rows["000000002"]
    assert ok["error"] is None and ok["image"] is not None and ok["image_uri"] is None
    meta = json.loads(ok["meta"])
    assert meta["url"] == "https://example.org/2.jpg" and meta["status"] == "success"
    assert (meta["original_width"], meta["original_height"], meta["similarity"], meta["pwatermark"]) == (640, 480, 0.32, 0.5)
    gone = rows["000000005"]
    assert gone["error"] == "download_failed: HTTP Error 404: Not Found (1)"
    assert gone["image"] is None and gone["image_uri"] is None  # not a URL row to fetch again
    assert json.loads(gone["meta"])["url"] == "https://example.org/gone1.jpg"
    assert [c["text"] for c in gone["captions"]] == ["lost 1"]
    assert res[0].stats.counters["error_download_failed"] == 2


def test_append_to_dataset_made_before_meta(tmp_path, coco_dir, ray_session):
    old_schema = pa.schema([f for f in SAMPLES_SCHEMA if f.name != "meta"])
    photo = _photos(coco_dir, 1)[0]
    old = make_row("old-source", "a", photo.read_bytes(), [], ReadOptions())
    del old["meta"]
    uri = str(tmp_path / "ds")
    lance.write_dataset(pa.Table.from_pylist([old], schema=old_schema), uri)
    _laion(tmp_path / "laion.parquet")
    store = Store(uri)
    ingest(store, IngestConfig(source=[str(tmp_path / "laion.parquet")], flag_exact_duplicates=False), show_progress=False)
    t = store.to_arrow(columns=["source_key", "meta"]).to_pylist()
    assert len(t) == 3
    by_key = {r["source_key"]: r["meta"] for r in t}
    assert by_key["a"] is None and json.loads(by_key["#1"])["pwatermark"] == 0.9
    assert store.open().schema.names[: len(SAMPLES_SCHEMA)] == SAMPLES_SCHEMA.names


def test_retry_errors_replaces_fixed_rows(tmp_path, coco_dir, ray_session):
    good, fixed = _photos(coco_dir, 2)
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "a.jpg").write_bytes(good.read_bytes())
    (src / "b.jpg").write_bytes(b"not a jpeg at all")
    store = Store(str(tmp_path / "ds"))
    cfg = IngestConfig(source=[str(src)], flag_exact_duplicates=False)
    ingest(store, cfg, show_progress=False)
    before = {r["source_key"]: r for r in store.to_arrow(columns=["id", "source_key", "error"]).to_pylist()}
    assert before["b.jpg"]["error"].startswith("not_an_image")

    (src / "b.jpg").write_bytes(fixed.read_bytes())  # the user fixes the file
    assert ingest(store, cfg, show_progress=False)[0].status == "skipped"  # without the flag: untouched
    v = store.open().version
    res = ingest(store, cfg.model_copy(update={"retry_errors": True}), show_progress=False)
    assert res[0].version == v + 1  # one commit: delete + add in one Lance Update
    assert res[0].stats.counters["retried_errors"] == 1 and res[0].stats.counters["skipped_existing"] == 1
    after = {r["source_key"]: r for r in store.to_arrow(columns=["id", "source_key", "error", "image"]).to_pylist()}
    assert len(after) == 2 and store.open().count_rows() == 2
    assert after["b.jpg"]["id"] == before["b.jpg"]["id"] and after["b.jpg"]["error"] is None
    assert after["b.jpg"]["image"] == fixed.read_bytes()
    assert store.open(v).to_table(filter="error IS NOT NULL").num_rows == 1  # the old version still holds the error row


def test_tar_json_sidecar_fields_kept_without_parquet(tmp_path, coco_dir):
    src = write_img2dataset(tmp_path / "i2d", _photos(coco_dir, 2), failed=1)
    (src / "00000.parquet").unlink()  # the demo corpus' layout: the tar alone
    rows = _rows(src)
    assert len(rows) == 2 and all(r["error"] is None for r in rows)
    assert json.loads(rows[1]["meta"]) == {"key": "000000001", "status": "success", "url": "https://example.org/1.jpg"}
    assert [c["text"] for c in rows[1]["captions"]] == ["caption 1"]  # the caption is not repeated in meta
