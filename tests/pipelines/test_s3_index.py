"""An index built for an s3:// dataset is found by any node: `index build` uploads it to
``<uri>/_curation/vector/index-<column>/`` (manifest last), and k-NN / search on a machine with an
empty state cache (another ``CURATE_STATE_DIR``) fetch it from the bucket (a local moto server)
and answer the same neighbours. The k-NN graph of an s3:// dataset is written straight to
``<uri>/_curation/vector/knn-<column>.lance`` (nothing on the driver's disk but checkpoints),
replaced whole by a re-run, and resumable after a kill. A local dataset keeps its index in its
own folder, nothing else."""

from __future__ import annotations

import shutil

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.vector.index import VectorError
from engines.vector.retrieval import Retriever, index_dir
from engines.vector.synth import clustered_embeddings
from pipelines.index import IndexBuildConfig, build_index
from pipelines.knn import KnnConfig, _knn_units_without_files, _KnnWorker, _manifest_sha, build_knn, knn_uri, open_knn

DIM = 16
FILES = ["index.faiss", "labels.arrow", "manifest.json"]


def _table(n: int = 60) -> pa.Table:
    x = next(clustered_embeddings(n, DIM, n_clusters=6, seed=1)).astype(np.float32)
    return pa.table({"id": pa.array([f"r{i:03d}" for i in range(n)]), "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)})


def _edges(store: Store) -> list[tuple]:
    t = open_knn(store, "emb").to_table().sort_by([("source_id", "ascending"), ("rank", "ascending")])
    return [(r["source_id"], r["neighbour_id"], r["rank"]) for r in t.to_pylist()]


def _keys(client, prefix: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="vec-index", Prefix=prefix).get("Contents", [])}


@pytest.fixture
def s3(s3_env, monkeypatch, tmp_path):
    env, client = s3_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client.create_bucket(Bucket="vec-index")
    return client


def test_index_built_on_one_node_is_found_by_another(s3, ray_session, tmp_path, monkeypatch):
    uri = "s3://vec-index/emb.lance"
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_a))
    store = Store(uri)
    lance.write_dataset(_table(), uri, max_rows_per_file=20, storage_options=store.storage_options)
    m = build_index(store, IndexBuildConfig(column="emb", rows_per_shard=30), show_progress=False)
    assert m["ntotal"] == 60
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="vec-index", Prefix="emb.lance/_curation/")["Contents"]}
    assert keys == {f"emb.lance/_curation/vector/index-emb/{f}" for f in FILES}
    assert str(index_dir(store, "emb")).startswith(str(node_a))
    hits_a = Retriever(store, "emb").by_id("r007", k=5)
    summary = build_knn(store, KnnConfig(column="emb", k=4), show_progress=False)
    edges_a = _edges(store)
    # the graph is in the bucket, where every node reaches it; not on the driver's disk
    graph = "s3://vec-index/emb.lance/_curation/vector/knn-emb.lance"
    assert knn_uri(store, "emb") == summary["path"] == graph
    assert store.open().version == 1  # the dataset itself is untouched
    knn_keys = _keys(s3, "emb.lance/_curation/vector/knn-emb.lance/")
    assert any(k.endswith(".manifest") for k in knn_keys) and any("/data/" in k for k in knn_keys)
    assert not [p for p in node_a.rglob("knn-emb.lance*")] + [p for p in node_a.rglob("knn-emb-ckpt*")]  # no local graph
    assert (store.state_dir / "vector" / "knn-emb.json").is_file()  # the summary (it names the bucket) stays local

    # another node: empty state cache; it finds the index in the bucket and answers the same
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_b))
    assert not (index_dir(store, "emb") / "manifest.json").exists()
    assert _edges(store) == edges_a  # a reader on node B opens the graph from the bucket
    assert not node_b.exists() or not list(node_b.rglob("knn-emb.lance*"))
    hits_b = Retriever(store, "emb").by_id("r007", k=5)
    assert [h["id"] for h in hits_b] == [h["id"] for h in hits_a] and len(hits_b) == 5
    assert np.allclose([h["similarity"] for h in hits_b], [h["similarity"] for h in hits_a])
    here = index_dir(store, "emb")
    assert here.is_relative_to(node_b) and all((here / f).is_file() for f in FILES)
    assert store.pull_state("vector/index-emb") is False  # same manifest: not downloaded again
    summary = build_knn(store, KnnConfig(column="emb", k=4), show_progress=False)
    assert summary["path"] == graph and _edges(store) == edges_a and len(edges_a) == 240

    # a k-NN actor on a node that cannot see the driver's folder fetches the index into its own cache
    wanted = _manifest_sha(index_dir(store, "emb"))
    monkeypatch.setenv("CURATE_STATE_DIR", str(tmp_path / "node-c"))
    w = _KnnWorker(
        store, store.open().version, "emb", str(tmp_path / "elsewhere"), str(tmp_path / "out.lance"), 4, None, manifest_sha=wanted
    )
    assert w.index.ntotal == 60 and (tmp_path / "node-c").is_dir()
    with pytest.raises(VectorError, match="not the one the k-NN job started with"):
        _KnnWorker(
            store, store.open().version, "emb", str(tmp_path / "elsewhere"), str(tmp_path / "o2.lance"), 4, None, manifest_sha="0" * 12
        )

    # a rebuild on node B replaces the index in the bucket; node A's stale cache is refreshed on use
    lance.write_dataset(_table(80).slice(60), uri, mode="append", storage_options=store.storage_options)
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_b))
    assert build_index(store, IndexBuildConfig(column="emb"), show_progress=False)["ntotal"] == 80
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_a))
    assert Retriever(store, "emb").index.ntotal == 80
    # mid-push (remote manifest gone, files there): a node keeps its complete local copy
    s3.delete_object(Bucket="vec-index", Key="emb.lance/_curation/vector/index-emb/manifest.json")
    assert store.pull_state("vector/index-emb") is False and Retriever(store, "emb").index.ntotal == 80


def test_knn_graph_in_bucket_resumes_and_is_replaced_whole(s3, ray_session, tmp_path, monkeypatch):
    import curation.runner as runner

    uri = "s3://vec-index/knn.lance"
    node_a = tmp_path / "node-a"
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_a))
    store = Store(uri)
    lance.write_dataset(_table(), uri, max_rows_per_file=20, storage_options=store.storage_options)
    build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    prefix = "knn.lance/_curation/vector/knn-emb.lance/"

    # killed after the first of 3 units: its fragments sit uncommitted in the bucket, its checkpoint on the driver
    real = runner.execute_units

    def dies_after_first(units, *a, on_result, **kw):
        def once(row):
            on_result(row)
            raise KeyboardInterrupt("killed")

        return real(units, *a, on_result=once, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_knn(store, KnnConfig(column="emb", k=4, rows_per_unit=20), show_progress=False)
    ckpts = list(node_a.rglob("knn-emb-ckpt-*/unit-*.json"))
    assert len(ckpts) == 1 and any("/data/" in k for k in _keys(s3, prefix))
    with pytest.raises(ValueError, match="not found"):
        open_knn(store, "emb")  # nothing committed: no half graph to read
    import json

    done = {0: json.loads(ckpts[0].read_text())}
    assert _knn_units_without_files(store, "emb", done) == []
    assert _knn_units_without_files(store, "emb", {7: {"fragments": [{"files": [{"path": "gone.lance"}]}]}}) == [7]

    seen = []
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **kw: (seen.append(len(units)), real(units, *a, **kw)))
    s4 = build_knn(store, KnnConfig(column="emb", k=4, rows_per_unit=20), show_progress=False)
    assert seen == [2] and s4["edges"] == 240  # 1 of 3 units reused from the bucket
    t = open_knn(store, "emb").to_table()
    assert t.num_rows == 240 and len(set(t.column("source_id").to_pylist())) == 60
    assert max(t.column("rank").to_pylist()) == 4
    assert not list(node_a.rglob("knn-emb.lance*")) and not list(node_a.rglob("knn-emb-ckpt*"))
    k4_files = {f.path for fr in open_knn(store, "emb").get_fragments() for f in fr.data_files()}

    # a re-run with another k replaces the graph whole: no k=4 edge is left, old files are deleted
    s2 = build_knn(store, KnnConfig(column="emb", k=2), show_progress=False)
    g = open_knn(store, "emb")
    t2 = g.to_table()
    assert s2["edges"] == t2.num_rows == 120 and sorted(set(t2.column("rank").to_pylist())) == [1, 2]
    assert len(g.versions()) == 1
    data = {k.rsplit("/", 1)[1] for k in _keys(s3, prefix + "data/")}
    # the k=4 graph's files are deleted (files no version references, e.g. a unit the killed run
    # finished after the kill, are kept until 7 days old: they may be another run's pending fragments)
    assert not data & k4_files and {f.path for fr in g.get_fragments() for f in fr.data_files()} <= data
    # node B (an empty state dir) reads the same new graph
    monkeypatch.setenv("CURATE_STATE_DIR", str(tmp_path / "node-b"))
    assert open_knn(store, "emb").to_table().sort_by("source_id").equals(t2.sort_by("source_id"))


def test_local_dataset_is_unaffected(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_STATE_DIR", str(tmp_path / "cache"))
    uri = tmp_path / "local.lance"
    lance.write_dataset(_table(), str(uri), max_rows_per_file=30)
    store = Store(str(uri))
    build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    assert store.push_state("vector/index-emb") == [] and store.pull_state("vector/index-emb") is False
    assert sorted(p.name for p in (uri / "_curation" / "vector" / "index-emb").iterdir()) == FILES
    assert not (tmp_path / "cache").exists()
    assert knn_uri(store, "emb") == str(uri / "_curation" / "vector" / "knn-emb.lance")  # as before: inside the dataset
    assert len(Retriever(store, "emb").by_id("r001", k=3)) == 3
    with pytest.raises(ValueError, match="relative"):
        Store("s3://vec-index/x.lance").push_state("../etc")
    shutil.rmtree(uri)


def test_an_ivf_index_on_disk_travels_whole_and_its_old_data_file_goes(s3, ray_session, tmp_path, monkeypatch):
    """IVF lists live in a data file beside index.faiss (named once per build): the bucket and
    every node's cache hold exactly the current one after an incremental build elsewhere."""
    from engines.vector.index import IndexConfig

    uri = "s3://vec-index/ivf.lance"
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_a))
    store = Store(uri)
    lance.write_dataset(_table(400), uri, max_rows_per_file=100, storage_options=store.storage_options)
    cfg = IndexBuildConfig(column="emb", rows_per_shard=150, index=IndexConfig(kind="ivfflat", nlist=4, nprobe=4))
    m = build_index(store, cfg, show_progress=False)
    assert m["ntotal"] == 400 and m["kind"] == "ivfflat"

    def data_keys() -> set[str]:
        return {k.rsplit("/", 1)[1] for k in _keys(s3, "ivf.lance/_curation/vector/index-emb/") if k.endswith(".ivfdata")}

    first = data_keys()
    assert len(first) == 1 and {p.name for p in index_dir(store, "emb").glob("*.ivfdata")} == first
    assert len(Retriever(store, "emb").by_id("r007", k=5)) == 5

    lance.write_dataset(_table(500).slice(400), uri, mode="append", storage_options=store.storage_options)
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_b))  # extended on another node: pulled, merged, pushed
    assert build_index(store, cfg, show_progress=False)["ntotal"] == 500
    hits = [(h["id"], round(h["similarity"], 5)) for h in Retriever(store, "emb").by_id("r450", k=5)]
    second = data_keys()
    assert len(second) == 1 and second != first  # the old data file left the bucket
    monkeypatch.setenv("CURATE_STATE_DIR", str(node_a))
    r = Retriever(store, "emb")  # node A's stale cache refreshed: the new data file, not the old one beside it
    assert r.index.ntotal == 500 and {p.name for p in index_dir(store, "emb").glob("*.ivfdata")} == second
    assert [(h["id"], round(h["similarity"], 5)) for h in r.by_id("r450", k=5)] == hits and len(hits) == 5
