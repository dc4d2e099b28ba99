"""Plug-in transformers models (docs/plugin-models.md): the BLIP captioner / ITM verifier
(``prof_vlm``) and the AI-generated-image detector (``prof_aigc``), loaded by the real loading code
from local folders. No real weights ship offline, so the tests save tiny randomly initialised
models of the real classes (BlipForConditionalGeneration, BlipForImageTextRetrieval,
ViTForImageClassification) to folders: their outputs are noise, models.json says so and the
random-weights guard refuses every consumer of their columns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.config import ConfigError
from curation.store import Store
from engines.profiling.decode import decode_image
from tests.helpers import coco_rows, samples_table


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny random models, as a user would point the config at real ones."""
    from engines.profiling.aigc import save_tiny_classifier
    from engines.profiling.vlm import save_tiny_blip

    d = tmp_path_factory.mktemp("plugin-models")
    return {
        "caption": str(save_tiny_blip(d / "blip-caption", "caption")),
        "match": str(save_tiny_blip(d / "blip-itm", "match")),
        "aigc": str(save_tiny_classifier(d / "vit-aigc", ("real", "fake"))),
        "no_ai_label": str(save_tiny_classifier(d / "vit-pets", ("cat", "dog"))),
    }


def test_saved_random_folders_are_marked_and_an_unmarked_copy_is_not(tiny_models, tmp_path):
    from engines.profiling.hf_local import hf_weights_are_random, model_record

    for p in tiny_models.values():
        assert json.loads((Path(p) / "config.json").read_text())["zcurate"]["random_weights"] is True
        assert hf_weights_are_random(p)
    rec = model_record("image-classifier", tiny_models["aigc"], "transformers")
    assert rec["random_weights"] is True and "RANDOM weights" in rec["model"]
    real = tmp_path / "real"
    shutil.copytree(tiny_models["aigc"], real)  # a folder without the marker counts as real weights
    data = json.loads((real / "config.json").read_text())
    del data["zcurate"]
    (real / "config.json").write_text(json.dumps(data))
    assert not hf_weights_are_random(str(real))
    assert model_record("image-classifier", str(real), "transformers") == {
        "model": f"image-classifier:{real}",
        "backend": "transformers",
        "random_weights": False,
    }


def test_wrappers_on_real_photos(tiny_models, coco_dir):
    from engines.profiling.aigc import AigcDetector, aigc_column
    from engines.profiling.vlm import BlipCaptioner, BlipMatcher, vlm_columns

    files = sorted((coco_dir / "images").glob("*.jpg"))[:3]
    results = [decode_image(p.read_bytes()) for p in files] + [decode_image(b"broken")]
    texts = ["a photo", None, "two dogs playing with a frisbee on a lawn", "x"]
    cap, match = BlipCaptioner(tiny_models["caption"], max_new_tokens=6), BlipMatcher(tiny_models["match"])
    cols = vlm_columns(results, texts, cap, match)
    assert all(isinstance(c, str) for c in cols["prof_vlm_caption"][:3]) and cols["prof_vlm_caption"][3] is None
    m = cols["prof_vlm_match"]
    assert m[1] is None and m[3] is None  # no caption / no image
    assert all(0.0 <= v <= 1.0 for v in (m[0], m[2]))
    # batched scores equal one-by-one scores (padding is masked)
    one = [match.match([results[i].rgb], [texts[i]])[0] for i in (0, 2)]
    assert np.allclose([m[0], m[2]], one, atol=1e-5)
    only_caption = vlm_columns(results, texts, cap, None)
    assert only_caption["prof_vlm_match"] == [None] * 4 and only_caption["prof_vlm_caption"] == cols["prof_vlm_caption"]

    det = AigcDetector(tiny_models["aigc"])
    assert det.labels == ["fake"]
    p = aigc_column(results, det)
    assert p[3] is None and all(0.0 <= v <= 1.0 for v in p[:3])


@pytest.mark.parametrize(
    ("id2label", "want"),
    [
        ({0: "REAL", 1: "FAKE"}, [1]),
        ({0: "human", 1: "artificial"}, [1]),
        ({"0": "AiGenerated", "1": "Real"}, [0]),
        ({0: "real", 1: "ai_generated", 2: "synthetic"}, [1, 2]),
        ({0: "hair", 1: "chair", 2: "not_ai"}, None),  # "ai" inside a word or negated is no AI label
    ],
)
def test_ai_label_found_by_name(id2label, want):
    from engines.profiling.aigc import ai_label_ids
    from engines.profiling.hf_local import ModelDirError

    if want is None:
        with pytest.raises(ModelDirError, match="no label of the model means AI-generated"):
            ai_label_ids(id2label)
    else:
        assert ai_label_ids(id2label) == want


def test_clear_errors_before_any_worker_starts(tiny_models, tmp_path):
    from pipelines.profile import AigcStage, ProfileConfig, VlmStage, plan

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:
        AigcStage({"model": str(empty)})
    assert str(e.value).startswith(f"prof_aigc.model: {empty} has no model (no config.json)")
    assert "save_pretrained" in str(e.value)
    with pytest.raises(ConfigError, match=r"prof_vlm\.caption_model: .*/missing does not exist.*nothing is downloaded"):
        VlmStage({"caption_model": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="holds BlipForImageTextRetrieval; this stage needs BlipForConditionalGeneration"):
        VlmStage({"caption_model": tiny_models["match"]})
    with pytest.raises(ConfigError, match="needs an image classifier"):
        AigcStage({"model": tiny_models["caption"]})
    with pytest.raises(ConfigError, match="set caption_model and/or match_model"):
        VlmStage({})
    # the detector with no AI label: refused, its labels named
    with pytest.raises(ConfigError) as e:
        AigcStage({"model": tiny_models["no_ai_label"]})
    msg = str(e.value)
    assert msg.startswith("prof_aigc.model: no label of the model means AI-generated") and "['cat', 'dog']" in msg
    assert "ai_labels" in msg and "\n" not in msg
    AigcStage({"model": tiny_models["no_ai_label"], "ai_labels": ["dog"]})  # named explicitly: accepted
    with pytest.raises(ConfigError, match=r"ai_labels \['robot'\] are not labels of the model"):
        AigcStage({"model": tiny_models["no_ai_label"], "ai_labels": ["robot"]})
    # the profile job: the same error from plan(); with no model configured both are skipped
    with pytest.raises(ConfigError, match="prof_aigc.model"):
        plan(ProfileConfig(stages=["aigc"], aigc={"model": str(empty)}), set())
    stages, notes = plan(ProfileConfig(stages=["vlm", "aigc"]), set())
    assert stages == [] and [n.split(":")[0] for n in notes] == ["prof_vlm skipped", "prof_aigc skipped"]


def test_profile_job_writes_flagged_columns_and_consumers_refuse(tiny_models, coco_dir, tmp_path, ray_session):
    from engines.vector.retrieval import RandomWeightsError, check_random_weights
    from pipelines.profile import ProfileConfig, run_profile

    rows = coco_rows(coco_dir, limit=7)
    rows.append({**rows[0], "id": "broken-row", "source_key": "broken.jpg", "image": b"not an image", "captions": []})
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri, max_rows_per_file=4)
    store = Store(uri)
    cfg = ProfileConfig(
        stages=["vlm", "aigc"],
        vlm={"caption_model": tiny_models["caption"], "match_model": tiny_models["match"], "max_new_tokens": 6, "batch_size": 4},
        aigc={"model": tiny_models["aigc"], "batch_size": 4},
    )
    results = run_profile(store, cfg, show_progress=False)
    assert [r.stage for r in results] == ["prof_vlm", "prof_aigc"] and all(r.status == "committed" for r in results)

    t = store.open().to_table(columns=["id", "prof_vlm_caption", "prof_vlm_match", "prof_aigc"])
    assert t.schema.field("prof_vlm_caption").type == pa.string()
    assert t.schema.field("prof_vlm_match").type == pa.float32() and t.schema.field("prof_aigc").type == pa.float32()
    by_id = {r["id"]: r for r in t.to_pylist()}
    bad = by_id.pop("broken-row")
    assert bad["prof_vlm_caption"] is None and bad["prof_vlm_match"] is None and bad["prof_aigc"] is None
    assert len(by_id) == 7
    for r in by_id.values():
        assert isinstance(r["prof_vlm_caption"], str)
        assert 0.0 <= r["prof_vlm_match"] <= 1.0 and 0.0 <= r["prof_aigc"] <= 1.0

    models = json.loads((store.state_dir / "profiling" / "models.json").read_text())
    assert models["prof_vlm"]["random_weights"] is True and models["prof_aigc"]["random_weights"] is True
    assert set(models["prof_vlm"]["models"]) == {"caption", "match"} and models["prof_aigc"]["backend"] == "transformers"
    assert "RANDOM weights" in models["prof_aigc"]["model"]

    # every consumer of these columns is refused (one line: group, why, fix) unless told
    with pytest.raises(RandomWeightsError) as e:
        check_random_weights(store, ["prof_aigc"], consumer="x")
    msg = str(e.value)
    assert msg.startswith("x refused: column group 'prof_aigc' (prof_aigc) was made by randomly initialised weights")
    assert "\n" not in msg and "--allow-random-weights" in msg
    with pytest.raises(RandomWeightsError, match="column group 'prof_vlm' \\(prof_vlm_caption, prof_vlm_match\\)"):
        check_random_weights(store, ["prof_vlm_caption", "prof_vlm_match", "prof_width"], consumer="review mining")
    assert set(check_random_weights(store, ["prof_aigc", "prof_vlm_match"], consumer="x", allow=True)) == {"prof_aigc", "prof_vlm_match"}

    # the profile report names both models and flags their weights as random
    from pipelines.report import build_report

    page = build_report(store, tmp_path / "report.html").read_text()
    assert page.count("RANDOM WEIGHTS") >= 2 and "<b>prof_aigc</b>" in page and "<b>prof_vlm</b>" in page

    # a re-run finds every row done and computes nothing
    again = run_profile(store, cfg, show_progress=False)
    assert all(r.status != "committed" for r in again)
