"""Datasets by s3:// URI against a local S3-compatible server (moto): ingest, a stage, a resumed
stage, versions, diff, DuckDB and `curate info`, with the bytes really in the bucket."""

from __future__ import annotations

import shutil

import pytest
from ray import cloudpickle
from typer.testing import CliRunner

from curation.runner import run_stage
from curation.store import Store, is_remote
from pipelines.basic_stages import CaptionStatsStage
from pipelines.ingest import IngestConfig, ingest
from tests.curation import toy_plugin

cloudpickle.register_pickle_by_value(toy_plugin)


@pytest.fixture
def s3(s3_env, monkeypatch, tmp_path, request):
    """A fresh bucket and the AWS_* environment the store reads; local state (checkpoints, stats)
    of remote datasets goes to a per-test folder."""
    env, client = s3_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CURATE_STATE_DIR", str(tmp_path / "state"))
    bucket = f"cur-{request.node.name[5:20].replace('_', '-')}"
    client.create_bucket(Bucket=bucket)
    return bucket, client


@pytest.fixture
def photo_dir(coco_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(sorted((coco_dir / "images").glob("*.jpg"))[:6]):
        shutil.copy(p, src / p.name)
        (src / f"{p.stem}.txt").write_text("一只猫坐在窗台上" if i % 2 else f"a photo number {i}", encoding="utf-8")
    return src


def test_ingest_stage_info_versions_on_s3(s3, photo_dir, ray_session):
    bucket, client = s3
    uri = f"s3://{bucket}/photos.lance"
    store = Store(uri)
    assert is_remote(store.uri) and store.storage_options["allow_http"] == "true"
    assert not store.exists()
    results = ingest(store, IngestConfig(source=[str(photo_dir)], shard_size=3), show_progress=False)
    assert [r.stage for r in results] == ["ingest", "exact_dup"] and results[0].stats.rows == 6
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("photos.lance/data/") and k.endswith(".lance") for k in keys)
    assert any(k.startswith("photos.lance/_versions/") for k in keys)

    r = run_stage(store, CaptionStatsStage(), show_progress=False)
    assert r.status == "committed" and r.fragments == 2 and r.stats.rows == 6
    langs = sorted(store.to_arrow(columns=["caption_lang"]).column("caption_lang").to_pylist())
    assert langs == ["en"] * 3 + ["zh"] * 3
    assert [v["version"] for v in store.versions()] == [1, 2, 3]
    d = store.diff(2, 3)
    assert d["columns_added"] == ["caption_chars", "caption_count", "caption_lang"] and d["rows"] == [6, 6]
    con = store.duckdb()
    assert con.sql("SELECT count(*) FROM samples WHERE caption_lang = 'zh'").fetchall() == [(3,)]

    from cli.main import app

    out = CliRunner().invoke(app, ["info", "--dataset", uri])
    assert out.exit_code == 0, out.output
    assert "rows 6" in out.output and "caption_stats" in out.output and "v3" in out.output
    out = CliRunner().invoke(app, ["diff", "--dataset", uri, "1", "3"])
    assert out.exit_code == 0 and '"exact_dup_of"' in out.output and '"caption_count"' in out.output
    missing = CliRunner().invoke(app, ["info", "--dataset", f"s3://{bucket}/nothing.lance"])
    assert missing.exit_code == 2 and "no Lance dataset" in missing.output


def test_stage_on_s3_resumes_after_failure(s3, photo_dir, ray_session, tmp_path):
    bucket, _ = s3
    store = Store(f"s3://{bucket}/resume.lance")
    ingest(store, IngestConfig(source=[str(photo_dir)], shard_size=2, flag_exact_duplicates=False), show_progress=False)
    frags = store.open().get_fragments()
    assert len(frags) == 3
    marker = tmp_path / "fail"
    marker.write_text("1")
    last_first_id = sorted(frags[-1].to_table(columns=["id"]).column("id").to_pylist())[0]
    (tmp_path / f"fail.{last_first_id}").write_text("1")  # the last fragment fails while the marker exists
    with pytest.raises(Exception, match="injected failure"):
        run_stage(store, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False, concurrency=1)
    assert "toy_shout" not in store.open().schema.names
    marker.unlink()
    r = run_stage(store, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False)
    assert r.status == "committed" and r.fragments_resumed >= 1 and r.stats.counters["shouted"] == 6
    rows = store.to_arrow(columns=["captions", "toy_shout"]).to_pylist()
    assert all(row["toy_shout"] == row["captions"][0]["text"].upper() + "!" for row in rows)
