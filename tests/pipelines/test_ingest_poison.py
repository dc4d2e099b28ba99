"""Issue #21, nothing lost, nothing leaked: single poison inputs through the real readers
(``plan_units`` + ``read_unit``) and through ``ingest`` / ``curate ingest`` on Ray.

Each test feeds one kind of input that used to crash the whole job, store bytes from outside the
source, ignore a limit, or commit an empty version, and checks the documented rule (docs/ingest.md)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.schema import SAMPLES_SCHEMA
from curation.sources import ReadOptions, plan_units, read_unit
from curation.store import Store
from democorpus.hostile import write_hostile_corpus
from pipelines.ingest import EmptySourceError, IngestConfig, ingest

ROOT = Path(__file__).resolve().parents[2]
PASSWD = Path("/etc/passwd")


def _jpeg(size=(32, 24), color=(9, 99, 200), exif: bytes | None = None) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "JPEG", **({"exif": exif} if exif else {}))
    return b.getvalue()


def _read(src, **kw) -> tuple[list[dict], dict[str, int]]:
    """Every row of ``src`` through the real readers, checked storable in the samples schema."""
    opts, stats = ReadOptions(**kw), {}
    rows = [r for u in plan_units([str(src)], opts) for r in read_unit(u, opts, stats)]
    pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)  # what the worker writes: must not raise
    return rows, stats


def _reasons(rows) -> dict[str, str]:
    return {r["source_key"]: (r["error"] or "ok").split(":", 1)[0] for r in rows}


# --- 1. one bad record is one error row, the rest of its input stored ------------------------


def test_non_utf8_file_name_is_one_error_row(tmp_path):
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    with open(os.fsencode(tmp_path) + b"/bad\xffname.jpg", "wb") as f:
        f.write(_jpeg(color=(1, 2, 3)))
    rows, _ = _read(tmp_path)
    assert _reasons(rows) == {"good.jpg": "ok", "bad\\xffname.jpg": "bad_name"}
    bad = next(r for r in rows if r["error"])
    assert bad["width"] == 32  # the image itself was read and checked


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        ('{"captions": 5}', "caption_invalid"),
        ('{"captions": [{"text": "a dog", "lang": 5}]}', "caption_invalid"),
        ('{"caption": 7}', "caption_invalid"),
        ('{"caption": "lone \\udc80 low surrogate"}', "caption_encoding"),
        ('{"caption": "lone \\ud800 high surrogate"}', "caption_encoding"),
        ('{"captions": [{"text": "x", "lang": "\\udc80"}]}', "caption_encoding"),
        ('{"caption": "nul \\u0000 inside"}', "caption_encoding"),
        ('{"caption": "first", "caption": "second"}', "duplicate_key"),
        ("[1, 2]", "caption_invalid"),
        ("9" * 5000, "caption_json_invalid"),
        ("[" * 100_000, "caption_json_invalid"),
    ],
)
def test_bad_json_sidecar_is_one_error_row(tmp_path, sidecar, reason):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "a.json").write_text(sidecar)
    (tmp_path / "b.jpg").write_bytes(_jpeg(color=(5, 5, 5)))
    (tmp_path / "b.txt").write_text("a fine caption")
    rows, stats = _read(tmp_path)
    assert _reasons(rows) == {"a.jpg": reason, "b.jpg": "ok"}
    assert stats[f"error_{reason}"] == 1
    b = next(r for r in rows if r["source_key"] == "b.jpg")
    assert [c["text"] for c in b["captions"]] == ["a fine caption"]


def test_bad_jsonl_records_are_error_rows(tmp_path):
    (tmp_path / "x.jpg").write_bytes(_jpeg())
    lines = [
        '{"image": "x.jpg", "caption": "fine"}',
        '{"image": "x.jpg", "captions": 5}',
        '{"image": "x.jpg", "captions": [{"text": "a", "lang": 5}]}',
        '{"image": "x.jpg", "caption": "\\ud800"}',
        '{"image": "x.jpg", "id": "key \\udc80", "caption": "bad key"}',
        '{"image": "x.jpg", "caption": "a", "caption": "b"}',
        '{"image": {"bytes": 5, "path": "x.jpg"}, "caption": "bytes of the wrong type"}',
        '{"image": "x.jpg\\u0000.png", "caption": "NUL in a path"}',
        '{"image": "x.jpg", "id": ' + "1" * 5000 + "}",
        '"just a string"',
        '{"image": "x.jpg", "caption": "also fine"}',
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    rows, _ = _read(tmp_path / "r.jsonl")
    got = [(r["error"] or "ok").split(":", 1)[0] for r in rows]
    assert got == [
        "ok",
        "bad_record",
        "bad_record",
        "caption_encoding",
        "bad_name",
        "duplicate_key",
        "ok",
        "unreadable",
        "bad_record",
        "bad_record",
        "ok",
    ]
    assert rows[4]["source_key"].endswith("key \\x80")
    assert rows[6]["width"] == 32  # the struct's wrong-typed bytes were not used, its path was


def test_parquet_with_bad_columns_is_error_rows(tmp_path):
    good = _jpeg()
    pq.write_table(pa.table({"image": [good, good, good], "captions": [1, 2, 3]}), tmp_path / "ints.parquet")
    pq.write_table(
        pa.table({"image": [good, good], "captions": pa.array([["ok"], [None]], pa.list_(pa.string())), "tags": [5, None]}),
        tmp_path / "tags.parquet",
    )
    dup = pa.Table.from_arrays([pa.array([good]), pa.array(["a"]), pa.array(["b"])], names=["image", "caption", "caption"])
    pq.write_table(dup, tmp_path / "dup.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    assert set(_reasons(_read(tmp_path / "ints.parquet")[0]).values()) == {"bad_record"}
    assert len(_read(tmp_path / "ints.parquet")[0]) == 3
    assert list(_reasons(_read(tmp_path / "tags.parquet")[0]).values()) == ["bad_record", "bad_record"]
    assert list(_reasons(_read(tmp_path / "dup.parquet")[0]).values()) == ["duplicate_key"]
    assert list(_reasons(_read(tmp_path / "corrupt.parquet")[0]).values()) == ["corrupt_table"]


# --- 2. symlinks and paths: one rule for every source kind --------------------------------------


def test_symlinks_out_of_every_source_kind_are_refused(tmp_path):
    secret = PASSWD.read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(_jpeg())
    (folder / "x.jpg").symlink_to(PASSWD)  # an image symlinked out
    (folder / "y.jpg").write_bytes(_jpeg(color=(7, 7, 7)))
    (folder / "y.txt").symlink_to(PASSWD)  # a sidecar symlinked out
    (folder / "inside.jpg").symlink_to(folder / "good.jpg")  # stays inside: followed
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "link.jpg").symlink_to(PASSWD)
    recs = [{"image": "link.jpg"}, {"image": str(PASSWD)}, {"image": "../folder/good.jpg"}]
    (tables / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pq.write_table(pa.table({"image": ["link.jpg", str(PASSWD)]}), tables / "t.parquet")
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as tf:
        for name, target in (("000001.jpg", str(PASSWD)), ("000002.jpg", "../../etc/passwd")):
            link = tarfile.TarInfo(name)
            link.type = tarfile.SYMTYPE
            link.linkname = target
            tf.addfile(link)
    rows = [r for src in (folder, tables, tar) for r in _read(src)[0]]
    refused = [r for r in rows if r["error"] and r["error"].startswith("path_outside_source")]
    assert len(refused) == 2 + 3 + 2 + 2  # folder: image, sidecar; jsonl: 3; parquet: 2; tar: 2
    assert all(" resolves outside " in r["error"] for r in refused)
    assert all(secret not in (r["image"] or b"") for r in rows)
    assert all(secret.decode(errors="ignore")[:40] not in json.dumps(r["captions"]) for r in rows)
    ok = {r["source_key"] for r in rows if r["error"] is None}
    assert ok == {"good.jpg", "inside.jpg"}


def test_symlink_out_is_refused_through_ingest(tmp_path, ray_session):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jpg").write_bytes(_jpeg())
    (src / "x.jpg").symlink_to(PASSWD)
    store = Store(tmp_path / "s.lance")
    ingest(store, IngestConfig(source=[str(src)], flag_exact_duplicates=False), show_progress=False)
    rows = {r["source_key"]: r for r in store.to_arrow(columns=["source_key", "image", "error"]).to_pylist()}
    assert rows["x.jpg"]["image"] is None and rows["x.jpg"]["error"].startswith("path_outside_source: 'x.jpg'")


# --- 3. limits that can be raised and lowered, honoured on the Ray workers -----------------------


def test_limits_raise_and_lower_on_ray_workers(tmp_path, ray_session):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("1", (9500, 9500)).save(src / "above_pil_warning.png")  # 90.25 M pixels: PIL warned
    Image.new("1", (14000, 13000)).save(src / "above_default.png")  # 182 M > 178,956,970
    (src / "small.jpg").write_bytes(_jpeg((40, 40)))
    (src / "small.txt").write_text("a caption of forty-two characters, or so.")

    def errors(name, **kw):
        store = Store(tmp_path / f"{name}.lance")
        ingest(store, IngestConfig(source=[str(src)], flag_exact_duplicates=False, **kw), show_progress=False)
        return {r["source_key"]: r for r in store.to_arrow(columns=["source_key", "error", "width", "captions"]).to_pylist()}

    default = errors("default")
    assert default["above_pil_warning.png"]["error"] is None and default["above_pil_warning.png"]["width"] == 9500
    assert default["above_default.png"]["error"].startswith("decompression_bomb")
    raised = errors("raised", max_pixels=500_000_000, max_caption_chars=10)
    assert raised["above_default.png"]["error"] is None and raised["above_default.png"]["width"] == 14000
    assert raised["small.jpg"]["captions"][0]["text"] == "a caption "
    lowered = errors("lowered", max_pixels=1000)
    assert all(r["error"].startswith("decompression_bomb") for r in lowered.values())


def test_cli_takes_the_limits():
    env = {**os.environ, "COLUMNS": "300"}  # rich would cut long option names at 80
    out = subprocess.run([sys.executable, "-m", "cli", "ingest", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for opt in ("--max-pixels", "--max-caption-chars", "--max-file-bytes"):
        assert opt in out.stdout


# --- 4. deterministic error texts ---------------------------------------------------------------


def test_hostile_corpus_twice_gives_identical_errors(tmp_path, coco_dir, ray_session):
    photo = sorted((coco_dir / "images").glob("*.jpg"))[0].read_bytes()
    write_hostile_corpus(tmp_path / "h", photo)
    got = []
    for name in ("one", "two"):
        store = Store(tmp_path / f"{name}.lance")
        ingest(store, IngestConfig(source=[str(tmp_path / "h")], shard_size=8, flag_exact_duplicates=False), show_progress=False)
        got.append(sorted((r["id"], r["error"]) for r in store.to_arrow(columns=["id", "error"]).to_pylist()))
    assert got[0] == got[1]
    assert not any(" at 0x" in (e or "") for _, e in got[0])


# --- 5. empty sources: a message, no empty version -------------------------------------------------


def test_empty_sources_are_refused_without_a_version(tmp_path, ray_session):
    empty_pq = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "caption": pa.array([], pa.string())}), empty_pq)
    folder = tmp_path / "nothing"
    folder.mkdir()
    store = Store(tmp_path / "e.lance")
    for src in (empty_pq, folder):
        with pytest.raises(EmptySourceError, match="nothing to ingest"):
            ingest(store, IngestConfig(source=[str(src)]), show_progress=False)
    assert not store.exists()


@pytest.mark.parametrize("layout", ["empty", "orphan_captions"])
def test_cli_refuses_empty_sources_with_a_message(tmp_path, layout):
    src = tmp_path / "src"
    src.mkdir()
    if layout == "orphan_captions":
        (src / "a.txt").write_text("a caption without its image")
        (src / "b.json").write_text('{"caption": "another"}')
    ds = tmp_path / "ds.lance"
    out = subprocess.run(
        [sys.executable, "-m", "cli", "ingest", str(src), "--dataset", str(ds)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "nothing to ingest" in text and "Traceback" not in text
    if layout == "orphan_captions":
        assert "2 caption files without an image" in " ".join(text.split())
    assert not ds.exists()


# --- 6. JSON duplicate fields, NUL in UTF-8 and UTF-16 ------------------------------------------


def test_nul_in_caption_is_one_rule_for_utf8_and_utf16(tmp_path):
    for name, data in [("u8", b"a\x00b"), ("u16le", "a\x00b".encode("utf-16")), ("u16be", b"\xfe\xff" + "a\x00b".encode("utf-16-be"))]:
        (tmp_path / f"{name}.jpg").write_bytes(_jpeg())
        (tmp_path / f"{name}.txt").write_bytes(data)
    rows, _ = _read(tmp_path)
    assert set(_reasons(rows).values()) == {"caption_encoding"}
    assert all("NUL" in r["error"] and r["captions"] == [] for r in rows)


def test_duplicate_json_field_is_an_error_not_the_last_value(tmp_path):
    (tmp_path / "x.jpg").write_bytes(_jpeg())
    (tmp_path / "r.jsonl").write_text('{"image": "x.jpg", "caption": "a", "caption": "b"}\n')
    (row,), _ = _read(tmp_path / "r.jsonl")
    assert row["error"].startswith("duplicate_key: field 'caption'") and row["captions"] == []


# --- 7. EXIF orientation: ingest stores what profile measures ------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 8, 0, 42])
def test_exif_orientation_width_height_match_profile(tmp_path, orientation):
    from engines.profiling.decode import DecodeOptions, decode_image

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg((40, 20), exif=exif.tobytes())
    (tmp_path / "r.jpg").write_bytes(data)
    (row,), _ = _read(tmp_path)
    meta = decode_image(data, DecodeOptions()).meta
    assert (row["width"], row["height"]) == (meta["width"], meta["height"])
    assert (row["width"], row["height"]) == ((20, 40) if orientation in (5, 6, 8) else (40, 20))
