"""Stages are incremental: rows appended by a second ingest are computed, the others kept, in one
version per stage run; ``overwrite`` recomputes every row, also in one version (issue #18)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image
from ray import cloudpickle

from curation.runner import run_stage
from curation.stage import Stage
from curation.store import Store
from pipelines.basic_stages import CaptionStatsStage
from pipelines.ingest import IngestConfig, ingest
from pipelines.profile import ProfileConfig, run_profile
from tests.curation import toy_plugin

cloudpickle.register_pickle_by_value(toy_plugin)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CHEAP = ["caption_count", "caption_chars", "caption_lang", "prof_width", "prof_height", "prof_phash"]


class TwiceStage(Stage):
    """Reads another stage's output (caption_stats), so rewriting that one changes its inputs."""

    name = "toy_twice"
    input_columns = ["caption_count"]
    output_schema = pa.schema([pa.field("toy_twice", pa.int32())])

    def process_batch(self, batch):
        return {"toy_twice": pa.array([2 * (c or 0) for c in batch.column("caption_count").to_pylist()], pa.int32())}


class FragmentIdStage(Stage):
    """Writes the fragment id it was told in ``begin_fragment`` (a stage that loads per-fragment
    state there, as dedup's and resampling's plans do)."""

    name = "toy_fragment"
    input_columns = ["id"]
    output_schema = pa.schema([pa.field("toy_fragment", pa.int64())])

    def setup(self) -> None:
        self.fragment = -1

    def begin_fragment(self, fragment_id: int) -> None:
        self.fragment = fragment_id

    def process_batch(self, batch):
        return {"toy_fragment": pa.array([self.fragment] * batch.num_rows, pa.int64())}


def _folder(dst: Path, images: list[Path]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in images:
        shutil.copy(p, dst / p.name)
        (dst / f"{p.stem}.txt").write_text(f"a photo numbered {p.stem}")
    return dst


@pytest.fixture
def two_batches(tmp_path, coco_dir):
    imgs = sorted((coco_dir / "images").glob("*.jpg"))
    return _folder(tmp_path / "first", imgs[:10]), _folder(tmp_path / "second", imgs[10:15])


def _ingest(store: Store, src: Path, shard_size: int = 256) -> None:
    ingest(store, IngestConfig(source=[str(src)], shard_size=shard_size), show_progress=False)


def _profile(store: Store, overwrite: bool = False) -> list:
    """caption_stats and the cheap meta + hash pass of ``curate profile`` (no models)."""
    out = [run_stage(store, CaptionStatsStage(), overwrite=overwrite, show_progress=False)]
    return out + run_profile(store, ProfileConfig(stages=["meta", "hash"]), overwrite=overwrite, show_progress=False)


def _values(store: Store) -> dict[str, dict]:
    return {r["id"]: r for r in store.to_arrow(columns=["id", *CHEAP]).to_pylist()}


def _stage_files(store: Store) -> dict[int, list[str]]:
    """Per fragment, the data files that hold the stages' columns (ingest's exact_dup, recomputed
    over every row at each ingest, has its own)."""
    ds = store.open()
    ids = {ds.lance_schema.field(c).id() for c in CHEAP}
    return {f.fragment_id: sorted(df.path for df in f.metadata.files if ids & set(df.fields)) for f in ds.get_fragments()}


def test_appended_rows_are_computed_old_ones_kept(ray_session, tmp_path, two_batches):
    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0])
    assert [r.stats.rows for r in _profile(store)] == [10, 10]
    old_files = _stage_files(store)
    before = _values(store)

    _ingest(store, two_batches[1])
    v0 = store.open().version
    results = _profile(store)
    assert [(r.stage, r.status, r.mode, r.stats.rows, r.fragments) for r in results] == [
        ("caption_stats", "committed", "incremental", 5, 1),
        ("prof_cheap", "committed", "incremental", 5, 1),
    ]
    versions = store.versions()
    assert [v["version"] for v in versions][-3:] == [v0, v0 + 1, v0 + 2]  # one version per stage run
    jobs = [v["job"] for v in versions[-2:]]
    assert [(j["stage"], j["mode"], j["rows"], j["fragments"]) for j in jobs] == [
        ("caption_stats", "incremental", "5", "1"),
        ("prof_cheap", "incremental", "5", "1"),
    ]
    assert jobs[0]["message"] == "stage caption_stats (incremental: 5 rows in 1 fragments)"
    # the old fragments keep their files of these columns (not rewritten), their values the same; no null
    assert {k: v for k, v in _stage_files(store).items() if k in old_files} == old_files
    after = _values(store)
    assert len(after) == 15 and {k: after[k] for k in before} == before
    assert all(r[c] is not None for r in after.values() for c in CHEAP)

    # nothing new: skipped, no version
    again = _profile(store)
    assert [r.status for r in again] == ["skipped", "skipped"] and store.open().version == v0 + 2

    # overwrite: every row, one version per stage, the same values
    full = _profile(store, overwrite=True)
    assert [(r.status, r.mode, r.stats.rows) for r in full] == [("committed", "full", 15)] * 2
    assert store.open().version == v0 + 4 and _values(store) == after
    assert store.versions()[-1]["job"]["mode"] == "full"


def test_rewritten_inputs_are_recomputed(ray_session, tmp_path, two_batches):
    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0], shard_size=5)  # two fragments
    run_stage(store, CaptionStatsStage(), show_progress=False)
    assert run_stage(store, TwiceStage(), show_progress=False).stats.rows == 10
    assert run_stage(store, TwiceStage(), show_progress=False).status == "skipped"
    # caption_stats recomputed: toy_twice's input files changed on every fragment
    run_stage(store, CaptionStatsStage(), overwrite=True, show_progress=False)
    r = run_stage(store, TwiceStage(), show_progress=False)
    assert (r.status, r.mode, r.stats.rows, r.fragments) == ("committed", "incremental", 10, 2)
    t = store.to_arrow(columns=["caption_count", "toy_twice"]).to_pylist()
    assert all(row["toy_twice"] == 2 * row["caption_count"] for row in t)


def test_begin_fragment_is_called_on_full_and_incremental_runs(ray_session, tmp_path, two_batches):
    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0], shard_size=5)
    assert run_stage(store, FragmentIdStage(), show_progress=False).mode == "full"
    _ingest(store, two_batches[1], shard_size=5)
    assert run_stage(store, FragmentIdStage(), show_progress=False).mode == "incremental"  # new fragments: filled
    ds = store.open()
    got = {f.fragment_id: set(f.to_table(columns=["toy_fragment"]).column(0).to_pylist()) for f in ds.get_fragments()}
    assert len(got) >= 3 and all(vals == {fid} for fid, vals in got.items()), got


def test_incremental_run_resumes_after_failure(ray_session, tmp_path, two_batches):
    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0])
    marker = tmp_path / "fail"
    stage = toy_plugin.ShoutStage({"fail_marker": str(marker)})
    run_stage(store, stage, show_progress=False)
    _ingest(store, two_batches[1], shard_size=2)  # three new fragments
    new = [f for f in store.open().get_fragments()][-3:]
    marker.write_text("1")
    Path(f"{marker}.{sorted(new[2].to_table(columns=['id']).column('id').to_pylist())[0]}").write_text("1")
    v = store.open().version
    with pytest.raises(Exception, match="injected failure"):
        run_stage(store, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False, concurrency=1)
    assert store.open().version == v and store.open().count_rows(filter="toy_shout IS NULL") == 5  # nothing half-committed
    marker.unlink()
    r = run_stage(store, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False)
    assert (r.status, r.mode, r.fragments) == ("committed", "incremental", 3) and 1 <= r.fragments_resumed <= 2
    assert store.open().version == v + 1
    t = store.to_arrow(columns=["captions", "toy_shout"]).to_pylist()
    assert len(t) == 15 and all(row["toy_shout"] == row["captions"][0]["text"].upper() + "!" for row in t)


def test_dedup_sees_appended_rows(ray_session, tmp_path, two_batches):
    from pipelines.dedup import DedupConfig, run_dedup

    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0])
    run_dedup(store, DedupConfig(), show_progress=False)
    # a re-encoded, smaller copy of an old image arrives with the second batch
    first = sorted(two_batches[0].glob("*.jpg"))[3]
    copy = two_batches[1] / "copy_of_first.jpg"
    Image.open(first).convert("RGB").resize((320, 240)).save(copy, quality=70)
    (two_batches[1] / "copy_of_first.txt").write_text("a copy")
    _ingest(store, two_batches[1])
    out = run_dedup(store, DedupConfig(), show_progress=False)
    assert out["status"] == "committed" and store.open().count_rows(filter="vec_desc IS NULL") == 0
    latest = max((store.state_dir / "vector").glob("dedup-v*.json"), key=lambda p: int(p.stem.split("-v")[1]))
    assert "null_vector" not in latest.read_text()
    t = {r["id"]: r for r in store.to_arrow(columns=["id", "source_key", "dup_group"]).to_pylist()}
    by_name = {r["source_key"]: r for r in t.values()}
    a, b = by_name[first.name], by_name[copy.name]
    assert a["dup_group"] is not None and a["dup_group"] == b["dup_group"]


def test_a_rerun_with_nothing_new_commits_nothing_for_stages_choosing_inputs_in_prepare(ray_session, tmp_path, two_batches):
    """prof_caption and prof_scores pick their input columns from the schema in ``prepare``; the
    plan must use the same columns as the record written at commit, or every re-run recomputes
    them all ("inputs_changed") and commits two new versions with nothing changed."""
    store = Store(tmp_path / "d.lance")
    _ingest(store, two_batches[0], shard_size=4)
    cfg = ProfileConfig(stages=["meta", "hash", "entropy", "ocr", "caption", "scores"])
    first = run_profile(store, cfg, show_progress=False)
    assert {r.status for r in first} == {"committed"}, [(r.stage, r.status) for r in first]
    version = store.open().version
    again = run_profile(store, cfg, show_progress=False)
    assert [(r.stage, r.status) for r in again] == [(r.stage, "skipped") for r in again]
    assert store.open().version == version
