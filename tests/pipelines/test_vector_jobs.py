"""Vector jobs end to end on real Ray + Lance: index build / incremental add / stale index,
k-NN graph with resume, dedup committing dup_* columns, retrieval, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.runner import run_stage
from curation.store import Store
from engines.vector.index import StaleIndexError, VectorError, load_index
from engines.vector.retrieval import Retriever, index_dir
from engines.vector.synth import make_variant
from pipelines.dedup import DedupConfig, find_duplicates, run_dedup
from pipelines.descriptors import VisualStage
from pipelines.index import IndexBuildConfig, build_index
from pipelines.knn import KnnConfig, build_knn, knn_uri
from tests.helpers import coco_rows, sample_row, samples_table


def _copy(coco_store, tmp_path, name="x.lance") -> Store:
    dst = tmp_path / name
    shutil.copytree(Path(coco_store.uri), dst)
    return Store(str(dst))


def test_index_build_incremental_add_stale_and_search(ray_session, coco_store, tmp_path, coco_dir):
    store = _copy(coco_store, tmp_path)
    m = build_index(store, IndexBuildConfig(rows_per_shard=30), show_progress=False)  # 3 shards on Ray, merged
    assert m["column"] == "vec_desc" and m["ntotal"] == 80 and m["kind"] == "flat" and m["dim"] == 231
    # retrieval: a row's own re-encoded copy finds the row first
    ids = store.to_arrow(["id"]).column("id").to_pylist()
    data = store.to_arrow(["image"]).column("image")[5].as_py()
    r = Retriever(store, "vec_desc")
    assert r.by_image(make_variant(data, "reencode", 1), k=3)[0]["id"] == ids[5]
    hits = r.by_id(ids[5], k=5)
    assert len(hits) == 5 and ids[5] not in [h["id"] for h in hits]
    with pytest.raises(VectorError, match="text queries"):
        r.by_text("a dog", k=3)
    # append rows: the old index is stale for k-NN and search ...
    extra = [sample_row(make_variant(data, "crop", s), "extra", f"c{s}") for s in range(4)]
    lance.write_dataset(samples_table(extra), store.uri, mode="append")
    with pytest.raises(StaleIndexError, match="curate index build"):
        build_knn(store, KnnConfig(k=5), show_progress=False)
    with pytest.raises(StaleIndexError):
        Retriever(store, "vec_desc")
    # ... and a build only adds the new rows (the descriptor stage computes the new fragment)
    store.open().drop_columns(["vec_desc", "vec_regions", "vec_error"])
    with pytest.raises(VectorError, match="rebuild"):
        build_index(store, IndexBuildConfig(), show_progress=False)  # the column was rewritten: refuse
    m2 = build_index(store, IndexBuildConfig(rebuild=True), show_progress=False)
    assert m2["ntotal"] == 84


def test_incremental_add_only_new_fragments(ray_session, coco_dir, tmp_path):
    rows = coco_rows(coco_dir, limit=12)
    uri = str(tmp_path / "inc.lance")
    lance.write_dataset(samples_table(rows[:8]), uri, max_rows_per_file=4)
    store = Store(uri)
    build_index(store, IndexBuildConfig(), show_progress=False)
    before = (index_dir(store, "vec_desc") / "labels.arrow").stat().st_mtime
    # new rows arrive with their descriptors (same stage, appended fragment)
    from engines.vector.descriptor import visual_columns

    new = samples_table(rows[8:])
    cols = visual_columns(new.column("image").to_pylist())
    from curation.schema import VEC_VISUAL

    for name in VEC_VISUAL.schema.names:
        new = new.append_column(VEC_VISUAL.schema.field(name), pa.array(cols[name], VEC_VISUAL.schema.field(name).type))
    lance.write_dataset(new, uri, mode="append")
    m = build_index(store, IndexBuildConfig(), show_progress=False)
    assert m["ntotal"] == 12 and len(m["history"]) == 2 and m["history"][1]["added"] == 4
    index, man, labels = load_index(index_dir(store, "vec_desc"))
    assert labels.num_rows == 12 and set(labels.column("id").to_pylist()) == set(store.to_arrow(["id"]).column("id").to_pylist())
    assert (index_dir(store, "vec_desc") / "labels.arrow").stat().st_mtime >= before
    again = build_index(store, IndexBuildConfig(), show_progress=False)  # nothing new: up to date
    assert again["ntotal"] == 12 and len(again["history"]) == 2
    knn = build_knn(store, KnnConfig(k=3), show_progress=False)
    assert knn["edges"] == 36


def test_knn_graph_table_and_resume(ray_session, coco_store, tmp_path, monkeypatch):
    store = _copy(coco_store, tmp_path)
    build_index(store, IndexBuildConfig(), show_progress=False)
    import curation.runner as runner

    real = runner.execute_units
    calls = {"n": 0}

    def dies_after_first(units, *a, on_result, **kw):
        def once(row):
            on_result(row)
            raise KeyboardInterrupt("killed")

        calls["n"] += 1
        return real(units, *a, on_result=once, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_knn(store, KnnConfig(k=10, rows_per_unit=20), show_progress=False)
    ckpts = list((Path(store.state_dir) / "vector").glob("knn-vec_desc-ckpt-*/unit-*.json"))
    assert len(ckpts) == 1
    monkeypatch.setattr(runner, "execute_units", real)
    seen = []
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **kw: (seen.append(len(units)), real(units, *a, **kw)))
    out = build_knn(store, KnnConfig(k=10, rows_per_unit=20), show_progress=False)
    assert seen == [3]  # 4 units, 1 already done
    t = lance.dataset(knn_uri(store, "vec_desc")).to_table()
    assert t.num_rows == out["edges"] == 800
    assert pc_unique(t, "source_id") == 80
    assert not any(a == b for a, b in zip(t.column("source_id").to_pylist(), t.column("neighbour_id").to_pylist()))
    sims = np.asarray(t.column("similarity"))
    assert np.all(sims <= 1.0001) and np.all(np.asarray(t.column("rank")) >= 1)


def pc_unique(t: pa.Table, col: str) -> int:
    return len(set(t.column(col).to_pylist()))


def test_dedup_job_commits_groups_and_keeps_best(ray_session, coco_dir, tmp_path):
    rows = coco_rows(coco_dir, limit=8)
    truth = {}
    for g, r in enumerate(list(rows)):
        truth[r["id"]] = g
        for kind in ("crop", "watermark", "colour", "resize"):
            v = sample_row(make_variant(r["image"], kind, g), "edits", f"{g}-{kind}")
            rows.append(v)
            truth[v["id"]] = g
    dup = dict(rows[0], id="exactcopy", source_key="copy")
    rows.append(dup)
    truth["exactcopy"] = 0
    uri = str(tmp_path / "d.lance")
    lance.write_dataset(samples_table(rows), uri, max_rows_per_file=12)
    store = Store(uri)
    with pytest.raises(VectorError, match="curate stage vec_visual"):  # descriptors would be a commit
        run_dedup(store, DedupConfig(dry_run=True), show_progress=False)
    assert store.open().version == 1
    run_stage(store, VisualStage(), show_progress=False)
    before = store.open().version
    dry = run_dedup(store, DedupConfig(dry_run=True), show_progress=False)
    assert dry["status"] == "dry_run" and "dup_keep" not in store.open().schema.names
    assert store.open().version == before  # a dry run commits nothing
    assert Path(dry["report"]).read_text().count('<img class="plot"') == 1  # the removal curve (+ group thumbnails)
    out = run_dedup(store, DedupConfig(), show_progress=False)
    t = store.to_arrow(["id", "width", "height", "dup_group", "dup_keep", "dup_of", "dup_reason", "dup_sim"])
    d = t.to_pylist()
    assert out["status"] == "committed" and sum(not r["dup_keep"] for r in d) == len(d) - 8
    assert out["exact_copies"] == 1 and "exact_flagged_at_ingest" not in out  # no ingest flags in this table
    # groups match the truth; the kept row is the largest image of its group (default quality = area)
    by_group: dict[int, list] = {}
    for r in d:
        assert r["dup_group"] is not None
        by_group.setdefault(r["dup_group"], []).append(r)
    assert len(by_group) == 8
    for members in by_group.values():
        assert len({truth[m["id"]] for m in members}) == 1
        kept = [m for m in members if m["dup_keep"]]
        assert len(kept) == 1
        assert kept[0]["width"] * kept[0]["height"] == max(m["width"] * m["height"] for m in members)
        for m in members:
            if not m["dup_keep"]:
                assert m["dup_of"] == kept[0]["id"] and m["dup_reason"] in ("exact", "near") and 0 < m["dup_sim"] <= 1
    ex = [r for r in d if r["id"] == "exactcopy"][0]
    assert (ex["dup_reason"] == "exact") or ex["dup_keep"]


def test_bad_input_empty_and_one_row(ray_session, coco_dir, tmp_path):
    empty = Store(str(tmp_path / "e.lance"))
    lance.write_dataset(samples_table([]), empty.uri)
    with pytest.raises(VectorError, match="empty"):
        build_index(empty, IndexBuildConfig(column=None), show_progress=False)
    one = Store(str(tmp_path / "one.lance"))
    lance.write_dataset(samples_table(coco_rows(coco_dir, limit=1)), one.uri)
    m = build_index(one, IndexBuildConfig(), show_progress=False)
    assert m["ntotal"] == 1
    with pytest.raises(VectorError, match="at least 2"):
        build_knn(one, KnnConfig(k=5), show_progress=False)
    res = run_dedup(one, DedupConfig(), show_progress=False)
    assert res["removed"] == 0
    with pytest.raises(VectorError, match="not in the dataset"):
        build_index(one, IndexBuildConfig(column="prof_clip_image"), show_progress=False)
    # a corrupt image becomes a row with a reason, and is skipped by the index with a count
    bad = dict(coco_rows(coco_dir, limit=2)[1], image=b"\xff\xd8\xff not a jpeg", id="bad")
    lance.write_dataset(samples_table([bad]), one.uri, mode="append")
    one.open().drop_columns(["vec_desc", "vec_regions", "vec_error"])
    m = build_index(one, IndexBuildConfig(rebuild=True), show_progress=False)
    assert m["ntotal"] == 1 and m["skipped"] == {"null_vector": 1}
    err = one.to_arrow(["id", "vec_error"], filter="id = 'bad'").column("vec_error")[0].as_py()
    assert err and err.split(":")[0] in ("undecodable", "truncated")


def _emb_table(rows: list[dict], vectors: list) -> pa.Table:
    """Sample rows plus an ``emb`` column of variable-length float lists (as an embedding
    column written by another tool could be), so any dimension and nulls can be stored."""
    return samples_table(rows).append_column("emb", pa.array(vectors, pa.list_(pa.float32())))


def test_bad_vectors_wrong_dimension_and_deleted_rows_in_jobs(ray_session, coco_dir, tmp_path):
    """NaN, zero and null vectors are skipped with counts and never reach the graph; a query or
    appended rows of another dimension, and rows deleted after the build, are clear errors."""
    rows = coco_rows(coco_dir, limit=12)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((10, 8)).astype(np.float32)
    v[1] = np.nan
    v[2] = 0.0
    vecs = [r.tolist() for r in v]
    vecs[3] = None
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_emb_table(rows[:10], vecs), uri, max_rows_per_file=5)
    store = Store(uri)
    ids = [r["id"] for r in rows]
    m = build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    assert m["ntotal"] == 7 and m["dim"] == 8
    assert m["skipped"] == {"nan_vector": 1, "zero_vector": 1, "null_vector": 1}
    out = build_knn(store, KnnConfig(column="emb", k=3), show_progress=False)
    t = lance.dataset(out["path"]).to_table()
    assert out["rows"] == 7 and t.num_rows == 21
    bad = {ids[1], ids[2], ids[3]}
    assert not bad & set(t.column("source_id").to_pylist()) and not bad & set(t.column("neighbour_id").to_pylist())
    r = Retriever(store, "emb")
    with pytest.raises(VectorError, match="dimension 4"):
        r.by_vector(np.ones(4), k=3)
    with pytest.raises(VectorError, match="unusable"):
        r.by_vector(np.zeros(8), k=3)
    with pytest.raises(VectorError, match="unusable"):
        r.by_id(ids[1], k=3)  # its stored vector is NaN: an error, not NaN similarities
    with pytest.raises(VectorError, match="no emb vector"):
        r.by_id(ids[3], k=3)
    # appended rows whose vectors have another dimension: refused before anything is added
    lance.write_dataset(_emb_table(rows[10:], [[1.0] * 16, [0.5] * 16]), uri, mode="append")
    with pytest.raises(VectorError, match="dimension 16, expected 8"):
        build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    # rows deleted after the build: the index is older than the dataset
    ds = lance.dataset(uri)
    ds.delete(f"id = '{ids[10]}' or id = '{ids[11]}'")
    ds.delete(f"id = '{ids[0]}'")
    with pytest.raises(StaleIndexError, match="curate index build"):
        build_knn(store, KnnConfig(column="emb", k=3), show_progress=False)
    with pytest.raises(StaleIndexError):
        Retriever(store, "emb")
    with pytest.raises(VectorError, match="rebuild"):
        build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    m2 = build_index(store, IndexBuildConfig(column="emb", rebuild=True), show_progress=False)
    assert m2["ntotal"] == 6 and ids[0] not in [h["id"] for h in Retriever(store, "emb").by_vector(v[0], k=6)]


def test_dedup_job_scored_against_the_demo_corpus_manifest(ray_session, tmp_path):
    """The real job (ingest, descriptors, candidates on Ray, verification, communities) on the
    demo corpus, scored pairwise against the groups its manifest records (near duplicates: crops,
    resizes, re-encodes, watermarks, colour shifts, mirrors, frames, degraded copies, exact copies)."""
    import json

    from democorpus.corpus import build_corpus, write_corpus
    from pipelines.ingest import IngestConfig, ingest

    corpus = tmp_path / "corpus"
    write_corpus(build_corpus(0, ("folder", "webdataset", "jsonl")), corpus)
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    group_of_sha = {i["sha256"]: i["near_dup_group"] for i in manifest["items"]}
    store = Store(str(tmp_path / "demo.lance"))
    ingest(store, IngestConfig(source=[str(corpus)], shard_size=32), show_progress=False)
    out = run_dedup(store, DedupConfig(), show_progress=False)
    t = store.to_arrow(["image_sha256", "dup_group"]).to_pylist()
    truth = np.array([group_of_sha.get(r["image_sha256"]) or f"single-{k}" for k, r in enumerate(t)])
    pred = np.array([r["dup_group"] if r["dup_group"] is not None else -1 - k for k, r in enumerate(t)])
    iu = np.triu_indices(len(t), 1)
    same_pred = (pred[:, None] == pred[None, :])[iu]
    same_true = (truth[:, None] == truth[None, :])[iu]
    tp = int((same_pred & same_true).sum())
    precision, recall = tp / max(int(same_pred.sum()), 1), tp / int(same_true.sum())
    print(f"\ndemo corpus: {len(t)} rows, pairwise precision {precision:.3f} recall {recall:.3f}; {out}")
    assert precision >= 0.98 and recall >= 0.90, (precision, recall)


# execute_units calls of a run (48 rows in units of 12: 4 units each): exact copies (hashes by
# bucket, then bucket ranges), index shards, candidates, verification
@pytest.mark.parametrize(
    "killed_in,resumed",
    [(5, [3]), (2, [3, 4, 4, 4])],
    ids=["verification", "exact-copy-ranges"],
)
def test_dedup_killed_resumes_the_missing_units_only(edited, tmp_path, monkeypatch, killed_in, resumed):
    """A dedup killed after one unit of a phase (verification; the exact copies' bucket ranges),
    re-run, redoes none of the phases before nor that unit, and gives the same groups as a clean run."""
    import curation.runner as runner

    killed = _edited_store(edited, tmp_path / "killed.lance")  # descriptors computed: their stage is the runner's own resume test
    cfg = DedupConfig(rows_per_unit=12, dry_run=True)
    want = edited[1]["plan"]  # the clean run

    real = runner.execute_units
    calls: list[int] = []

    def dies_in_phase(units, *a, on_result, **kw):
        calls.append(len(units))
        if len(calls) < killed_in:
            return real(units, *a, on_result=on_result, **kw)

        def once(row):
            on_result(row)
            raise KeyboardInterrupt("killed")

        return real(units, *a, on_result=once, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_in_phase)
    with pytest.raises(KeyboardInterrupt):
        find_duplicates(killed, cfg, show_progress=False)
    assert calls == [4] * killed_in
    calls.clear()
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **kw: (calls.append(len(units)), real(units, *a, **kw)))
    got = find_duplicates(killed, cfg, show_progress=False)["plan"]
    assert calls == resumed  # the 3 units of the killed phase not checkpointed, then the phases after it
    assert got.column("dup_group").to_pylist() == want.column("dup_group").to_pylist()
    assert got.column("dup_keep").to_pylist() == want.column("dup_keep").to_pylist()
    assert sum(g is not None for g in got.column("dup_group").to_pylist()) == 32  # the 8 photos and their 3 edits each


def test_semantic_pairs_come_from_the_knn_graph_which_is_rebuilt_when_too_small_or_stale(ray_session, coco_dir, tmp_path):
    """Semantic duplicates are read from the `curate knn` graph of the embedding column: a graph
    built with a smaller k, or from other values of the column, is rebuilt first, never read."""
    rows = coco_rows(coco_dir, limit=16)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((16, 32)).astype(np.float32)
    v[1] = v[0] + 0.01 * rng.standard_normal(32)  # two different photos, the same content by this embedding
    store = Store(str(tmp_path / "s.lance"))
    lance.write_dataset(_emb_table(rows, v.tolist()), store.uri, max_rows_per_file=8)
    build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    build_knn(store, KnnConfig(column="emb", k=3), show_progress=False)
    run_stage(store, VisualStage(), show_progress=False)  # a dry run computes no descriptors
    cfg = DedupConfig(semantic_column="emb", dry_run=True)
    res = find_duplicates(store, cfg, show_progress=False)
    assert store.read_json("vector/knn-emb.json")["k"] == cfg.semantic.k  # k=3 < 10: rebuilt
    plan = res["plan"].to_pylist()
    assert plan[0]["dup_group"] is not None and plan[0]["dup_group"] == plan[1]["dup_group"]
    assert {plan[0]["dup_reason"], plan[1]["dup_reason"]} == {None, "semantic"}
    assert res["stats"]["semantic_pairs"] == 1
    # new values of the column (the same rows): the old graph would be wrong, so it is rebuilt
    v2 = v.copy()
    v2[1] = rng.standard_normal(32)
    store.open().drop_columns(["emb"])
    store.open().merge(store.to_arrow(["id"]).append_column("emb", pa.array(v2.tolist(), pa.list_(pa.float32()))), "id")
    before = store.read_json("vector/knn-emb.json")["fingerprint"]
    res2 = find_duplicates(store, cfg, show_progress=False)
    assert store.read_json("vector/knn-emb.json")["fingerprint"] != before
    assert res2["stats"]["semantic_pairs"] == 0


def test_dedup_over_an_ivf_candidate_index_gives_the_groups_of_the_exact_one(edited, tmp_path, monkeypatch):
    """Above ``flat_max`` the candidate index is IVF-Flat, scanned list by list by the candidate
    actors (``search_above``); with every list probed, the groups equal those of the exact index.
    So do they with the lists held as float16 or 8-bit codes (``ivffp16``, ``ivfsq8``), whose
    on-disk lists are a half and a quarter of the float32 ones. And with lists larger than a pass
    of the candidate phase (``scan_pass_bytes``), searched range by range: the same edges."""
    from engines.vector.index import IndexConfig

    store = _edited_store(edited, tmp_path / "ivf.lance")
    exact = edited[1]
    ivf_cfg = DedupConfig(rows_per_unit=12, dry_run=True, index=IndexConfig(kind="ivfflat", nlist=8, nprobe=8))
    ivf = find_duplicates(store, ivf_cfg, show_progress=False)
    assert exact["stats"]["desc_candidates"] == ivf["stats"]["desc_candidates"] > 0
    assert ivf["plan"].column("dup_group").to_pylist() == exact["plan"].column("dup_group").to_pylist()
    assert sum(g is not None for g in ivf["plan"].column("dup_group").to_pylist()) == 32
    # lists larger than a pass (``scan_pass_bytes``): searched range by range, the same candidates
    import pipelines.dedup_candidates as dc

    state, by = Path(ivf["state"]), [("i", "ascending"), ("j", "ascending")]
    one_pass = lance.dataset(str(state / "candidates.lance")).to_table().sort_by(by)
    shutil.rmtree(state / "candidates.lance")
    shutil.rmtree(state / "candidates")  # the phase's checkpoints: it runs again
    seen, real = [], dc._candidate_passes
    monkeypatch.setattr(dc, "_candidate_passes", lambda job, todo, bounds, *a: (seen.append(bounds), real(job, todo, bounds, *a))[1])
    passes = find_duplicates(store, ivf_cfg.model_copy(update={"scan_pass_bytes": 100_000}), show_progress=False)
    assert Path(passes["state"]) == state  # placement only: the same job state folder
    assert len(seen) == 1 and len(seen[0]) >= 4 and seen[0][-1] == 8  # 3+ ranges of the 8 lists
    assert one_pass.num_rows > 32 and lance.dataset(str(state / "candidates.lance")).to_table().sort_by(by).equals(one_pass)
    assert passes["plan"].column("dup_group").to_pylist() == exact["plan"].column("dup_group").to_pylist()
    assert not (state / "candidates.passes").exists()
    lists = Path(ivf["state"]) / "regions.ivfdata"
    for kind, share in (("ivffp16", 0.5), ("ivfsq8", 0.25)):
        coded = find_duplicates(
            store, ivf_cfg.model_copy(update={"index": ivf_cfg.index.model_copy(update={"kind": kind})}), show_progress=False
        )
        assert coded["plan"].column("dup_group").to_pylist() == exact["plan"].column("dup_group").to_pylist(), kind
        size = (Path(coded["state"]) / "regions.ivfdata").stat().st_size
        assert size < (share + 0.05) * lists.stat().st_size, (kind, size)


def test_candidate_units_scanned_in_groups_find_the_same_edges(edited, tmp_path, monkeypatch):
    """Units whose queries scan the lists together (``scan_group_rows``: here 2 and 3 units of 12
    rows a group), in one pass and in passes over list ranges, write the same candidate pairs as
    unit by unit (similarities to float32 rounding); the actors get one work item a group."""
    import curation.runner as runner
    from engines.vector.index import IndexConfig

    store = _edited_store(edited, tmp_path / "groups.lance")
    cfg = DedupConfig(rows_per_unit=12, dry_run=True, index=IndexConfig(kind="ivfsq8", nlist=8, nprobe=4))
    real, calls = runner.execute_units, []
    monkeypatch.setattr(
        runner,
        "execute_units",
        lambda units, *a, description, **kw: (calls.append((description, len(units))), real(units, *a, description=description, **kw))[1],
    )
    by = [("i", "ascending"), ("j", "ascending")]

    def edges(**update) -> pa.Table:
        got = find_duplicates(store, cfg.model_copy(update=update), show_progress=False)
        state = Path(got["state"])
        t = lance.dataset(str(state / "candidates.lance")).to_table().sort_by(by)
        shutil.rmtree(state / "candidates.lance")
        shutil.rmtree(state / "candidates")  # the phase's checkpoints: the next call runs it again
        return t

    def same(t: pa.Table, ref: pa.Table) -> bool:
        """The same pairs; similarities to float32 rounding (BLAS sums another shape in another order)."""
        t, ref = (x.sort_by([*by, ("sim", "ascending")]) for x in (t, ref))
        return t.select(["i", "j"]).equals(ref.select(["i", "j"])) and np.allclose(t["sim"], ref["sim"], rtol=0, atol=2e-6)

    alone = edges(scan_group_rows=1)
    assert ("dedup: candidate pairs (units)", 4) in calls
    assert alone.num_rows > 32
    calls.clear()
    assert same(edges(scan_group_rows=24), alone)
    assert ("dedup: candidate pairs (groups of 2 units)", 2) in calls
    calls.clear()
    assert same(edges(scan_group_rows=36, scan_pass_bytes=30_000), alone)
    passes = [n for d, n in calls if "(pass " in d]
    assert len(passes) >= 3 and set(passes) == {2} and all("groups of 3 units" in d for d, _ in calls if "(pass " in d)
    calls.clear()
    assert same(edges(scan_group_rows=1, scan_pass_bytes=30_000), alone)
    assert set(n for d, n in calls if "(pass " in d) == {4}
    assert not [n for n in find_duplicates(store, cfg, show_progress=False)["notes"] if "rows_per_unit" in n]
    # units are whole files (12 rows here): a smaller rows_per_unit is named, not silently ignored
    small = find_duplicates(store, cfg.model_copy(update={"rows_per_unit": 5}), show_progress=False)
    assert [n for n in small["notes"] if n.startswith("rows_per_unit 5: units are whole data files, the largest has 12 rows")]


@pytest.fixture(scope="module")
def edited(ray_session, coco_dir, tmp_path_factory):
    """24 photos and 3 edits (crop, mirror, turn) of 8 of them, in files of 12 rows, with their
    descriptors (read-only: tests take a copy, ``_edited_store``), and the plan of an exact-index
    dry run of it (``DedupConfig(rows_per_unit=12, dry_run=True)``), made on another copy."""
    rows = coco_rows(coco_dir, limit=24)
    for g, r in enumerate(list(rows[:8])):
        for kind in ("crop", "mirror", "rotate"):
            rows.append(sample_row(make_variant(r["image"], kind, g), "edits", f"{g}-{kind}"))
    folder = tmp_path_factory.mktemp("edited")
    store = Store(str(folder / "pristine.lance"))
    lance.write_dataset(samples_table(rows), store.uri, max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)  # a dry run computes no descriptors
    exact = find_duplicates(_copy(store, folder, "exact.lance"), DedupConfig(rows_per_unit=12, dry_run=True), show_progress=False)
    return store, exact


def _edited_store(edited, path: Path) -> Store:
    """A copy of the ``edited`` dataset (descriptors computed, no dedup state yet)."""
    dst = Path(path)
    shutil.copytree(edited[0].uri, dst)
    return Store(str(dst))


def test_candidate_passes_killed_resume_the_missing_units_only(edited, tmp_path, monkeypatch):
    """A dedup killed in the second pass of its candidate phase (lists larger than a pass), re-run,
    searches only that pass's missing units and the passes after it, and finds the same pairs."""
    import curation.runner as runner
    from engines.vector.index import IndexConfig

    store = _edited_store(edited, tmp_path / "passes.lance")
    cfg = DedupConfig(rows_per_unit=12, dry_run=True, index=IndexConfig(kind="ivfsq8", nlist=8, nprobe=8), scan_pass_bytes=30_000)
    real, calls = runner.execute_units, []

    def dies_in_pass_2(units, *a, on_result, description, **kw):
        calls.append((description.split("(")[-1].split(",")[0], len(units)))
        if "pass 2 of" not in description:
            return real(units, *a, on_result=on_result, description=description, **kw)

        def once(row):
            on_result(row)
            raise KeyboardInterrupt("killed")

        return real(units, *a, on_result=once, description=description, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_in_pass_2)
    with pytest.raises(KeyboardInterrupt):
        find_duplicates(store, cfg, show_progress=False)
    assert [n for d, n in calls if d.startswith("pass")] == [4, 4]
    assert len(list((Path(store.state_dir) / "vector").glob("dedup-*/candidates.passes/probes/unit-*.npz"))) == 4  # routed once
    # how far pass 2 got depends on the actors' timing (here often every unit): units 1 and 3
    # made missing, as a kill before they finished leaves them
    for f in (Path(store.state_dir) / "vector").glob("dedup-*/candidates.passes/pass-1/unit-[13].npz"):
        f.unlink()
    left = 4 - len(list((Path(store.state_dir) / "vector").glob("dedup-*/candidates.passes/pass-1/unit-*.npz")))
    assert 2 <= left <= 4
    calls.clear()
    monkeypatch.setattr(
        runner,
        "execute_units",
        lambda units, *a, description, **kw: (calls.append((description, len(units))), real(units, *a, description=description, **kw))[1],
    )
    got = find_duplicates(store, cfg.model_copy(update={"scan_pass_bytes": 10**9}), show_progress=False)  # the first run's passes kept
    passes = [n for d, n in calls if "(pass" in d]
    assert len(passes) >= 3 and passes[:2] == [0, left] and set(passes[2:]) == {4}  # pass 1 done, then what pass 2 missed
    assert [n for d, n in calls if "passes merged" in d] == [4]
    assert sum(g is not None for g in got["plan"].column("dup_group").to_pylist()) == 32
    # the same edges as one pass over every list
    monkeypatch.setattr(runner, "execute_units", real)
    folder, by = Path(got["state"]), [("i", "ascending"), ("j", "ascending")]
    resumed = lance.dataset(str(folder / "candidates.lance")).to_table().sort_by(by)
    shutil.rmtree(folder / "candidates.lance")
    shutil.rmtree(folder / "candidates")
    one = find_duplicates(store, cfg.model_copy(update={"scan_pass_bytes": None}), show_progress=False)
    assert resumed.num_rows > 32 and lance.dataset(str(folder / "candidates.lance")).to_table().sort_by(by).equals(resumed)
    assert got["plan"].column("dup_group").to_pylist() == one["plan"].column("dup_group").to_pylist()


def test_a_partial_index_section_keeps_the_dedup_index_defaults(tmp_path):
    """``index: {kind: ivffp16}`` in a dedup YAML changes the kind only: the candidate index's own
    defaults (8 lists probed, HNSW from 4,096 lists) stay, where a plain ``IndexConfig`` would
    have set 16 and 16,384 unasked; a misspelt field or kind is named with the allowed ones."""
    from curation.config import ConfigError, load_yaml, validate
    from engines.vector.index import IndexConfig
    from pipelines.dedup import DedupConfig

    y = tmp_path / "dedup.yaml"
    y.write_text("index:\n  kind: ivffp16\n")
    cfg = validate(DedupConfig, load_yaml(y))
    assert (cfg.index.kind, cfg.index.nprobe, cfg.index.hnsw_lists) == ("ivffp16", 8, 4096)
    assert DedupConfig().index.nprobe == 8 and IndexConfig().nprobe == 16
    py = DedupConfig(index=IndexConfig(kind="ivfsq8", nlist=8))  # Python callers: the fields they set
    assert (py.index.kind, py.index.nlist, py.index.nprobe) == ("ivfsq8", 8, 8)
    y.write_text("index:\n  kind: ivf16\n  nprobes: 4\n")
    with pytest.raises(ConfigError) as e:
        validate(DedupConfig, load_yaml(y))
    assert "index.kind" in str(e.value) and "ivffp16" in str(e.value) and "nprobes" in str(e.value)


def test_a_copied_dataset_stale_index_names_the_copy_and_an_empty_text_query_is_refused(ray_session, coco_store, tmp_path, coco_dir):
    """The manifest keeps the path the index was built at; the fix a user is told must be for the
    dataset they named. An empty text query has nothing to rank."""
    first = _copy(coco_store, tmp_path, "first.lance")
    build_index(first, IndexBuildConfig(), show_progress=False)
    moved = Store(str(shutil.copytree(Path(first.uri), tmp_path / "moved.lance")))
    data = moved.to_arrow(["image"]).column("image")[0].as_py()
    lance.write_dataset(samples_table([sample_row(make_variant(data, "crop", 1), "extra", "c1")]), moved.uri, mode="append")
    with pytest.raises(StaleIndexError) as err:
        build_knn(moved, KnnConfig(k=5), show_progress=False)
    assert f"--dataset {moved.uri} " in str(err.value) and first.uri not in str(err.value)
    with pytest.raises(VectorError, match="--text is empty"):
        Retriever(first, "vec_desc").by_text("   ", k=3)


def test_another_kind_asked_of_an_existing_index_is_refused_not_dropped(ray_session, coco_store, tmp_path):
    """`index build --kind ivfflat --nlist 2` over a flat index once said "up to date" and kept
    the flat one; now it says what exists and how to get the new kind, and --rebuild builds it."""
    from engines.vector.index import IndexConfig

    store = _copy(coco_store, tmp_path, "kinds.lance")
    assert build_index(store, IndexBuildConfig(), show_progress=False)["kind"] == "flat"
    with pytest.raises(VectorError, match="exists as flat; kind ivfflat and nlist 2 needs a new one: .*--rebuild"):
        build_index(store, IndexBuildConfig(index=IndexConfig(kind="ivfflat", nlist=2)), show_progress=False)
    assert build_index(store, IndexBuildConfig(index=IndexConfig(kind="flat")), show_progress=False)["kind"] == "flat"
    ivf = IndexBuildConfig(index=IndexConfig(kind="ivfflat", nlist=2))
    build_index(store, ivf.model_copy(update={"rebuild": True}), show_progress=False)
    # 80 rows are too few to train lists on: the rebuild is exact search, and asking the same
    # again is "up to date", not a refusal in a loop
    assert build_index(store, ivf, show_progress=False)["kind"] == "flat"


def test_a_column_the_dataset_lacks_is_named_not_taken_for_a_missing_index(ray_session, coco_store, tmp_path):
    with pytest.raises(VectorError, match="column 'bogus' not in the dataset"):  # build's own check, as before
        build_index(coco_store, IndexBuildConfig(column="bogus"), show_progress=False)
    store = _copy(coco_store, tmp_path, "cols.lance")
    build_index(store, IndexBuildConfig(), show_progress=False)  # the descriptors: a vector column to name
    with pytest.raises(VectorError, match="no column 'bogus' in .*its vector columns: .*vec_desc"):
        Retriever(store, "bogus")
