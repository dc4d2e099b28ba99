"""A damaged or incomplete concept graph folder is one line with the fix, never "a bug"."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from cli.main import app


def test_a_damaged_or_incomplete_graph_folder_is_one_line_with_the_fix(tmp_path, coco_graph_dir):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "nodes.parquet").write_text("not parquet")
    (corrupt / "edges.parquet").write_text("not parquet")
    no_edges = tmp_path / "no_edges"
    shutil.copytree(coco_graph_dir, no_edges)
    (no_edges / "edges.parquet").unlink()
    for folder, said in ((corrupt, "is unreadable (nodes.parquet"), (no_edges, "has no edges.parquet")):
        res = CliRunner().invoke(app, ["graph", "show", "--graph", str(folder)], env={"COLUMNS": "250"})
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and said in out and "curate graph build --out" in out, out
        assert "bug" not in out and "Traceback" not in res.output
