"""A dedup run after rows were appended takes the verifications of the last run instead of
decoding those images again, and finds the groups a run that verifies everything finds."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pytest

from curation.runner import run_stage
from curation.store import Store
from engines.vector.synth import make_variant
from pipelines.dedup import DedupConfig, find_duplicates
from pipelines.dedup_verified import FOLDER
from pipelines.descriptors import VisualStage
from tests.helpers import coco_rows, sample_row, samples_table

CFG = DedupConfig(rows_per_unit=12, dry_run=True)


def _rows(coco_dir, photos: range, kinds: tuple[str, ...], seed: int) -> list[dict]:
    base = coco_rows(coco_dir, limit=24)
    return [sample_row(make_variant(base[g]["image"], k, seed + g), "edits", f"{seed}-{g}-{k}") for g in photos for k in kinds]


@pytest.fixture(scope="module")
def grown(ray_session, coco_dir, tmp_path_factory):
    """Version 1: 20 photos and a crop, a mirror and a turn of 6 of them (files of 12 rows), dedup
    run once (its verifications kept); version 2: 8 rows appended (another crop of 4 of the same
    photos, a turn and a mirror of 2 others), descriptors computed for them. Read-only."""
    folder = tmp_path_factory.mktemp("grown")
    store = Store(str(folder / "ds.lance"))
    rows = coco_rows(coco_dir, limit=20) + _rows(coco_dir, range(6), ("crop", "mirror", "rotate"), 0)
    lance.write_dataset(samples_table(rows), store.uri, max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)
    first = find_duplicates(store, CFG, show_progress=False)
    added = _rows(coco_dir, range(4), ("crop",), 100) + _rows(coco_dir, range(6, 8), ("rotate", "mirror"), 200)
    lance.write_dataset(samples_table(added), store.uri, mode="append", max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)
    return store, first


def _copy(store: Store, path: Path, keep_verified: bool = True) -> Store:
    shutil.copytree(store.uri, path)
    out = Store(str(path))
    if not keep_verified:
        shutil.rmtree(Path(out.state_dir) / FOLDER)
    return out


def test_appended_rows_reuse_the_last_runs_verifications_and_find_the_same_groups(grown, tmp_path):
    store, first = grown
    assert first["stats"]["verifications_reused"] == 0
    assert first["stats"]["verified_pairs"] > 0
    again = find_duplicates(_copy(store, tmp_path / "again.lance"), CFG, show_progress=False)
    fresh = find_duplicates(_copy(store, tmp_path / "fresh.lance", keep_verified=False), CFG, show_progress=False)
    assert fresh["stats"]["verifications_reused"] == 0
    reused = again["stats"]["verifications_reused"]
    assert 0 < reused < fresh["stats"]["verified_pairs"] + fresh["stats"]["geometry_pairs"]  # the new rows' pairs are verified
    for key in ("verified_pairs", "geometry_pairs", "accepted_pairs", "desc_candidates"):
        assert again["stats"][key] == fresh["stats"][key], key
    for col in ("dup_group", "dup_keep", "dup_of"):
        assert again["plan"].column(col).to_pylist() == fresh["plan"].column(col).to_pylist(), col
    groups = [g for g in again["plan"].column("dup_group").to_pylist() if g is not None]
    assert len(groups) >= 24 + 8  # the 6 photos with their 3 edits, and the appended edits with theirs
    # every pair checked in both runs was taken over (each unit found its rows' share of the table)
    before, now = (_pairs(Path(s.state_dir) / FOLDER / "pairs.lance") for s in (store, Store(str(tmp_path / "again.lance"))))
    assert reused == len(before & now) and len(now) == again["stats"]["verified_pairs"] + again["stats"]["geometry_pairs"]


def _pairs(uri: Path) -> set[tuple[int, int]]:
    t = lance.dataset(str(uri)).to_table()
    return set(zip(t.column("i").to_pylist(), t.column("j").to_pylist()))


def test_a_committed_run_keeps_its_verifications_for_the_next(grown, tmp_path):
    """The dry run saves them, the real run (same state) commits dup_* columns, which leaves the
    images' data files as they were: the next version may still use them."""
    from pipelines.dedup import run_dedup
    from pipelines.dedup_verified import prior_verified

    store = _copy(grown[0], tmp_path / "c.lance", keep_verified=False)
    run_dedup(store, CFG, show_progress=False)
    out = run_dedup(store, CFG.model_copy(update={"dry_run": False}), show_progress=False)
    assert out["status"] == "committed"
    prior, why = prior_verified(store, store.open(), CFG.near.model_dump())
    assert prior is not None, why
    assert lance.dataset(prior["uri"]).count_rows() > 0


def test_other_settings_or_deleted_rows_verify_everything_again(grown, tmp_path):
    store, _ = grown
    other = CFG.model_copy(update={"near": CFG.near.model_copy(update={"min_inliers": 16})})
    got = find_duplicates(_copy(store, tmp_path / "other.lance"), other, show_progress=False)
    assert got["stats"]["verifications_reused"] == 0
    deleted = _copy(store, tmp_path / "deleted.lance")
    lance.dataset(deleted.uri).delete("id = '" + lance.dataset(deleted.uri).to_table(columns=["id"]).column("id")[3].as_py() + "'")
    got = find_duplicates(deleted, CFG, show_progress=False)
    assert got["stats"]["verifications_reused"] == 0
    assert got["stats"]["verified_pairs"] > 0
