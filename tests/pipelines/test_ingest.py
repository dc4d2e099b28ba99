"""Ingest of every source kind, hostile files, exact duplicates, resume after a kill."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.store import Store
from democorpus.hostile import write_hostile_corpus
from pipelines.ingest import IngestConfig, ingest

ROOT = Path(__file__).resolve().parents[2]


def _photos(coco_dir, n):
    return sorted((coco_dir / "images").glob("*.jpg"))[:n]


def _by_key(store):
    return {
        r["source_key"]: r
        for r in store.to_arrow(
            columns=["source_key", "captions", "error", "width", "height", "format", "exact_dup_of", "image_uri"]
        ).to_pylist()
    }


def test_ingest_all_source_kinds(tmp_path, coco_dir, ray_session):
    photos = _photos(coco_dir, 6)
    folder = tmp_path / "src" / "folder"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(photos[0].read_bytes())
    (folder / "a.txt").write_text("A man riding a bicycle.\n")
    (folder / "a.long.txt").write_text("A man in a red jacket rides a bicycle down a wet street.")
    (folder / "b.jpg").write_bytes(photos[1].read_bytes())
    (folder / "b.json").write_text(
        json.dumps(
            {"captions": [{"text": "两只猫在沙发上睡觉", "kind": "short"}, {"text": "two cats sleeping on a sofa", "kind": "short"}]},
            ensure_ascii=False,
        )
    )
    # WebDataset tar in img2dataset's layout
    tar = tmp_path / "src" / "wds" / "00000.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        for i, p in enumerate(photos[2:4]):
            for name, data in [
                (f"{i:09d}.jpg", p.read_bytes()),
                (f"{i:09d}.txt", f"alt text {i}".encode()),
                (f"{i:09d}.json", json.dumps({"caption": f"alt text {i}", "key": f"{i:09d}"}).encode()),
            ]:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    # Parquet with bytes, JSONL with relative paths
    pqdir = tmp_path / "src" / "pq"
    pqdir.mkdir()
    pq.write_table(pa.table({"image": [photos[4].read_bytes()], "caption": ["a kitchen"], "caption_zh": ["一个厨房"]}), pqdir / "t.parquet")
    jdir = tmp_path / "src" / "jl"
    (jdir / "imgs").mkdir(parents=True)
    (jdir / "imgs" / "x.jpg").write_bytes(photos[5].read_bytes())
    (jdir / "rows.jsonl").write_text(json.dumps({"image": "imgs/x.jpg", "caption": "街上的公共汽车"}, ensure_ascii=False) + "\n")

    store = Store(tmp_path / "ds.lance")
    results = ingest(store, IngestConfig(source=[str(tmp_path / "src")]), show_progress=False)
    assert results[0].status == "committed"
    rows = _by_key(store)
    assert len(rows) == 6, sorted(rows)
    a = rows["folder/a.jpg"]
    assert {(c["kind"], c["lang"]) for c in a["captions"]} == {("short", "en"), ("long", "en")}
    b = rows["folder/b.jpg"]
    assert {c["lang"] for c in b["captions"]} == {"zh", "en"}
    assert rows["000000000"]["captions"] == [{"text": "alt text 0", "kind": "alt", "lang": "en"}]  # txt + json deduped
    pq_row = next(r for k, r in rows.items() if k.startswith("#0"))
    assert {c["text"] for c in pq_row["captions"]} == {"a kitchen", "一个厨房"}
    jl_row = next(r for k, r in rows.items() if k.startswith("@0"))
    assert jl_row["captions"][0]["lang"] == "zh" and jl_row["width"] > 0
    assert all(r["error"] is None and r["format"] == "JPEG" for r in rows.values())


def test_hostile_files_become_rows_with_reasons(tmp_path, coco_dir, ray_session):
    cases = write_hostile_corpus(tmp_path / "h", _photos(coco_dir, 1)[0].read_bytes())
    store = Store(tmp_path / "h.lance")
    results = ingest(store, IngestConfig(source=[str(tmp_path / "h")], shard_size=5), show_progress=False)
    rows = _by_key(store)
    # every input accounted for: one row per case (the tar symlink is a skipped, counted member)
    assert len(rows) == len(cases)
    assert results[0].stats.counters["tar_member_skipped"] == 1
    for name, case in cases.items():
        if name.startswith("tar:"):
            row = rows[name[4:]]
        elif name.startswith("jsonl:"):
            continue
        else:
            row = rows[case["path"]]
        reason = (row["error"] or "ok").split(":", 1)[0]
        assert reason == case["expect"], (name, row["error"])
    jl = sorted((r for k, r in rows.items() if k.startswith("@")), key=lambda r: int(r["source_key"][1:].split(":")[0]))
    assert [(r["error"] or "ok").split(":")[0] for r in jl] == ["ok", "path_outside_source", "bad_record", "ok"]
    assert jl[3]["image_uri"] == "https://example.invalid/x.jpg"
    huge = rows["folder/huge_caption.jpg"]["captions"][0]["text"]
    assert len(huge) == 64_000  # truncated, counted
    assert results[0].stats.counters["caption_truncated"] == 1
    assert "<script>" in rows["folder/html_caption.jpg"]["captions"][0]["text"]  # stored verbatim; UIs escape
    # byte-identical images are flagged against the first one in dataset order, not dropped
    ids = {r["source_key"]: r for r in store.to_arrow(columns=["id", "source_key"]).to_pylist()}
    full = store.to_arrow(columns=["id", "image_sha256", "exact_dup_of"]).to_pylist()  # dataset order
    good_sha = next(r["image_sha256"] for r in full if r["id"] == ids["folder/good.jpg"]["id"])
    group = [r for r in full if r["image_sha256"] == good_sha]
    assert len(group) == 5  # good.jpg, exact_copy.jpg, the utf-8 case, tar 000001, jsonl img.jpg
    assert group[0]["exact_dup_of"] is None
    assert all(r["exact_dup_of"] == group[0]["id"] for r in group[1:])
    assert store.error_counts()["decompression_bomb"] == 1


@pytest.mark.parametrize("in_memory_max", [5_000_000, 0], ids=["id-set", "id-index"])
def test_reingest_skips_existing_rows(tmp_path, coco_dir, ray_session, in_memory_max):
    src = tmp_path / "imgs"
    src.mkdir()
    for p in _photos(coco_dir, 3):
        (src / p.name).write_bytes(p.read_bytes())
    store = Store(tmp_path / "r.lance")
    cfg = IngestConfig(source=[str(src)], flag_exact_duplicates=False, existing_ids_in_memory_max=in_memory_max)
    ingest(store, cfg, show_progress=False)
    (src / "new.jpg").write_bytes(_photos(coco_dir, 4)[3].read_bytes())
    res = ingest(store, cfg, show_progress=False)
    assert res[0].stats.counters["skipped_existing"] == 3
    assert store.open().count_rows() == 4
    if in_memory_max == 0:  # the large-dataset path looked ids up through the index
        assert any(i["name"] == "id_idx" for i in store.open().list_indices())


def _curate(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kw,
    )


def test_killed_ingest_resumes_to_identical_rows(tmp_path, coco_dir, ray_session):
    """Kill -9 the whole `curate ingest` process group mid-job, re-run: same rows as a clean run."""
    killed = Store(tmp_path / "killed.lance")
    proc = _curate("ingest", str(coco_dir / "images"), "--dataset", killed.uri, "--shard-size", "2", "--no-exact-dup")
    ckpt_root = Path(killed.uri) / "_curation" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt_root.exists() and len(list(ckpt_root.glob("ingest-*/unit-*.json"))) >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(ckpt_root.glob("ingest-*/unit-*.json")))
    assert 5 <= n_done < 40 and not killed.exists()
    # the re-run (in this process, on the session's Ray) resumes from the checkpoints
    cfg = IngestConfig(source=[str(coco_dir / "images")], shard_size=2, flag_exact_duplicates=False)
    res = ingest(killed, cfg, show_progress=False)
    assert res[0].stats.rows == 80
    clean = Store(tmp_path / "clean.lance")
    ingest(clean, cfg, show_progress=False)
    cols = ["id", "image_sha256", "source_key", "captions", "width", "height"]
    assert killed.to_arrow(columns=cols).to_pylist() == clean.to_arrow(columns=cols).to_pylist()
