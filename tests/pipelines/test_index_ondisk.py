"""`curate index build` keeps IVF lists on disk: the shards are written by the workers and
merged by a Ray task into a data file beside index.faiss (never into the driver), readers map
it read-only, an extension with appended rows reads the saved lists without writing them (a
reader that has them mapped keeps its answers), and the result is the index an in-memory merge
gives (same lists, same neighbours)."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.vector.index import IndexConfig, add_vectors, load_index, search
from engines.vector.retrieval import Retriever, index_dir
from engines.vector.synth import clustered_embeddings
from pipelines.index import IndexBuildConfig, _AddWorker, build_index
from pipelines.knn import KnnConfig, build_knn, open_knn

DIM = 32
CFG = IndexBuildConfig(column="emb", rows_per_shard=150, index=IndexConfig(kind="ivfflat", nlist=8, nprobe=8))


def _vectors(n: int) -> np.ndarray:
    return next(clustered_embeddings(n, DIM, n_clusters=12, seed=3)).astype(np.float32)


def _table(x: np.ndarray, start: int = 0) -> pa.Table:
    ids = [f"r{i:04d}" for i in range(start, start + len(x))]
    return pa.table({"id": pa.array(ids), "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)})


def _reference(folder: Path, x: np.ndarray):
    """The same trained index with every row added in memory, under the build's labels."""
    import pyarrow.feather as feather

    from engines.vector.ondisk import trained_of

    ref = trained_of(folder / "index.faiss")
    labels = feather.read_table(str(folder / "labels.arrow"))
    pos = {i: k for k, i in enumerate(f"r{j:04d}" for j in range(len(x)))}
    order = np.array([pos[i] for i in labels.column("id").to_pylist()])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    add_vectors(ref, xn[order], labels.column("label").to_numpy())
    return ref, xn


def _same_answers(folder: Path, x: np.ndarray) -> None:
    import faiss

    index, manifest, _ = load_index(folder)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only  # mapped, shared, not read in
    assert Path(lists.filename).parent == folder and [p.name for p in folder.glob("*.ivfdata")] == [Path(lists.filename).name]
    ref, xn = _reference(folder, x)
    (d, i), (rd, ri) = search(index, xn, 10, nprobe=8), search(ref, xn, 10, nprobe=8)
    assert index.ntotal == ref.ntotal == len(x) == manifest.ntotal
    assert np.array_equal(i, ri) and np.allclose(d, rd, atol=1e-6)


def test_an_ivf_index_is_built_on_disk_and_extended_without_touching_the_mapped_lists(ray_session, tmp_path):
    x = _vectors(800)
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x[:600]), uri, max_rows_per_file=200)
    store = Store(uri)
    assert build_index(store, CFG, show_progress=False)["kind"] == "ivfflat"
    folder = index_dir(store, "emb")
    _same_answers(folder, x[:600])
    assert (folder / "index.faiss").stat().st_size < 600 * DIM * 4  # the file holds no lists
    before = Retriever(store, "emb")  # a reader mapping the first index
    hits = before.by_id("r0007", k=5)
    first = next(folder.glob("*.ivfdata"))

    lance.write_dataset(_table(x[600:], 600), uri, mode="append", max_rows_per_file=100)
    assert build_index(store, CFG, show_progress=False)["ntotal"] == 800
    _same_answers(folder, x)  # the saved lists, then the new rows', as merge_from orders them
    assert not first.exists()  # replaced: the new lists went into a new file
    assert before.by_id("r0007", k=5) == hits  # the old reader still answers from its mapping

    summary = build_knn(store, KnnConfig(column="emb", k=3), show_progress=False)  # workers map the same file
    edges = open_knn(store, "emb").to_table().sort_by([("source_id", "ascending"), ("rank", "ascending")])
    assert summary["edges"] == len(edges) == 2400
    nearest = {r["source_id"]: r["neighbour_id"] for r in edges.to_pylist() if r["rank"] == 1}
    ref, xn = _reference(folder, x)
    _, i = search(ref, xn[:50], 2, nprobe=8)
    label_id = dict(zip(*load_index(folder)[2].to_pydict().values()))
    assert [nearest[f"r{j:04d}"] for j in range(50)] == [label_id[int(i[j, 1])] for j in range(50)]


def test_an_index_written_whole_by_an_older_version_is_extended_onto_disk(ray_session, tmp_path):
    import faiss

    x = _vectors(700)
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x[:500]), uri, max_rows_per_file=250)
    store = Store(uri)
    build_index(store, CFG, show_progress=False)
    folder = index_dir(store, "emb")
    ref, _ = _reference(folder, x[:500])
    faiss.write_index(ref, str(folder / "index.faiss"))  # lists inside the file, as before this change
    for p in folder.glob("*.ivfdata"):
        p.unlink()
    assert len(Retriever(store, "emb").by_id("r0001", k=3)) == 3  # still read (mapped from the file)
    lance.write_dataset(_table(x[500:], 500), uri, mode="append")
    assert build_index(store, CFG, show_progress=False)["ntotal"] == 700
    _same_answers(folder, x)


def test_a_build_killed_after_its_merge_resumes_without_adding_or_merging_again(ray_session, tmp_path, monkeypatch, capsys):
    import engines.vector.index as index_job

    x = _vectors(450)
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x), uri, max_rows_per_file=150)
    store = Store(uri)
    real = index_job.save_index

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_job, "save_index", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(store, CFG, show_progress=False)
    folder = index_dir(store, "emb")
    assert len(list(folder.glob("*.ivfdata"))) == 1 and not (folder / "manifest.json").exists()
    monkeypatch.setattr(index_job, "save_index", real)
    capsys.readouterr()
    assert build_index(store, CFG, show_progress=False)["ntotal"] == 450
    assert "resuming: 3 of 3 shards already added" in capsys.readouterr().err
    _same_answers(folder, x)
    assert not list((folder.parent / "shards-emb").glob("*"))  # the build's folder is gone


def test_a_worker_that_cannot_see_the_build_folder_sends_its_shard_back(ray_session, tmp_path):
    from engines.vector.index import IndexConfig, serialize, train_index

    x = _vectors(300)
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x), uri)
    store = Store(uri)
    trained, _, _ = train_index(x / np.linalg.norm(x, axis=1, keepdims=True), 300, IndexConfig(kind="ivfflat", nlist=4))
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "token").write_text("this-run")
    unit = pa.table({"unit": [0], "fragments": [[0]], "label_start": [0]})
    args = (store, store.open().version, "emb", serialize(trained), True, str(folder))
    here = _AddWorker(*args, "this-run")(unit).to_pylist()[0]
    assert here["shard"] is None and (folder / "unit-0.faiss").stat().st_size > 300 * DIM * 4
    away = _AddWorker(*args, "another-run")(unit).to_pylist()[0]  # a node without the folder
    assert away["shard"] == (folder / "unit-0.faiss").read_bytes() and len(away["ids"]) == 300


def test_the_driver_trains_adds_and_merges_nothing(ray_session, tmp_path, monkeypatch):
    """The driver's memory is the ids and the quantiser: training, adding and merging run in Ray
    worker processes (the functions below are broken in the driver's process only)."""
    import engines.vector.index as vindex
    import engines.vector.ondisk as ondisk

    def refused(*a, **k):
        raise AssertionError("called in the driver")

    for mod, name in [(vindex, "train_index"), (vindex, "add_vectors"), (ondisk, "merge_deleting")]:
        monkeypatch.setattr(mod, name, refused)
    x = _vectors(500)
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x[:400]), uri, max_rows_per_file=200)
    store = Store(uri)
    assert build_index(store, CFG, show_progress=False)["ntotal"] == 400
    lance.write_dataset(_table(x[400:], 400), uri, mode="append")
    assert build_index(store, CFG, show_progress=False)["ntotal"] == 500
    monkeypatch.undo()
    _same_answers(index_dir(store, "emb"), x)


def test_vectors_read_a_batch_at_a_time_come_in_the_order_of_the_whole_read(tmp_path):
    from pipelines.descriptors import iter_vectors, read_vectors

    x = _vectors(100)
    x[3] = np.nan  # a row clean_vectors skips: still in its place
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(_table(x), uri, max_rows_per_file=40)
    ds = lance.dataset(uri)
    ds.delete("id = 'r0041'")  # a deleted row inside a fragment
    frags = [f.fragment_id for f in ds.get_fragments()][::-1]  # any fragment order, kept
    ids, whole, null = read_vectors(ds, frags, "emb", DIM)
    parts = list(iter_vectors(ds, frags, "emb", DIM, batch_rows=7))
    assert len(parts) > len(frags)  # batches within fragments
    assert sum((p[0] for p in parts), []) == ids and len(ids) == 99
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole, equal_nan=True)


def test_the_training_sample_read_in_chunks_trains_the_index_one_read_gives(tmp_path):
    """Read a few rows at a time into one array: the same clean vectors, in the same order, as
    one read of every sampled row (null and NaN rows among them), hence the same trained index."""
    from engines.vector.index import clean_vectors, serialize, to_matrix, train_index, train_points
    from pipelines.index import _training_sample

    x = _vectors(3000)
    x[5] = np.nan
    t = _table(x)
    t = t.set_column(
        1, "emb", pa.array([None if i % 97 == 3 else v for i, v in enumerate(t.column("emb").to_pylist())], t.schema.field("emb").type)
    )
    uri = str(tmp_path / "emb.lance")
    lance.write_dataset(t, uri, max_rows_per_file=700)
    ds = lance.dataset(uri)
    cfg = IndexConfig(kind="ivfflat", nlist=8, train_size=1000, seed=4)
    n = train_points(ds.count_rows(), cfg)
    pos = np.sort(np.random.default_rng(cfg.seed).choice(3000, n, replace=False))
    whole, null = to_matrix(ds.take(pos.tolist(), columns=["emb"]).column("emb"))
    whole, valid, skipped = clean_vectors(whole, null)
    chunked = _training_sample(ds, "emb", n, cfg, read_rows=37)
    assert skipped and np.array_equal(chunked, whole[valid]) and len(chunked) == int(valid.sum()) < n
    assert serialize(train_index(chunked, 3000, cfg)[0]) == serialize(train_index(whole[valid], 3000, cfg)[0])
