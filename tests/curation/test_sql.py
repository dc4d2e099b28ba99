"""SQL through DuckDB on a dataset holding half-float vector columns (what every profiled or
deduplicated dataset has): DuckDB alone refuses such a table; ``curation.sql`` and ``curate sql``
give it float32 lazily."""

from __future__ import annotations

import json

import duckdb
import lance
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from cli.main import app
from curation.sql import duckdb_view, run_sql
from curation.store import Store
from tests.helpers import coco_rows, samples_table


@pytest.fixture(scope="module")
def half_store(tmp_path_factory, coco_dir):
    rows = coco_rows(coco_dir, limit=12)
    rows[3]["error"] = "truncated: cut"
    t = samples_table(rows)
    vec = np.arange(12 * 4, dtype=np.float16).reshape(12, 4) / 8
    t = t.append_column("vec_desc", pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float16()), 4))
    uri = tmp_path_factory.mktemp("sql") / "h.lance"
    lance.write_dataset(t, str(uri))
    return Store(str(uri))


def test_duckdb_alone_refuses_half_floats_and_the_view_reads_them(half_store):
    ds = lance.dataset(half_store.uri)  # noqa: F841 (DuckDB finds it by its variable name)
    with pytest.raises(duckdb.NotImplementedException, match="Unsupported Internal Arrow Type e"):
        duckdb.sql("select width from ds").fetchall()  # the problem being solved, as users meet it
    samples = duckdb_view(half_store.uri)  # noqa: F841 (queried by name below)
    assert duckdb.sql("select count(*) from samples where width > 0").fetchall() == [(12,)]
    got = duckdb.sql("select vec_desc[2] from samples order by vec_desc[1]").fetchall()
    assert [g[0] for g in got] == [float(x) for x in (np.arange(12 * 4, dtype=np.float16).reshape(12, 4) / 8)[:, 1]]
    assert "image" not in [c[0] for c in duckdb.sql("describe samples").fetchall()]
    t = run_sql("select error, count(*) as n from samples group by 1 order by n", half_store.uri)
    assert t.to_pylist() == [{"error": "truncated: cut", "n": 1}, {"error": None, "n": 11}]
    with pytest.raises(ValueError, match='Candidate bindings: "width"'):
        run_sql("select widht from samples", half_store.uri)


def test_curate_sql_prints_or_writes_and_errors_in_one_line(half_store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["sql", "select count(*) as n from samples where error is null", "-d", half_store.uri])
    assert res.exit_code == 0 and "11" in res.output, res.output
    out = tmp_path / "rows.jsonl"
    res = runner.invoke(app, ["sql", "select id, vec_desc from samples", "-d", half_store.uri, "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12 and len(lines[0]["vec_desc"]) == 4
    res = runner.invoke(app, ["sql", "select nope from samples", "-d", half_store.uri])
    assert res.exit_code == 2 and "Referenced column" in res.output and res.exception.__class__ is SystemExit
    res = runner.invoke(app, ["sql", "select 1", "-d", half_store.uri, "--out", str(tmp_path / "x.xlsx")])
    assert res.exit_code == 2 and ".parquet, .csv or .jsonl" in res.output
