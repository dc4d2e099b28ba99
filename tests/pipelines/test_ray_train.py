"""`curate train` and the pipeline step on the session's Ray: Ray Train, 1 CPU worker, real shards."""

from __future__ import annotations

import json

import lance
import pytest
import yaml
from typer.testing import CliRunner

from curation.config import RunContext, validate
from curation.registry import STEPS
from pipelines import load_jobs
from pipelines.export import ExportConfig, resolve_roles, shard_rows
from tests.helpers import coco_rows, samples_table
from training.model import load_safetensors, tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


def test_curate_train_then_the_step_resumes(tmp_path, ray_session, coco_dir):
    # 8 real COCO photos exported as 256-resolution training shards (export's pure row function)
    src = samples_table(coco_rows(coco_dir, limit=8))
    ecfg = ExportConfig(out=str(tmp_path / "shards.lance"), resolution=256)
    table, excluded = shard_rows(src, ecfg, resolve_roles(src.schema, ecfg))
    assert not excluded
    lance.write_dataset(table, ecfg.out)
    params = {
        "tiny_encoders": True,
        "log_every": 1,
        "ckpt_every": 2,
        "sample_count": 1,
        "sample_steps": 2,
        "loader": {"token_budget": 1200},
        "loader_workers": 0,
        "num_workers": 1,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "run"

    from cli.main import app

    res = CliRunner().invoke(
        app, ["train", "--shards", ecfg.out, "--model", "tiny", "--config", str(tmp_path / "train.yaml"), "--steps", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "step 2/2 loss" in res.output and "trained" in res.output
    assert (out / "checkpoints" / "latest").read_text() == "step_00000002"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert 0 <= lines[0]["padded_token_fraction"] < 0.2  # the loader's sequence-length batching

    # the registered pipeline step, same run folder, one more step: resumes from step 2
    load_jobs()
    cfg = validate(STEPS["train"].config_model, {**params, "shards": ecfg.out, "model": "tiny", "steps": 3, "out_dir": str(out)})
    result = STEPS["train"].run(RunContext(store=None, show_progress=False), cfg)
    assert result["metrics"]["step"] == 3 and result["checkpoint"].endswith("step_00000003")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    model = load_safetensors(out / "checkpoints" / "step_00000003" / "model.safetensors", tiny())
    assert model.all_final_layer["2-1"].linear.weight.abs().sum() > 0
    assert (out / "samples" / "step_00000003.png").exists()


def test_curate_train_rejects_missing_shards(tmp_path, ray_session):
    from cli.main import app

    res = CliRunner().invoke(app, ["train", "--shards", str(tmp_path / "nope.lance"), "--steps", "1"])
    assert res.exit_code == 2 and "curate export" in res.output
