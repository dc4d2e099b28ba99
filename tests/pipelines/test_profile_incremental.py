"""Profiling rows added later gives them what profiling everything at once gives, and a changed
config of a cheap family's own stage recomputes the columns `curate profile` made (real Lance,
real COCO photos, the stages on Ray)."""

from __future__ import annotations

import lance
import numpy as np
import pytest

from curation.store import Store
from pipelines.profile import ProfileConfig, run_profile
from tests.helpers import samples_table

STAGES = ["meta", "hash", "entropy", "degradation", "scores"]  # no model: the model-free signals and the scores


def _profiled(uri, parts) -> lance.LanceDataset:
    """``parts`` written one after another, each profiled before the next is appended."""
    store = Store(str(uri))
    for k, rows in enumerate(parts):
        lance.write_dataset(samples_table(rows), str(uri), mode="create" if k == 0 else "append", max_rows_per_file=5)
        run_profile(store, ProfileConfig(stages=STAGES), show_progress=False)
    return store.open()


def _by_id(ds, cols):
    t = ds.to_table(columns=["id", *cols])
    order = np.argsort(t.column("id").to_pylist())
    return {c: np.array([np.nan if v is None else v for v in t.column(c).to_pylist()], float)[order] for c in cols}


def test_rows_profiled_later_score_as_rows_profiled_at_once(ray_session, tmp_path, coco_sample_rows):
    rows = coco_sample_rows[:14]
    later = _profiled(tmp_path / "later.lance", [rows[:9], rows[9:]])
    once = _profiled(tmp_path / "once.lance", [rows])
    cols = ["prof_watermark_score", "prof_quality", "prof_complexity", "prof_sharpness"]
    a, b = _by_id(later, cols), _by_id(once, cols)
    assert not np.isnan(a["prof_watermark_score"]).any()  # was null on every row added after the first run
    for c in cols:
        np.testing.assert_allclose(a[c], b[c], rtol=1e-9, err_msg=c)


def test_a_changed_family_config_recomputes_what_the_fused_profile_made(ray_session, tmp_path, coco_sample_rows):
    from curation.runner import run_stage
    from pipelines.profile import CheapFamilyConfig, EntropyStage

    ds = _profiled(tmp_path / "p.lance", [coco_sample_rows[:6]])
    before = _by_id(ds, ["prof_jpeg_bpp"])["prof_jpeg_bpp"]
    store = Store(str(tmp_path / "p.lance"))
    same = run_stage(store, EntropyStage(CheapFamilyConfig()), show_progress=False)
    assert same.status == "skipped"  # the config `curate profile` used: nothing to do
    res = run_stage(store, EntropyStage(CheapFamilyConfig(jpeg_quality=30)), show_progress=False)
    assert res.status == "committed"
    after = _by_id(store.open(), ["prof_jpeg_bpp"])["prof_jpeg_bpp"]
    assert (after < before * 0.8).all()  # a quality-30 re-encode takes fewer bytes a pixel on every photo
    again = run_profile(store, ProfileConfig(stages=STAGES), show_progress=False)  # the default config again
    assert any(r.status == "committed" for r in again)
    assert _by_id(store.open(), ["prof_jpeg_bpp"])["prof_jpeg_bpp"] == pytest.approx(before)
