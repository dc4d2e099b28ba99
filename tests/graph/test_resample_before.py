"""The resampling report's "before" is the dataset as it is: its real row count and concept
counts, not those rescaled to the target size (audit: "rows before 30.0" for 80 rows)."""

from __future__ import annotations

import numpy as np
import pytest

from graph.resample import ResampleConfig, resample


@pytest.fixture(scope="module")
def coco_tags(coco_tagger, coco_captions):
    _, rows, _ = coco_captions
    out = coco_tagger.tag_rows(rows)
    return out["tag_concepts"].to_pylist(), out["tag_scores"].to_pylist(), out["tag_direct"].to_pylist()


@pytest.mark.parametrize("method", ["balance", "cap"])
def test_before_is_the_dataset_as_it_is_not_rescaled_to_the_target(coco_tags, method):
    T, S, D = coco_tags
    r = resample(T, S, D, ResampleConfig(method=method, target_size=30, max_upsample=4))
    real = np.asarray(r.incidence.sum(axis=0)).ravel()  # rows carrying each concept
    b = r.before
    assert b["rows"] == len(T) and isinstance(b["rows"], int)  # 80 rows, not 30.0
    np.testing.assert_allclose(b["frequencies"], real)
    assert b["coverage"] == round(float((real >= 1).sum()) / len(real), 4)
    by_concept = dict(zip(r.concepts, real.tolist()))
    assert b["head"] and all(n == by_concept[c] and isinstance(n, int) for c, n in b["head"] + b["tail"])
    assert r.after["rows"] == 30 and r.copies.sum() == 30
