"""A dedup run after rows were appended extends the last run's candidate search (only the new
rows search the whole index; the old rows search the new rows' index) and takes its
verifications instead of decoding those images again, and finds the candidates and groups of a
run that does everything anew."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lance
import pytest

from curation.runner import run_stage
from curation.store import Store
from engines.vector.synth import make_variant
from pipelines.dedup import DedupConfig, find_duplicates
from pipelines.dedup_kept import FOLDER, NEAR_RECORD, near_record
from pipelines.descriptors import VisualStage
from tests.helpers import coco_rows, sample_row, samples_table

CFG = DedupConfig(rows_per_unit=12, dry_run=True)


def _rows(coco_dir, photos: range, kinds: tuple[str, ...], seed: int) -> list[dict]:
    base = coco_rows(coco_dir, limit=24)
    return [sample_row(make_variant(base[g]["image"], k, seed + g), "edits", f"{seed}-{g}-{k}") for g in photos for k in kinds]


def _grown(coco_dir, folder: Path, cfg: DedupConfig) -> tuple[Store, dict]:
    """Version 1: 20 photos and a crop, a mirror and a turn of 6 of them (files of 12 rows), dedup
    run once with ``cfg`` (its work kept); then 8 rows appended (another crop of 4 of the same
    photos, a turn and a mirror of 2 others), descriptors computed for them."""
    store = Store(str(folder / "ds.lance"))
    rows = coco_rows(coco_dir, limit=20) + _rows(coco_dir, range(6), ("crop", "mirror", "rotate"), 0)
    lance.write_dataset(samples_table(rows), store.uri, max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)
    first = find_duplicates(store, cfg, show_progress=False)
    added = _rows(coco_dir, range(4), ("crop",), 100) + _rows(coco_dir, range(6, 8), ("rotate", "mirror"), 200)
    lance.write_dataset(samples_table(added), store.uri, mode="append", max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)
    return store, first


@pytest.fixture(scope="module")
def grown(ray_session, coco_dir, tmp_path_factory):
    """``_grown`` with the exact (flat) candidate index. Read-only: tests take copies."""
    return _grown(coco_dir, tmp_path_factory.mktemp("grown"), CFG)


def _copy(store: Store, path: Path, keep: bool = True) -> Store:
    """A copy of the dataset with its state; ``keep=False``: what the last run kept removed."""
    shutil.copytree(store.uri, path)
    out = Store(str(path))
    if not keep:
        shutil.rmtree(Path(out.state_dir) / FOLDER)
        (Path(out.state_dir) / NEAR_RECORD).unlink()
    return out


def _edges(res: dict) -> dict[tuple[int, int], float]:
    t = lance.dataset(str(Path(res["state"]) / "candidates.lance")).to_table()
    return {(i, j): s for i, j, s in zip(t.column("i").to_pylist(), t.column("j").to_pylist(), t.column("sim").to_pylist())}


def _same_edges(a: dict, b: dict) -> bool:
    """The same pairs, similarities to float32 rounding (BLAS sums other shapes in another order)."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_appended_rows_reuse_the_last_runs_verifications_and_find_the_same_groups(grown, tmp_path):
    store, first = grown
    assert first["stats"]["verifications_reused"] == 0
    assert first["stats"]["verified_pairs"] > 0
    again = find_duplicates(_copy(store, tmp_path / "again.lance"), CFG, show_progress=False)
    fresh = find_duplicates(_copy(store, tmp_path / "fresh.lance", keep=False), CFG, show_progress=False)
    assert fresh["stats"]["verifications_reused"] == 0
    assert again["stats"]["rows_searched_before"] == 38 and fresh["stats"]["rows_searched_before"] == 0
    # the copy extended its own copy of the kept search (paths relative to its state folder)
    assert str(tmp_path / "again.lance") in json.dumps(json.loads((Path(again["state"]) / "units.json").read_text())["prior"])
    assert _same_edges(_edges(again), _edges(fresh)) and len(_edges(again)) == again["stats"]["desc_candidates"] > 100
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
    from pipelines.dedup_kept import prior_verified

    store = _copy(grown[0], tmp_path / "c.lance", keep=False)
    run_dedup(store, CFG, show_progress=False)
    out = run_dedup(store, CFG.model_copy(update={"dry_run": False}), show_progress=False)
    assert out["status"] == "committed"
    prior, why = prior_verified(store, store.open(), CFG.near.model_dump())
    assert prior is not None, why
    assert lance.dataset(prior["uri"]).count_rows() > 0
    owners = near_record(store)["owners"]
    kept = Path(owners).parent
    assert (kept / "KEPT_ONLY").exists() and not (kept / "units.json").exists()  # the rest of the job folder is gone
    # nothing appended since (dup_* columns only): the kept search is the candidates, nothing is searched
    again = find_duplicates(store, CFG, show_progress=False)
    assert again["stats"]["rows_searched_before"] == 46 and not (Path(again["state"]) / "regions.faiss").exists()
    assert again["plan"].column("dup_group").to_pylist() == store.open().to_table(columns=["dup_group"]).column("dup_group").to_pylist()
    record = near_record(store)
    assert record["index"] == str(kept / "regions.faiss") and Path(record["index"]).exists()
    assert not Path(owners).exists()  # the owners the committed run kept, replaced


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


def test_an_ivf_search_extended_in_one_pass_or_in_passes_finds_the_candidates_of_a_new_one(ray_session, coco_dir, tmp_path, monkeypatch):
    """The kept IVF index extended with the new rows (the old rows searching the new rows' own
    index, in passes over its lists when they outgrow one), every list probed: the candidates
    and groups of a run that trains and searches anew."""
    from engines.vector.index import IndexConfig

    cfg = CFG.model_copy(update={"index": IndexConfig(kind="ivfflat", nlist=4, nprobe=4)})
    store, _ = _grown(coco_dir, tmp_path / "v1", cfg)
    again = find_duplicates(_copy(store, tmp_path / "again.lance"), cfg, show_progress=False)
    fresh = find_duplicates(_copy(store, tmp_path / "fresh.lance", keep=False), cfg, show_progress=False)
    passes = find_duplicates(
        _copy(store, tmp_path / "passes.lance"), cfg.model_copy(update={"scan_pass_bytes": 2_000}), show_progress=False
    )
    assert again["stats"]["rows_searched_before"] == passes["stats"]["rows_searched_before"] == 38
    assert (Path(again["state"]) / "regions.ivfdata").exists() and (Path(again["state"]) / "new.faiss").exists()
    assert _same_edges(_edges(again), _edges(fresh)) and _same_edges(_edges(passes), _edges(fresh))
    for res in (again, passes):
        assert res["plan"].column("dup_group").to_pylist() == fresh["plan"].column("dup_group").to_pylist()


def test_an_extending_run_killed_in_the_old_rows_search_resumes_with_the_same_units(grown, tmp_path, monkeypatch):
    """Killed after one old unit's search, re-run: the units of the first try (saved with the
    job) and the kept search it extends; only the missing units are searched; the same edges."""
    import curation.runner as runner

    store, _ = grown
    want = _edges(find_duplicates(_copy(store, tmp_path / "clean.lance"), CFG, show_progress=False))
    killed = _copy(store, tmp_path / "killed.lance")
    real, calls = runner.execute_units, []

    def dies_in_old_search(units, *a, on_result, description, **kw):
        calls.append((description, len(units)))
        if description.startswith("dedup: candidate pairs") and len(units) == 4:

            def once(row):
                on_result(row)
                raise KeyboardInterrupt("killed")

            return real(units, *a, on_result=once, description=description, **kw)
        return real(units, *a, on_result=on_result, description=description, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_in_old_search)
    with pytest.raises(KeyboardInterrupt):
        find_duplicates(killed, CFG, show_progress=False)
    calls.clear()
    monkeypatch.setattr(
        runner,
        "execute_units",
        lambda units, *a, description, **kw: (calls.append((description, len(units))), real(units, *a, description=description, **kw))[1],
    )
    got = find_duplicates(killed, CFG, show_progress=False)
    assert [n for d, n in calls if d.startswith("dedup: candidate pairs")] == [3]  # the old units left; the new one was done
    assert not [d for d, _ in calls if d.startswith("dedup: index")]  # the extended index was merged before the kill
    assert got["stats"]["rows_searched_before"] == 38 and _same_edges(_edges(got), want)


def test_keep_false_uses_nothing_kept_and_a_committed_run_deletes_it(grown, tmp_path):
    """``keep: false`` (disk over the next run's time): the run searches and verifies everything,
    writes nothing for the next, and once it commits deletes what an earlier committed run kept;
    the same groups."""
    from pipelines.dedup import run_dedup

    store = _copy(grown[0], tmp_path / "k.lance", keep=False)
    folders = lambda: {p for p in Path(store.state_dir).glob("vector/dedup-v*") if p.is_dir()}  # noqa: E731
    before = folders()  # the first version's dry run (a real run at that version could resume it)
    run_dedup(store, CFG.model_copy(update={"dry_run": False}), show_progress=False)
    kept = Path(near_record(store)["owners"]).parent
    assert (kept / "KEPT_ONLY").exists() and (Path(store.state_dir) / FOLDER).exists()
    groups = store.open().to_table(columns=["dup_group"]).column("dup_group").to_pylist()
    off = CFG.model_copy(update={"dry_run": False, "keep": False})
    out = run_dedup(store, off, overwrite=True, show_progress=False)
    assert out["status"] == "committed" and out.get("verifications_reused", 0) == 0
    assert store.open().to_table(columns=["dup_group"]).column("dup_group").to_pylist() == groups
    assert near_record(store) is None and not (Path(store.state_dir) / FOLDER).exists() and not kept.exists()
    assert folders() == before  # both runs' job folders are gone
