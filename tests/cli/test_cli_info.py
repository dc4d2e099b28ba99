"""`curate info`, `curate diff`, `curate stages` and CLI errors, through the real typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from curation.store import Store


def test_info_diff_stages(coco_store, tmp_path):
    dst = tmp_path / "i.lance"
    shutil.copytree(coco_store.uri, dst, ignore=shutil.ignore_patterns("_curation"))
    store = Store(dst)
    store.open().add_columns({"exact_dup_of": "CAST(NULL AS STRING)"})
    runner = CliRunner()
    out = runner.invoke(app, ["info", "--dataset", str(dst)])
    assert out.exit_code == 0, out.output
    assert "rows 80" in out.output and "exact_dup" in out.output and "captions" in out.output
    assert "rows with errors: 0" in out.output and "v2" in out.output
    out = runner.invoke(app, ["diff", "--dataset", str(dst), "1", "2"])
    assert out.exit_code == 0 and json.loads(out.output)["columns_added"] == ["exact_dup_of"]
    out = runner.invoke(app, ["diff", "--dataset", str(dst), "1", "99"])  # was a 48-line traceback
    assert out.exit_code == 2 and "has no version 99; its versions are 1-2" in " ".join(out.output.split())
    out = runner.invoke(app, ["stages"])
    assert out.exit_code == 0 and "ingest" in out.output and "caption_stats" in out.output


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["info", "--dataset", str(tmp_path / "missing.lance")])
    assert out.exit_code == 2 and "no Lance dataset" in out.output
    out = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--dataset", str(tmp_path / "x.lance")])
    assert out.exit_code == 2 and "source not found" in out.output
    out = runner.invoke(app, ["stage", "nonexistent", "--dataset", str(tmp_path / "x.lance")])
    assert out.exit_code == 2 and "unknown stage" in out.output


def test_stages_name_lists_the_fields_a_config_accepts():
    runner = CliRunner()
    out = runner.invoke(app, ["stages", "export"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for field in ("rules[].optional", "allow_empty", "reencode_quality", "'float32' | 'float16'"):
        assert field in out.output
    out = runner.invoke(app, ["stages", "dedup"], env={"COLUMNS": "200"})
    assert "near.k_centre" in out.output and "semantic.method" in out.output
    out = runner.invoke(app, ["stages"], env={"COLUMNS": "400"})  # a description is its docstring's whole first sentence
    assert "the curriculum bin (complexity quantiles) and the watermark score" in " ".join(out.output.split()), out.output
    out = runner.invoke(app, ["demo-data", "x", "--seed", "-1"])
    assert out.exit_code == 2 and "--seed" in out.output, out.output
    out = runner.invoke(app, ["stages", "exprot"])
    assert out.exit_code == 2 and "unknown step 'exprot' (did you mean 'export'?)" in " ".join(out.output.split())
    out = runner.invoke(app, ["stages", "caption_stats"], env={"COLUMNS": "200"})  # was an empty table
    assert out.exit_code == 0 and "no config fields: it takes no params" in out.output, out.output


def test_sql_and_diff_take_what_a_user_types(coco_store):
    """An empty query is refused (it printed nothing and exited 0); diff takes v3 as `info` prints it."""
    runner = CliRunner()
    out = runner.invoke(app, ["sql", " ", "--dataset", coco_store.uri])
    assert out.exit_code == 2 and "the query is empty" in out.output, out.output
    v = coco_store.open().version
    out = runner.invoke(app, ["diff", "--dataset", coco_store.uri, f"v{v}", str(v)])
    assert out.exit_code == 0 and '"from": ' + str(v) in out.output, out.output
    out = runner.invoke(app, ["diff", "--dataset", coco_store.uri, "vx"])
    assert out.exit_code == 2 and "'vx' is no version" in out.output, out.output


def test_schema_reference_is_generated_and_info_lists_a_datasets_columns(coco_store):
    from cli.dataset import schema_markdown, schema_rows
    from curation.schema import COLUMN_GROUPS, SAMPLES_SCHEMA

    doc = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
    assert doc.read_text() == schema_markdown(), "docs/schema.md is stale: regenerate it (command in its header)"
    rows = {r["column"]: r for r in schema_rows()}
    declared = [*SAMPLES_SCHEMA.names, *(c for g in COLUMN_GROUPS.values() for c in g.columns)]
    assert sorted(rows) == sorted(declared) and all(r["meaning"] for r in rows.values())
    assert rows["prof_sharpness"]["written by"] == "stage prof_degradation" and rows["dup_keep"]["written by"] == "curate dedup"
    out = CliRunner().invoke(app, ["info", "--dataset", coco_store.uri, "--columns"], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "image_sha256" in out.output and "SHA-256 of the image bytes" in out.output
    assert "prof_sharpness" not in out.output  # only this dataset's columns


def test_info_with_a_graph_path_that_holds_no_graph_says_so(coco_store, tmp_path):
    """It printed "no graph found for the labels: pass --graph" although --graph was passed."""
    out = CliRunner().invoke(app, ["info", "--dataset", coco_store.uri, "--graph", str(tmp_path / "nosuch")], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and f"no concept graph at {tmp_path / 'nosuch'}" in out.output, out.output
