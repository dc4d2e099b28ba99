"""No silent noise from random weights (engine level, no Ray): the one check every consumer runs,
mining's refusal and marks, and the review-trained head stored as what it is (a keep probability)."""

from __future__ import annotations

import warnings

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.active.loop import KeepHead, fit_aesthetic_head, fit_keep_head, load_keep_head, save_keep_head
from engines.active.mining import MineConfig, mine
from engines.active.rules import DEFAULT_RULES
from engines.profiling.embed import MODELS_RECORD, EmbedModelConfig, weights_are_random
from engines.vector.retrieval import RandomWeightsError, check_random_weights, random_weight_sources
from tests.helpers import coco_rows, samples_table


def _record(store: Store, group: str, cfg: EmbedModelConfig, dim: int) -> None:
    """The profiling engine's record of the model behind a column group (as pipelines/profile.py writes it)."""
    models = store.read_json(MODELS_RECORD) or {}
    models[group] = {"model": cfg.describe(), "backend": cfg.backend, "dim": dim, "random_weights": weights_are_random(cfg)}
    store.write_json(MODELS_RECORD, models)


@pytest.fixture
def store(tmp_path, coco_dir) -> Store:
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(coco_rows(coco_dir, limit=4)), uri)
    return Store(uri)


def test_the_check_names_the_group_why_and_the_fix(store):
    cols = ["prof_clip_image", "prof_clip_sim", "prof_aesthetic", "prof_caption_emb", "prof_quality", "emb"]
    assert random_weight_sources(store, cols) == {}  # nothing recorded: ingested/hand-made columns pass
    _record(store, "prof_clip", EmbedModelConfig(backend="hf_clip", random_init=True), 32)
    _record(store, "prof_text_emb", EmbedModelConfig(backend="minilm"), 384)
    src = random_weight_sources(store, cols)
    assert set(src) == {"prof_clip_image", "prof_clip_sim", "prof_aesthetic"}  # the aesthetics head reads prof_clip_image
    assert src["prof_clip_image"]["group"] == "prof_clip" and "random" in src["prof_clip_image"]["why"]
    assert "computed from prof_clip" in src["prof_aesthetic"]["why"]
    with pytest.raises(RandomWeightsError) as e:
        check_random_weights(store, cols, consumer="retrieval over prof_clip_image")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("retrieval over prof_clip_image refused")
    assert "'prof_clip'" in msg and "randomly initialised weights" in msg and "noise" in msg
    assert "real weights" in msg and "--allow-random-weights" in msg and "allow_random_weights: true" in msg
    assert check_random_weights(store, cols, consumer="x", allow=True) == src  # allowed: what to mark
    assert check_random_weights(store, ["prof_caption_emb", "prof_quality"], consumer="x") == {}


def _table(n: int = 40) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    return pa.table(
        {
            "id": [f"r{i:03d}" for i in range(n)],
            "prof_quality": pa.array(rng.uniform(0.3, 0.6, n), pa.float32()),
            "prof_clip_sim": pa.array(rng.uniform(0.1, 0.3, n), pa.float32()),
            "prof_clip_image": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), 16),
            "_pos": pa.array(np.arange(n), pa.int64()),
        }
    )


def test_mining_refuses_random_inputs_and_marks_them_when_allowed():
    t = _table()
    random = {
        c: {"group": "prof_clip", "why": "made by randomly initialised weights (hf_clip:random-init tiny model)"}
        for c in ("prof_clip_image", "prof_clip_sim")
    }
    with pytest.raises(RandomWeightsError, match=r"review mining refused: column group 'prof_clip' \(prof_clip_image, prof_clip_sim\)"):
        mine(t, DEFAULT_RULES, MineConfig(n=10, min_hardness=0.0), random_derived=random)
    items, summary = mine(t, DEFAULT_RULES, MineConfig(n=10, min_hardness=0.0, allow_random_weights=True), random_derived=random)
    assert len(items) == 10
    assert set(summary["random_derived"]) == {"prof_clip_image", "prof_clip_sim"}
    assert all(set(it["payload"]["random_derived"]) == {"prof_clip_image", "prof_clip_sim"} for it in items)
    # real inputs: no mark anywhere (payloads keep their old shape)
    items, summary = mine(t, DEFAULT_RULES, MineConfig(n=10, min_hardness=0.0))
    assert "random_derived" not in summary and not any("random_derived" in it["payload"] for it in items)


def test_keep_head_is_stored_as_a_keep_probability_and_refused_as_an_aesthetics_head(tmp_path):
    from engines.profiling.aesthetics import build_head, load_head, save_head

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = (emb[:, 0] > 0).astype(np.int64)
    head, loss = fit_keep_head(emb, y, embedding_column="prof_clip_image", epochs=150)
    p = head.predict(emb)
    assert p.min() >= 0.0 and p.max() <= 1.0 and p[y == 1].mean() > p[y == 0].mean() + 0.3 and loss < 0.7
    path = save_keep_head(head, tmp_path / "keep_head.safetensors")

    back = load_keep_head(path)
    assert isinstance(back, KeepHead) and back.dim == 32
    assert back.meta["kind"] == "keep_probability_head" and back.meta["scale"] == "0..1"
    assert back.meta["target"].startswith("reviewer keep decisions") and back.meta["embedding_column"] == "prof_clip_image"
    assert np.allclose(back.predict(emb), p, atol=1e-6)
    # the aesthetics loader refuses it, and its error says what the file is
    with pytest.raises(ValueError, match="NOT-AN-AESTHETICS-HEAD: a keep-probability head"):
        load_head(path)
    # and the keep loader refuses a LAION aesthetics head (1..10, not a probability)
    laion = save_head(build_head(32), tmp_path / "aesthetic.safetensors")
    with pytest.raises(ValueError, match="not a keep-probability head"):
        load_keep_head(laion)
    with pytest.raises(ValueError, match="not a keep head"):
        load_keep_head(save_head(build_head(32), tmp_path / "aesthetic.pth"))


def test_the_old_name_is_a_deprecated_alias_that_makes_a_keep_head():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(24, 8)).astype(np.float32)
    y = (emb[:, 0] > 0).astype(np.int64)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        head, _ = fit_aesthetic_head(emb, y, epochs=5)
    assert any(issubclass(x.category, DeprecationWarning) and "keep-probability" in str(x.message) for x in w)
    assert isinstance(head, KeepHead) and head.meta["scale"] == "0..1"  # never an aesthetics-scale head
    assert ((head.predict(emb) >= 0) & (head.predict(emb) <= 1)).all()
