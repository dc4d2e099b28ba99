"""What the dedup job's driver holds: the row ids, and per row with a pair its signals. The exact
copies are found on Ray workers by hash bucket, and the communities, keeper and removal curve
computed over the rows with a pair give the plan and curve computed over all rows."""

from __future__ import annotations

import hashlib
import json

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.vector.dedup import NearDupConfig, Originality, Pairs, exact_pairs, group_duplicates, rows_with_pairs
from engines.vector.graph import removal_curve
from engines.vector.index import IndexConfig
from pipelines.dedup import _plan_table
from pipelines.dedup_candidates import NearJob
from pipelines.dedup_exact import BUCKETS, ROWS_PER_RANGE, bucket_ranges, exact_pairs_on_ray, hash_buckets


def _hashes(n: int, rng) -> list:
    """Hex digests with copies spread over the whole range, no hash, and hand-made non-hex values."""
    sha = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(n)]
    for k in rng.choice(n, n // 5, replace=False):
        sha[k] = sha[int(rng.integers(0, n))]  # a copy of any row, earlier or later
    for k in rng.choice(n, n // 20, replace=False):
        sha[k] = None
    for k in rng.choice(n, 6, replace=False):
        sha[k] = "zz-not-hex" if k % 2 else "q"
    return sha


@pytest.mark.parametrize("per_unit,units,ranges", [(250, 4, 4), (50, 20, 8)])
def test_exact_pairs_found_on_ray_by_bucket_are_the_in_memory_ones_and_resume(ray_session, tmp_path, per_unit, units, ranges):
    """Copies cross units and meet in one bucket range, with one range per unit or (20 units)
    fewer ranges than units, each reading its slice of every unit's file."""
    rng = np.random.default_rng(0)
    n = 1000
    sha = _hashes(n, rng)
    store = Store(str(tmp_path / "h.lance"))
    lance.write_dataset(
        pa.table({"id": [f"r{k}" for k in range(n)], "image_sha256": pa.array(sha, pa.string())}), store.uri, max_rows_per_file=50
    )
    job = NearJob(store, store.open(), NearDupConfig(), IndexConfig(), per_unit, "t")
    assert len(job.units) == units and len(bucket_ranges(units, n)) == ranges
    i, j = exact_pairs_on_ray(job, show_progress=False)
    want = exact_pairs(sha)
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(want.i.tolist(), want.j.tolist()))
    assert len(i) > 150 and (i < j).all()  # star edges to the first row with those bytes
    assert not (job.folder / "exact-buckets").exists()  # the bucket files are removed once every range is saved
    again = exact_pairs_on_ray(job, show_progress=False)  # from the checkpoints
    assert np.array_equal(again[0], i) and np.array_equal(again[1], j)


def test_bucket_ranges_cover_every_bucket_and_are_sized_by_rows():
    """Pass 2 opens every unit file once per range: ranges sized by rows keep that units x n / 2M
    (10^7 at 1B rows in 50k-row units) instead of units squared (4 x 10^8)."""
    for units, n, count in [(1, 10, 1), (4, 1_000, 4), (20, 1_000_000, 8), (200, 10_000_000, 8), (20_000, 10**9, 500)]:
        r = bucket_ranges(units, n)
        assert len(r) == count, (units, n)
        assert r[0]["lo"] == 0 and r[-1]["hi"] == BUCKETS and all(a["hi"] == b["lo"] > a["lo"] for a, b in zip(r, r[1:]))
        assert [x["unit"] for x in r] == list(range(count))
    sizes = np.diff([x["lo"] for x in bucket_ranges(20_000, 10**9)] + [BUCKETS]) * (10**9 / BUCKETS)
    assert sizes.max() <= 1.01 * ROWS_PER_RANGE  # hashes are uniform over buckets: rows per range


def test_hash_buckets_are_the_first_hex_digits_and_stable_for_other_values():
    b = hash_buckets(pa.array(["00ff" + "0" * 60, "ffff" + "1" * 60, "abcd", "no-hex", "no-hex", "q", None]))
    assert b[:3].tolist() == [0x00FF, 0xFFFF, 0xABCD]
    assert b[3] == b[4] and (b >= 0).all() and (b < BUCKETS).all()


def _signals(n: int, rng) -> Originality:
    orig = Originality.of(
        rng.choice([640, 800], n), rng.choice([480, 600], n), rng.integers(10_000, 90_000, n), rng.choice([75.0, 90.0], n)
    )
    return orig


def test_groups_over_the_rows_with_a_pair_are_the_groups_over_all_rows():
    """The job computes communities, keepers and the curve over the rows with a pair (the only
    rows that can be in a group) and spreads them over all rows: the same plan, row by row."""
    rng = np.random.default_rng(1)
    n = 400
    sha = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(n)]
    for k in range(0, 40, 4):
        sha[k + 200] = sha[k]
    a = rng.choice(np.arange(50, 190), 120)
    near = Pairs.of(a, a + rng.integers(1, 9, len(a)), rng.uniform(0.86, 1.0, len(a)), "near")
    pairs = exact_pairs(sha) + near + Pairs.of([300, 310], [305, 390], [0.93, 0.91], "semantic")
    quality = rng.uniform(0, 1, n)
    quality[rng.choice(n, 30)] = np.nan
    orig = _signals(n, rng)
    orig.crops = (near.i[:15], near.j[:15])
    ids = pa.chunked_array([pa.array([f"r{k}" for k in range(n)])])
    full = group_duplicates(n, pairs, quality, originality=orig)

    rows, local = rows_with_pairs(pairs)
    assert len(rows) < n // 2
    part = Originality(orig.pixels[rows], orig.bytes_per_pixel[rows], orig.jpeg_quality[rows])
    part.crops = (np.searchsorted(rows, orig.crops[0]), np.searchsorted(rows, orig.crops[1]))
    compact = group_duplicates(len(rows), local, quality[rows], originality=part)
    got, want = _plan_table(ids, rows, compact), _plan_table(ids, np.arange(n), full)
    assert got.equals(want), [(x, y) for x, y in zip(got.to_pylist(), want.to_pylist()) if x != y][:5]
    assert sum(not k for k in got.column("dup_keep").to_pylist()) == full.stats["removed"] > 20

    thresholds = [0.85, 0.9, 0.95]
    sim = np.where(pairs.reason == 0, 1.0, pairs.sim)
    whole = removal_curve(n, pairs.i, pairs.j, sim, thresholds, resolution=0.1)
    assert removal_curve(len(rows), local.i, local.j, sim, thresholds, resolution=0.1, total=n) == whole


def test_the_committed_plan_holds_the_grouped_rows_and_a_dataset_changed_meanwhile_is_refused(ray_session, coco_dir, tmp_path, monkeypatch):
    """The plan file the apply stage's workers read holds the rows in a group only; every other
    row is committed as kept and in no group. Rows written while dedup ran are refused by name,
    not committed as unique."""
    import pyarrow.feather as feather

    import pipelines.dedup as dedup
    from curation.runner import run_stage
    from engines.vector.index import VectorError
    from engines.vector.synth import make_variant
    from pipelines.dedup import DedupConfig, run_dedup
    from pipelines.descriptors import VisualStage
    from tests.helpers import coco_rows, sample_row, samples_table

    rows = coco_rows(coco_dir, limit=10)
    rows += [sample_row(make_variant(rows[g]["image"], "crop", g), "edits", f"{g}-crop") for g in (0, 1)]
    store = Store(str(tmp_path / "p.lance"))
    lance.write_dataset(samples_table(rows), store.uri, max_rows_per_file=4)
    run_stage(store, VisualStage(), show_progress=False)
    out = run_dedup(store, DedupConfig(), show_progress=False)
    assert out["status"] == "committed" and out["removed"] == 2, out
    got = {r["id"]: r for r in store.to_arrow(["id", "dup_group", "dup_keep", "dup_of", "dup_reason"]).to_pylist()}
    (plan_path,) = (store.state_dir / "vector").glob("dedup-plan-v*.arrow")
    plan = feather.read_table(str(plan_path))
    grouped = {i for i, r in got.items() if r["dup_group"] is not None}
    assert sorted(plan.column("id").to_pylist()) == sorted(grouped) and len(grouped) == 4
    # sorted by fragment, each fragment's range named in the metadata: a worker reads its fragment's slice only
    ranges, ids = json.loads(plan.schema.metadata[b"fragments"]), plan.column("id").to_pylist()
    in_frags = {f.fragment_id: set(f.to_table(columns=["id"]).column("id").to_pylist()) for f in store.open().get_fragments()}
    assert len(ranges) == 2 and all(str(f) in ranges for f, m in in_frags.items() if m & grouped)
    for f, members in in_frags.items():
        lo, hi = ranges.get(str(f), (0, 0))
        assert set(ids[lo:hi]) == members & grouped
    for r in plan.select(["id", "dup_group", "dup_keep", "dup_of", "dup_reason"]).to_pylist():
        assert got[r["id"]] == r
    stage = dedup._DupApplyStage(plan_path=str(plan_path))
    stage.setup()
    (f, members), other = [(f, m) for f, m in in_frags.items() if m & grouped][0], next(f for f, m in in_frags.items() if not m & grouped)
    batch = pa.record_batch([pa.array(sorted(members))], names=["id"])
    stage.begin_fragment(f)
    assert pa.array(stage.process_batch(batch).column("dup_group")).null_count == len(members - grouped)
    stage.begin_fragment(other)  # another fragment's slice: none of these ids is in it
    assert pa.array(stage.process_batch(batch).column("dup_group")).null_count == len(members)
    for i, r in got.items():
        if i not in grouped:
            assert r["dup_keep"] is True and r["dup_of"] is None and r["dup_reason"] is None, r

    real = dedup.find_duplicates

    def rows_arrive_meanwhile(st, cfg, **kw):
        res = real(st, cfg, **kw)
        lance.write_dataset(samples_table(coco_rows(coco_dir, limit=12)[10:]), st.uri, mode="append")
        return res

    monkeypatch.setattr(dedup, "find_duplicates", rows_arrive_meanwhile)
    before = store.open().version
    with pytest.raises(VectorError, match=r"the dataset changed while dedup ran \(version \d+ -> \d+\)"):
        run_dedup(store, DedupConfig(), show_progress=False)
    assert "dup_group" in store.open().schema.names and store.open().version == before + 1  # only the append
