"""The hostile corpus through the whole pipeline: the run completes and every input row is accounted for."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from curation.hostile import write_hostile_corpus
from curation.store import Store


def test_hostile_corpus_through_every_engine(tmp_path, coco_dir, ray_session):
    from pipelines.pipeline import run_pipeline

    photos = sorted((coco_dir / "images").glob("*.jpg"))
    cases = write_hostile_corpus(tmp_path / "h", photos[0].read_bytes())
    ds = tmp_path / "h.lance"
    cfg = {
        "dataset": str(ds),
        "steps": [
            {"stage": "ingest", "params": {"source": [str(tmp_path / "h")], "shard_size": 8}},
            {"stage": "profile", "params": {"stages": ["meta", "hash", "entropy", "degradation", "nsfw", "caption", "scores"]}},
            {"stage": "dedup"},
            {"stage": "graph_build", "params": {"out": str(tmp_path / "graph"), "visual_only": True, "zh": False, "graphml": False}},
            {"stage": "graph_tag", "params": {"graph": str(tmp_path / "graph")}},
            {"stage": "resample", "params": {"graph": str(tmp_path / "graph"), "target_size": 20}},
            {"stage": "review_mine", "params": {"n": 10, "db": str(tmp_path / "review.db")}},
            {"stage": "export", "params": {"out": str(tmp_path / "shards"), "resolution": 256}},
            {"stage": "train", "params": {"shards": str(tmp_path / "shards"), "model": "tiny", "steps": 2,
                                          "out_dir": str(tmp_path / "train"), "tiny_encoders": True, "ckpt_every": 1000,
                                          "sample_every": 0}},
        ],
    }
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_pipeline(path, show_progress=False)
    assert [r.stage for r in results][-1] == "train"

    store = Store(ds)
    rows = store.to_arrow(columns=["id", "source_key", "error", "captions"]).to_pylist()
    assert len(rows) == len(cases)  # one row per hostile input, none lost
    # every row is kept, excluded with a reason, or errored with a reason
    kept = set(store.__class__(tmp_path / "shards").to_arrow(columns=["id"]).column("id").to_pylist())
    excluded = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "shards" / "_curation" / "export" / "excluded.parquet").to_pylist()}
    assert kept.isdisjoint(excluded)
    for r in rows:
        assert r["id"] in kept or excluded.get(r["id"]), r["source_key"]
        if r["error"]:
            assert r["id"] not in kept and excluded[r["id"]]
    assert all(reason for reason in excluded.values())
    # hostile captions travel as data, byte for byte (the UI escapes them; see tests/review)
    html_row = next(r for r in rows if r["source_key"] == "folder/html_caption.jpg")
    assert "<script>" in html_row["captions"][0]["text"]
    metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert metrics and all(m.get("loss") is None or m["loss"] == m["loss"] for m in metrics)  # finite, not NaN
