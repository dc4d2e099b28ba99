"""A dataset described by an older descriptor (10 regions, before the content box) is described
again by the dedup job, with a message, instead of being searched with queries it cannot answer."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.schema import VEC_DESC_DIM, VEC_REGIONS
from curation.store import Store
from engines.vector.dedup import has_content_box
from engines.vector.descriptor import visual_columns
from engines.vector.index import VectorError, to_matrix
from pipelines.descriptors import ensure_visual
from tests.helpers import coco_rows, samples_table


def _old_table(coco_dir, n: int = 6) -> pa.Table:
    """Samples with vec_visual as the 10-region descriptor wrote it (random unit vectors)."""
    t = samples_table(coco_rows(coco_dir, n))
    rng = np.random.default_rng(0)
    full = rng.standard_normal((n, VEC_DESC_DIM)).astype(np.float16)
    reg = rng.standard_normal((n, 10 * VEC_DESC_DIM)).astype(np.float16)
    t = t.append_column("vec_desc", pa.FixedSizeListArray.from_arrays(pa.array(full.ravel()), VEC_DESC_DIM))
    t = t.append_column("vec_regions", pa.FixedSizeListArray.from_arrays(pa.array(reg.ravel()), 10 * VEC_DESC_DIM))
    return t.append_column("vec_error", pa.nulls(n, pa.string()))


def test_ten_region_descriptors_are_recomputed_with_the_content_box(ray_session, coco_dir, tmp_path, capsys):
    uri = str(tmp_path / "old.lance")
    lance.write_dataset(_old_table(coco_dir), uri)
    store = Store(uri)
    with pytest.raises(VectorError, match="older version.*--overwrite"):
        ensure_visual(store, show_progress=False, dry_run=True)  # a dry run commits nothing: it says what to run
    assert store.open().schema.field("vec_regions").type.list_size == 10 * VEC_DESC_DIM
    ensure_visual(store, show_progress=False)
    assert "older descriptor" in capsys.readouterr().err
    ds = store.open()
    assert ds.schema.field("vec_regions").type.list_size == VEC_REGIONS * VEC_DESC_DIM
    t = ds.to_table(columns=["image", "vec_desc", "vec_regions"])
    assert t.schema.field("vec_regions").type == pa.list_(pa.int8(), VEC_REGIONS * VEC_DESC_DIM)  # the float16 ones are gone
    stored = np.asarray(t.column("vec_regions").to_pylist(), np.float32).reshape(-1, VEC_DESC_DIM)
    assert (np.abs(stored).max(axis=1) == 127).all()  # each region's descriptor scaled to the int8 range
    fresh = visual_columns(t.column("image").to_pylist())
    assert np.array_equal(np.asarray(t.column("vec_desc").to_pylist()), np.asarray(fresh["vec_desc"]))  # real descriptors now
    assert np.array_equal(stored.ravel(), np.asarray(fresh["vec_regions"], np.float32).ravel())
    full = np.asarray(t.column("vec_desc").to_pylist(), np.float32)
    assert np.allclose(np.linalg.norm(full, axis=1), 1, atol=1e-2)  # float16 unit vectors, not the random ones
    reg, _ = to_matrix(t.column("vec_regions"), unit=VEC_DESC_DIM)
    reg = reg.reshape(len(full), VEC_REGIONS, VEC_DESC_DIM)
    assert np.allclose(np.linalg.norm(reg, axis=2), 1, atol=1e-5)
    assert not has_content_box(full, reg).any()  # photos: the content box is the full frame again
    assert (np.sum(reg[:, -1] * full, axis=1) > 0.999).all()
    # photos: the content box is the full frame: within float16's 1e-3 as before, plus the int8
    # rounding of the region (half a step: 0.5/127 of its largest component)
    assert (np.abs(reg[:, -1] - full) <= 1e-3 + 0.5 / 127 * np.abs(reg[:, -1]).max(axis=1, keepdims=True)).all()
