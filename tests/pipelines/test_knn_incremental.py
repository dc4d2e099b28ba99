"""`curate knn` after rows were appended: only the new rows are queried, old lists change only
where a new row beats their k-th neighbour, and the result equals a from-scratch graph (exact
index at this size). Index and k-NN builds refuse random-weight embeddings like review mining.

Real Ray, Lance and FAISS on COCO-mini rows with a small synthetic embedding column."""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curation.store import Store
from engines.vector.retrieval import RandomWeightsError
from pipelines.index import IndexBuildConfig, build_index
from pipelines.knn import KnnConfig, build_knn, open_knn
from tests.helpers import coco_rows, samples_table

DIM = 16


def _table(rows: list[dict], vectors: np.ndarray, column: str = "emb") -> pa.Table:
    return samples_table(rows).append_column(column, pa.array(vectors.tolist(), pa.list_(pa.float32())))


def _lists(store, column: str = "emb") -> dict[str, dict[str, float]]:
    t = open_knn(store, column).to_table().to_pylist()
    out: dict[str, dict[str, float]] = {}
    for r in t:
        out.setdefault(r["source_id"], {})[r["neighbour_id"]] = r["similarity"]
    return out


def _vectors(rng, n_old: int, n_new: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered old rows; new rows are near copies of some old rows (they enter old lists)
    plus unrelated ones (they mostly do not)."""
    centres = rng.standard_normal((4, DIM))
    old = centres[rng.integers(0, 4, n_old)] + 0.6 * rng.standard_normal((n_old, DIM))
    copies = old[rng.choice(n_old, n_new // 2, replace=False)] + 0.05 * rng.standard_normal((n_new // 2, DIM))
    other = rng.standard_normal((n_new - n_new // 2, DIM)) * 2
    return old.astype(np.float32), np.vstack([copies, other]).astype(np.float32)


def test_incremental_knn_equals_a_full_rebuild_and_queries_only_new_rows(ray_session, coco_dir, tmp_path, monkeypatch):
    import curation.runner as runner

    rows = coco_rows(coco_dir, limit=64)
    old, new = _vectors(np.random.default_rng(0), 48, 16)
    store = Store(str(tmp_path / "inc.lance"))
    lance.write_dataset(_table(rows[:48], old), store.uri, max_rows_per_file=16)
    build_index(store, IndexBuildConfig(column="emb"), show_progress=False)
    cfg = KnnConfig(column="emb", k=5, rows_per_unit=16)
    first = build_knn(store, cfg, show_progress=False)
    assert first["mode"] == "full" and first["why_full"] == "no graph to update" and first["edges"] == 48 * 5
    before = _lists(store)

    lance.write_dataset(_table(rows[48:], new), store.uri, mode="append")
    assert build_index(store, IndexBuildConfig(column="emb"), show_progress=False)["kind"] == "flat"  # extended, exact

    # killed after one unit: the re-run computes only the rest
    real = runner.execute_units

    def dies_after_first(units, *a, on_result, **kw):
        def once(row):
            on_result(row)
            raise KeyboardInterrupt("killed")

        return real(units, *a, on_result=once, **kw)

    monkeypatch.setattr(runner, "execute_units", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_knn(store, cfg, show_progress=False)
    seen: list[int] = []
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **kw: (seen.append(len(units)), real(units, *a, **kw)))
    inc = build_knn(store, cfg, show_progress=False)
    assert seen == [3]  # 1 new unit + 3 old units, one done before the kill
    assert inc["mode"] == "incremental" and inc["queried"] == inc["new_rows"] == 16  # not 64
    assert 0 < inc["updated_lists"] < 48 and inc["edges"] == 64 * 5
    summary = json.loads((store.state_dir / "vector" / "knn-emb.json").read_text())
    assert summary["mode"] == "incremental" and summary["updated_lists"] == inc["updated_lists"]
    got = _lists(store)
    changed = {s for s in before if set(before[s]) != set(got[s])}
    assert len(changed) == inc["updated_lists"]  # exactly the lists a new row entered

    again = build_knn(store, cfg, show_progress=False)  # nothing appended: nothing computed
    assert again["graph_version"] == inc["graph_version"]

    full = build_knn(store, cfg.model_copy(update={"full": True}), show_progress=False)
    assert full["mode"] == "full" and full["why_full"] == "asked for with --full" and full["queried"] == 64
    ref = _lists(store)
    assert set(ref) == set(got) and len(got) == 64
    for s, nbrs in ref.items():
        assert set(got[s]) == set(nbrs), s
        assert np.allclose([got[s][n] for n in nbrs], list(nbrs.values()), atol=1e-5)

    other_k = build_knn(store, cfg.model_copy(update={"k": 4}), show_progress=False)
    assert other_k["mode"] == "full" and "k=5" in other_k["why_full"]

    # rows deleted (as a dedup might): the index must be rebuilt, so the graph is rebuilt too
    gone = [rows[i]["id"] for i in (3, 20, 50)]
    store.open().delete("id IN ({})".format(", ".join(f"'{i}'" for i in gone)))
    build_index(store, IndexBuildConfig(column="emb", rebuild=True), show_progress=False)
    after = build_knn(store, cfg.model_copy(update={"k": 4}), show_progress=False)
    assert after["mode"] == "full" and "rebuilt from scratch" in after["why_full"]
    t = open_knn(store, "emb").to_table()
    assert not set(gone) & set(t.column("source_id").to_pylist() + t.column("neighbour_id").to_pylist())
    assert after["edges"] == 61 * 4


def test_index_and_knn_refuse_random_weight_embeddings(ray_session, coco_dir, tmp_path):
    from cli.main import app

    rows = coco_rows(coco_dir, limit=12)
    store = Store(str(tmp_path / "rnd.lance"))
    v = np.random.default_rng(1).standard_normal((12, DIM)).astype(np.float32)
    lance.write_dataset(_table(rows, v, "prof_clip_image"), store.uri)
    rec = store.state_dir / "profiling" / "models.json"
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"prof_clip": {"model": "random-init tiny model", "random_weights": True}}))

    with pytest.raises(RandomWeightsError, match=r"index of 'prof_clip_image' refused: column group 'prof_clip'.*--allow-random-weights"):
        build_index(store, IndexBuildConfig(column="prof_clip_image"), show_progress=False)
    res = CliRunner().invoke(app, ["index", "build", "--dataset", store.uri, "--column", "prof_clip_image"])
    assert res.exit_code != 0 and "--allow-random-weights" in res.output and "Traceback" not in res.output

    m = build_index(store, IndexBuildConfig(column="prof_clip_image", allow_random_weights=True), show_progress=False)
    assert "randomly initialised" in m["config"]["random_derived"]["prof_clip_image"]
    with pytest.raises(RandomWeightsError, match="k-NN graph of 'prof_clip_image' refused"):
        build_knn(store, KnnConfig(column="prof_clip_image", k=3), show_progress=False)
    res = CliRunner().invoke(app, ["knn", "--dataset", store.uri, "--column", "prof_clip_image", "--k", "3"])
    assert res.exit_code != 0 and "--allow-random-weights" in res.output and "Traceback" not in res.output
    s = build_knn(store, KnnConfig(column="prof_clip_image", k=3, allow_random_weights=True), show_progress=False)
    assert "prof_clip" in s["random_derived"]["prof_clip_image"] and s["edges"] == 36
