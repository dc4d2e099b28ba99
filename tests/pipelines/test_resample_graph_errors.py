"""Inside `curate run`, a missing concept graph for the graph_tag or resample step is the user's
to fix: one line and exit 2, as from `curate graph tag`, not "a bug in zcurate"."""

from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

WIDE = {"COLUMNS": "250"}  # no line wrapping inside the paths and messages asserted on


@pytest.mark.parametrize("step", ["graph_tag", "resample"])
def test_missing_graph_in_curate_run_is_one_line_not_a_bug(step, coco_store, tmp_path, ray_session):
    from cli.main import app

    ds = tmp_path / "c.lance"
    shutil.copytree(coco_store.uri, ds)
    pipe = tmp_path / "p.yaml"
    nograph = tmp_path / "nograph"
    pipe.write_text(yaml.safe_dump({"dataset": str(ds), "steps": [{"stage": step, "params": {"graph": str(nograph)}}]}))
    res = CliRunner().invoke(app, ["run", str(pipe)], env=WIDE)
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"error: no concept graph at {nograph}; build one with `curate graph build" in out, out[-800:]
    assert "bug in zcurate" not in out and "Traceback" not in out
    from curation.errors import UserError
    from pipelines.graph import GraphError

    assert issubclass(GraphError, UserError) and issubclass(GraphError, ValueError)  # old handlers still catch it
