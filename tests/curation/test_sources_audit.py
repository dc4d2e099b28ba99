"""The ingest audit (issues #1, #2, #3, #5, #11) through the real readers, ``plan_units`` +
``read_unit``, on real files: coco-mini photos, tars, JSONL and Parquet written to disk."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.schema import SAMPLES_SCHEMA
from curation.sources import ReadOptions, plan_units, read_unit


def _photos(coco_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((coco_dir / "images").glob("*.jpg"))[:n]]


def _read(*srcs: Path, **kw) -> tuple[list[dict], dict[str, int]]:
    """Every row of the sources, checked storable in the samples schema."""
    opts, stats = ReadOptions(**kw), {}
    rows = [r for u in plan_units([str(s) for s in srcs], opts) for r in read_unit(u, opts, stats)]
    pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)
    return rows, stats


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["source_key"]: r for r in rows}


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


# --- #1: a source named twice, or a folder and a tar inside it, is read once -------------------


def test_repeated_and_nested_sources_are_planned_once(tmp_path, coco_dir):
    a, b, c = _photos(coco_dir, 3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(a)
    _tar(src / "shard.tar", [("000001.jpg", b), ("000001.txt", b"in the tar")])
    (src / "sub").mkdir()
    (src / "sub" / "c.jpg").write_bytes(c)
    alone, _ = _read(src)
    for extra in ([src], [src / "shard.tar"], [src / "sub"], [src / "a.jpg"], [tmp_path / "src" / ".." / "src"]):
        rows, stats = _read(src, *extra)
        assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in alone), extra
        assert stats["skipped_repeated_source"] == 1
    rows, _ = _read(src / "shard.tar", src)  # the inner one first: still once, with the folder's ids
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in alone)


# --- #2: a record's own key is its row key ------------------------------------------------------


def test_keyed_jsonl_ids_survive_a_prepended_line(tmp_path, coco_dir):
    (tmp_path / "x.jpg").write_bytes(_photos(coco_dir, 1)[0])
    recs = [{"id": "a", "image": "x.jpg", "caption": "first"}, {"id": "b", "image": "x.jpg", "caption": "second"}]
    before = {r["source_key"]: r["id"] for r in _read(_jsonl(tmp_path / "r.jsonl", recs))[0]}
    new = {"id": "new", "image": "x.jpg", "caption": "prepended, a longer line"}
    after = {r["source_key"]: r["id"] for r in _read(_jsonl(tmp_path / "r.jsonl", [new, *recs]))[0]}
    assert before == {k: after[k] for k in ("a", "b")} and set(after) == {"new", "a", "b"}


def test_keyless_records_keep_positional_keys(tmp_path, coco_dir):
    (tmp_path / "x.jpg").write_bytes(_photos(coco_dir, 1)[0])
    recs = [{"image": "x.jpg", "caption": "one"}, {"image": "x.jpg", "id": "@0", "caption": "looks positional"}]
    rows, _ = _read(_jsonl(tmp_path / "r.jsonl", recs))
    assert [r["source_key"] for r in rows] == ["@0", "=@0"]  # never the same key
    pq.write_table(pa.table({"image": ["x.jpg"], "caption": ["c"]}), tmp_path / "t.parquet")
    assert [r["source_key"] for r in _read(tmp_path / "t.parquet")[0]] == ["#0"]


def test_same_own_key_twice_in_a_file_is_duplicate_key(tmp_path, coco_dir):
    (tmp_path / "x.jpg").write_bytes(_photos(coco_dir, 1)[0])
    recs = [{"id": "k1", "image": "x.jpg"}, {"id": "k2", "image": "x.jpg"}, {"id": "k1", "image": "x.jpg"}]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
    for src in (_jsonl(tmp_path / "r.jsonl", recs), tmp_path / "t.parquet"):
        rows, stats = _read(src)
        assert [r["source_key"] for r in rows] == ["k1", "k2", "k1#2"], src
        assert [(r["error"] or "ok").split(":")[0] for r in rows] == ["ok", "ok", "duplicate_key"]
        assert rows[2]["error"] == f"duplicate_key: key 'k1' appears more than once in {src.name}"
        assert len({r["id"] for r in rows}) == 3 and stats["error_duplicate_key"] == 1


# --- #3: a table file in a folder hides nothing -------------------------------------------------


def test_table_in_a_folder_keeps_unlisted_images_and_sub_folders(tmp_path, coco_dir):
    a, b, c, d = _photos(coco_dir, 4)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.jpg").write_bytes(a)
    (src / "b.jpg").write_bytes(b)
    (src / "b.txt").write_text("b's own caption")
    (src / "sub" / "c.jpg").write_bytes(c)
    _tar(src / "sub" / "s.tar", [("000001.jpg", d)])
    _jsonl(src / "metadata.jsonl", [{"file_name": "a.jpg", "text": "a listed"}])  # HF imagefolder
    rows, stats = _read(src)
    got = {r["source_key"]: [x["text"] for x in r["captions"]] for r in rows}
    assert got == {"@0": ["a listed"], "b.jpg": ["b's own caption"], "sub/c.jpg": [], "000001": []}
    assert not any(k.startswith("skipped_") for k in stats)


def test_stray_table_without_paths_hides_no_image(tmp_path, coco_dir):
    src = tmp_path / "src"
    src.mkdir()
    for i, data in enumerate(_photos(coco_dir, 2)):
        (src / f"{i}.jpg").write_bytes(data)
    _jsonl(src / "notes.jsonl", [{"url": "https://example.org/z.jpg", "caption": "remote"}])
    pq.write_table(pa.table({"note": ["not a sample table"]}), src / "manifest.parquet")
    rows, _ = _read(src)
    assert sorted(r["source_key"] for r in rows if r["error"] is None) == ["0.jpg", "1.jpg", "@0"]
    assert [r["error"].split(":")[0] for r in rows if r["error"]] == ["missing_image"]  # the manifest's record


def test_sidecar_of_a_listed_image_is_counted(tmp_path, coco_dir):
    (tmp_path / "a.jpg").write_bytes(_photos(coco_dir, 1)[0])
    (tmp_path / "a.txt").write_text("not read: the table's caption is")
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.jpg", "text": "from the table"}])
    rows, stats = _read(tmp_path)
    assert [r["source_key"] for r in rows] == ["@0"] and stats["skipped_sidecar_of_listed_image"] == 1


# --- #5: sidecar extensions in any case ---------------------------------------------------------


def test_upper_case_sidecars_are_read(tmp_path, coco_dir):
    a, b, c = _photos(coco_dir, 3)
    (tmp_path / "IMG_0001.JPG").write_bytes(a)
    (tmp_path / "IMG_0001.TXT").write_text("upper TXT")
    (tmp_path / "IMG_0002.jpg").write_bytes(b)
    (tmp_path / "IMG_0002.JSON").write_text('{"caption": "upper JSON"}')
    (tmp_path / "IMG_0003.Jpeg").write_bytes(c)
    (tmp_path / "IMG_0003.long.Txt").write_text("mixed case, long kind")
    (tmp_path / "ORPHAN.TXT").write_text("no image")
    rows, stats = _read(tmp_path)
    got = {r["source_key"]: [(x["text"], x["kind"]) for x in r["captions"]] for r in rows}
    assert got == {
        "IMG_0001.JPG": [("upper TXT", "short")],
        "IMG_0002.jpg": [("upper JSON", "short")],
        "IMG_0003.Jpeg": [("mixed case, long kind", "long")],
    }
    assert stats == {"skipped_caption_without_image": 1}


# --- #11: exact error texts ---------------------------------------------------------------------


def test_file_too_large_gives_the_real_size(tmp_path, coco_dir):
    photo = _photos(coco_dir, 1)[0]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(photo)
    _tar(tmp_path / "t.tar", [("000001.jpg", photo)])
    limit = len(photo) // 2
    for where in (src, tmp_path / "t.tar"):
        (row,), _ = _read(where, max_file_bytes=limit)
        assert row["error"] == f"file_too_large: {len(photo)} bytes > {limit}", where
        assert row["image"] is None


def _png_header(w: int, h: int) -> bytes:
    """A real PNG file that declares w x h pixels; decoding it would need gigabytes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_quotes_our_limit_and_the_size(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(20_000, 20_000))  # 400 M: above twice the default
    (tmp_path / "above.png").write_bytes(_png_header(10_000, 10_000))  # 100 M: above a lowered limit
    rows = _by_key(_read(tmp_path)[0])
    assert rows["bomb.png"]["error"] == "decompression_bomb: 20000x20000 = 400000000 pixels > limit 178956970"
    assert (rows["bomb.png"]["width"], rows["bomb.png"]["height"]) == (20_000, 20_000)
    lowered = _by_key(_read(tmp_path, max_pixels=50_000_000)[0])
    assert lowered["above.png"]["error"] == "decompression_bomb: 10000x10000 = 100000000 pixels > limit 50000000"


def test_unknown_caption_kind_is_refused(tmp_path, coco_dir):
    (tmp_path / "a.jpg").write_bytes(_photos(coco_dir, 1)[0])
    (tmp_path / "a.json").write_text('{"captions": [{"text": "x", "kind": "nonsense"}]}')
    (row,), _ = _read(tmp_path)
    assert row["error"] == "caption_invalid: a.json: captions[0].kind 'nonsense' is not one of alt, short, long, tags, ocr, reviewed"
    assert row["captions"] == [] and row["width"] > 0  # nothing guessed, the image still checked


def test_corrupt_table_error_has_no_trailing_newline(tmp_path):
    (tmp_path / "c.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    (row,), _ = _read(tmp_path / "c.parquet")
    assert row["error"].startswith("corrupt_table: ") and row["error"] == row["error"].strip()
