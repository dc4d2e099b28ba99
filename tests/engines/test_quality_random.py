"""prof_quality leaves out a component made by random weights (prof_aesthetic read off random CLIP
embeddings), renormalises the other weights, and says so in models.json and the stage's stats."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.profiling import scores
from engines.profiling.embed import MODELS_RECORD, EmbedModelConfig
from pipelines.profile import ScoresStage

COLS = {
    "prof_sharpness": [2.5, 1.2, 2.0],
    "prof_noise": [1.0, 6.0, 3.0],
    "prof_aesthetic": [7.0, 3.0, None],
}


@pytest.fixture
def store(tmp_path) -> Store:
    uri = str(tmp_path / "ds.lance")
    t = pa.table({"id": ["a", "b", "c"], **{c: pa.array(v, pa.float32()) for c, v in COLS.items()}})
    lance.write_dataset(t, uri)
    return Store(uri)


def _record_clip(store: Store, random_init: bool) -> None:
    cfg = EmbedModelConfig(backend="hf_clip", random_init=random_init, path=None if random_init else "/models/clip")
    models = store.read_json(MODELS_RECORD) or {}
    models["prof_clip"] = {"model": cfg.describe(), "backend": "hf_clip", "dim": 32, "random_weights": random_init}
    store.write_json(MODELS_RECORD, models)


def _run(store: Store) -> tuple[ScoresStage, dict]:
    st = ScoresStage()
    ds = store.open()
    st.prepare(ds)
    batch = ds.to_table(columns=st.input_columns).to_batches()[0]
    return st, st.process_batch(batch)


def test_exclude_renormalises_the_other_weights():
    n = 3
    without = scores.quality_score({k: v for k, v in COLS.items() if k != "prof_aesthetic"}, n)
    assert scores.quality_score(COLS, n, exclude={"prof_aesthetic"}) == pytest.approx(without)
    assert scores.quality_score(COLS, n)[0] != pytest.approx(without[0])  # the aesthetic counts otherwise


def test_random_aesthetic_is_dropped_and_recorded(store):
    _record_clip(store, random_init=True)
    st, out = _run(store)
    assert set(st.dropped) == {"prof_aesthetic"} and "randomly initialised" in st.dropped["prof_aesthetic"]
    plain = {k: v for k, v in COLS.items() if k != "prof_aesthetic"}
    expect = scores.quality_score({**plain, "prof_watermark_score": out["prof_watermark_score"]}, 3)
    assert np.allclose(out["prof_quality"], expect)
    assert st.stats.to_dict()["counters"]["quality_without_random_prof_aesthetic"] == 3
    rec = store.read_json(MODELS_RECORD)["prof_scores"]
    assert list(rec["dropped_random"]) == ["prof_aesthetic"] and "leaves out prof_aesthetic" in rec["model"]
    assert rec["random_weights"] is False  # the score without the noise is usable

    _record_clip(store, random_init=False)  # real CLIP now: the aesthetic counts again, the note goes
    st, out = _run(store)
    assert st.dropped == {} and "prof_scores" not in store.read_json(MODELS_RECORD)
    full = scores.quality_score({**COLS, "prof_watermark_score": out["prof_watermark_score"]}, 3)
    assert np.allclose(out["prof_quality"], full)


def test_the_aesthetic_head_is_recorded_with_its_source_and_random_input(tmp_path):
    import torch

    from engines.profiling.aesthetics import build_head, save_head
    from pipelines.profile import AestheticStage

    uri = str(tmp_path / "emb.lance")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(16, np.float32)), 8)
    lance.write_dataset(pa.table({"id": ["a", "b"], "prof_clip_image": emb}), uri)
    store = Store(uri)
    _record_clip(store, random_init=True)
    torch.manual_seed(0)
    head = save_head(build_head(8), tmp_path / "head.safetensors")
    st = AestheticStage(weights=str(head))
    st.prepare(store.open())
    rec = store.read_json(MODELS_RECORD)["prof_aesthetic"]
    assert rec["source"] == "config" and rec["model"].startswith(f"laion-mlp-head:{head}")
    assert rec["derived_random"] is True and "random weights" in rec["model"]  # its input is noise
    from engines.vector.retrieval import random_weight_sources

    why = random_weight_sources(store, ["prof_aesthetic"])["prof_aesthetic"]["why"]
    assert why.startswith("computed from prof_clip embeddings")  # still flagged, through its input
