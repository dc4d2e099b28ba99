"""``curate export`` on real COCO rows: selection with reasons, buckets, weights, manifest, CLI, step."""

from __future__ import annotations

import json
import shutil

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from curation.buckets import PATCH
from curation.shards import MANIFEST_KEY
from curation.store import Store
from pipelines.export import ExportConfig, export
from tests.helpers import sample_row, samples_table
from training.loader import Loader, LoaderConfig, ShardDataset


@pytest.fixture(scope="module")
def curated_store(tmp_path_factory, coco_sample_rows):
    """COCO rows plus what the engines add: an ingest error, a profiling decode error, an exact duplicate, near-duplicate
    keep flags, review decisions and a reviewed caption, an NSFW score, weights, curriculum."""
    rows = [dict(r) for r in coco_sample_rows[:30]]
    dup = sample_row(rows[0]["image"], "copy", "dup.jpg", ["a copy"])
    broken = {**sample_row(rows[1]["image"], "bad", "bad.jpg", ["x"]), "image": None, "error": "truncated: cut at 100 bytes"}
    late_dup = sample_row(rows[2]["image"], "copy", "late.jpg", ["added after dedup ran"])
    rows += [dup, broken, late_dup]
    n = len(rows)

    t = samples_table(rows)
    ids = t.column("id").to_pylist()
    extra = {
        "prof_error": ["truncated: image file is truncated" if i == 12 else None for i in range(n)],
        "exact_dup_of": [ids[0] if i == 30 else ids[2] if i == 32 else None for i in range(n)],
        # the vector engine kept row 30 (say, better quality) over its exact copy row 0; row 32 came later
        "dup_keep": [None if i == 32 else False if i in (0, 3, 4) else True for i in range(n)],
        "dup_reason": ["exact" if i == 0 else "near" if i == 3 else None for i in range(n)],
        "rev_decision": ["drop" if i == 5 else "keep" if i == 6 else "disputed" if i == 7 else None for i in range(n)],
        "rev_caption": ["A reviewed caption." if i == 7 else None for i in range(n)],
        "prof_nsfw": [0.95 if i in (6, 8) else 0.01 for i in range(n)],  # row 6 was accepted by a reviewer
        "rs_weight": [0.0 if i == 9 else 2.5 if i == 10 else 1.0 for i in range(n)],
        "prof_curriculum": pa.array([i % 3 for i in range(n)], pa.int16()),
    }
    for k, v in extra.items():
        t = t.append_column(k, pa.array(v) if not isinstance(v, pa.Array) else v)
    uri = tmp_path_factory.mktemp("curated") / "src.lance"
    lance.write_dataset(t, str(uri), max_rows_per_file=8)
    return Store(str(uri)), ids


def test_export_selects_with_reasons_and_writes_a_training_set(ray_session, curated_store, tmp_path):
    store, ids = curated_store
    out = tmp_path / "train.lance"
    result = export(store, ExportConfig(out=str(out), resolution=256, rows_per_unit=10), show_progress=False)
    expected_excluded = {
        ids[31]: "error: truncated",
        ids[0]: "duplicate: exact",
        ids[32]: "exact_duplicate",
        ids[3]: "duplicate: near",
        ids[4]: "near_duplicate",
        ids[5]: "review_rejected",
        ids[8]: "rule:nsfw",
        ids[9]: "zero_weight",
        ids[12]: "decode_error: truncated",
    }
    excluded = pq.read_table(out / "_curation" / "export" / "excluded.parquet").to_pylist()
    assert {r["id"]: r["reason"] for r in excluded} == expected_excluded

    shards = lance.dataset(str(out))
    t = shards.to_table()
    assert t.num_rows == 33 - len(expected_excluded) == result.extra["kept"]
    assert set(t.column("id").to_pylist()) | set(expected_excluded) == set(ids)  # every row accounted for
    rows = {r["id"]: r for r in t.to_pylist()}
    assert ids[6] in rows and ids[30] in rows  # NSFW rule overridden by a reviewer's keep; the kept copy
    assert [c["text"] for c in rows[ids[7]]["captions"]] == ["A reviewed caption."]
    assert rows[ids[7]]["captions"][0]["kind"] == "reviewed"
    assert rows[ids[10]]["weight"] == 2.5 and rows[ids[11]]["weight"] == 1.0
    assert rows[ids[11]]["curriculum_stage"] == 11 % 3
    for r in rows.values():
        assert r["bucket_w"] % PATCH == 0 and r["bucket_h"] % PATCH == 0
        assert r["image_tokens"] == (r["bucket_w"] // PATCH) * (r["bucket_h"] // PATCH)
        assert r["resolution"] == 256 and 0.85 * 256**2 <= r["bucket_w"] * r["bucket_h"] <= 256**2
        assert len(r["caption_tokens"]) == len(r["captions"]) >= 1 and min(r["caption_tokens"]) > 0
        assert (r["bucket_w"] > r["bucket_h"]) == (r["width"] > r["height"]) or r["width"] == r["height"]

    manifest = json.loads(shards.schema.metadata[MANIFEST_KEY.encode()])
    assert manifest["source"] == {"uri": store.uri, "version": store.open().version, "rows": 33}
    assert manifest["excluded"]["error"] == 1 and manifest["excluded"]["rule:nsfw"] == 1
    assert manifest["columns_used"]["weight"] == "rs_weight" and manifest["columns_used"]["dedup_keep"] == "dup_keep"
    assert manifest["checks_skipped"] == []
    assert '<img src="data:image/png;base64,' in (out / "_curation" / "export" / "report.html").read_text()

    # the loader reads it: weights, curriculum filter, manifest
    ds = ShardDataset(str(out), LoaderConfig(token_budget=2048, filter="curriculum_stage = 0", weighted=False))
    assert ds.manifest["source"]["uri"] == store.uri
    got = [i for b in Loader(ds, num_workers=0) for i in b["ids"]]
    assert sorted(got) == sorted(r["id"] for r in rows.values() if r["curriculum_stage"] == 0)

    again = export(store, ExportConfig(out=str(out), resolution=256, rows_per_unit=10), show_progress=False)
    assert again.status == "skipped" and lance.dataset(str(out)).version == shards.version  # a re-run pipeline
    with pytest.raises(ValueError, match="--overwrite"):
        export(store, ExportConfig(out=str(out)), show_progress=False)  # a different config
    # a pipeline re-run after upstream changes writes a new version instead (history keeps the old)
    redo = export(store, ExportConfig(out=str(out), resolution=512, rows_per_unit=10), show_progress=False, replace_stale=True)
    assert redo.status == "committed" and redo.version == shards.version + 1
    assert json.loads(lance.dataset(str(out)).schema.metadata[MANIFEST_KEY.encode()])["config"]["resolution"] == 512


def test_export_works_on_a_bare_dataset_and_from_the_cli(ray_session, coco_store, tmp_path):
    from cli.main import app

    out = tmp_path / "bare.lance"
    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--resolution", "1024"])
    assert res.exit_code == 0, res.output
    t = lance.dataset(str(out)).to_table(columns=["resolution", "weight", "curriculum_stage", "image_tokens"])
    assert t.num_rows == 80
    # 640x480 COCO photos are not upscaled to 1024: they train at 512 (or 256 when smaller)
    assert set(t.column("resolution").to_pylist()) <= {256, 512} and 512 in t.column("resolution").to_pylist()
    assert set(t.column("weight").to_pylist()) == {1.0} and set(t.column("curriculum_stage").to_pylist()) == {None}
    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    skipped = " ".join(manifest["checks_skipped"])
    for check in ("exact_duplicate", "near_duplicate", "review", "rule:nsfw"):
        assert check in skipped

    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--resolution", "333"])
    assert res.exit_code != 0 and "resolution: Input should be 256, 512 or 1024" in str(res.exception)  # main() prints it


def test_export_as_a_pipeline_step_with_rules(ray_session, coco_store, tmp_path):
    from pipelines.pipeline import run_pipeline

    src = tmp_path / "src.lance"
    shutil.copytree(coco_store.uri, src)
    out = tmp_path / "p.lance"
    pipeline = {
        "dataset": str(src),
        "steps": [
            {
                "stage": "export",
                "params": {
                    "out": str(out),
                    "resolution": 256,
                    "rules": [
                        {"name": "portrait", "where": "height > width"},
                        {"name": "needs_profile", "where": "prof_quality < 0.2"},
                    ],
                },
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    run_pipeline(path, show_progress=False)
    portrait = lance.dataset(str(src)).count_rows(filter="height > width")
    assert 0 < portrait < 80
    assert lance.dataset(str(out)).count_rows() == 80 - portrait
    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    assert manifest["excluded"] == {"rule:portrait": portrait}
    assert any("needs_profile" in n and "prof_quality" in n for n in manifest["checks_skipped"])

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**pipeline, "steps": [{"stage": "export", "params": {"out": str(out), "rulez": []}}]}))
    from curation.config import ConfigError

    with pytest.raises(ConfigError, match="rulez"):
        run_pipeline(bad, show_progress=False)
