"""Schema round trip, column groups, the Lance store's versions / diff / SQL."""

from __future__ import annotations

import pyarrow as pa
import pytest

from curation.schema import SAMPLES_SCHEMA, column_group, group_of, sample_id
from curation.store import Store
from tests.helpers import coco_rows, samples_table


def test_schema_round_trip(tmp_path, coco_dir):
    rows = coco_rows(coco_dir, limit=6)
    rows[0]["captions"].append({"text": "一只猫坐在桌子上", "kind": "short", "lang": "zh"})
    rows[1]["error"] = "corrupt: test"
    store = Store(tmp_path / "s.lance")
    store.create(samples_table(rows))
    back = store.to_arrow()
    assert back.schema.equals(SAMPLES_SCHEMA, check_metadata=False) or back.schema.names == SAMPLES_SCHEMA.names
    assert back.to_pylist() == samples_table(rows).to_pylist()
    assert back.column("captions")[0].as_py()[-1] == {"text": "一只猫坐在桌子上", "kind": "short", "lang": "zh"}


def test_ids_are_stable_and_distinct():
    assert sample_id("/a", "x.jpg") == sample_id("/a", "x.jpg")
    assert sample_id("/a", "x.jpg") != sample_id("/b", "x.jpg")
    assert len(sample_id("/a", "x.jpg")) == 24


def test_column_group_names_must_be_unique():
    column_group("test_group_a", [pa.field("tga_x", pa.int32())])
    with pytest.raises(ValueError, match="already belong"):
        column_group("test_group_b", [pa.field("tga_x", pa.int32())])
    assert group_of("tga_x") == "test_group_a"
    assert group_of("image") == "base"
    assert group_of("exact_dup_of") == "exact_dup"


def test_versions_diff_duckdb_errors(tmp_path, coco_dir):
    rows = coco_rows(coco_dir, limit=5)
    rows[2]["error"] = "truncated: cut"
    store = Store(tmp_path / "v.lance")
    store.create(samples_table(rows))
    ds = store.open()
    ds.add_columns({"w2": "width * 2"})
    v = store.versions()
    assert [x["version"] for x in v] == [1, 2]
    d = store.diff(1, 2)
    assert d["columns_added"] == ["w2"] and d["rows_added"] == 0 and d["values_changed"] == {}
    con = store.duckdb()
    assert con.execute("select count(*) from samples where width > 0").fetchone()[0] == 5
    assert "image" not in [c[0] for c in con.execute("describe samples").fetchall()]
    assert store.error_counts() == {"truncated": 1}
    assert store.open(1).schema.names == SAMPLES_SCHEMA.names  # time travel
