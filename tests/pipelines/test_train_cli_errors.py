"""`curate train` when things go wrong or there is nothing to do: Ctrl+C, bad shards, a run folder of
another kind, a finished run, a bad command-line value. Real Ray Train, the tiny model, real Lance
shards of COCO photos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import coco_rows, interruptible_cli, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {
    "tiny_encoders": True,
    "log_every": 1,
    "ckpt_every": 1,
    "sample_count": 1,
    "sample_every": 0,
    "sample_steps": 1,
    "loader": {"token_budget": 1200},
    "loader_workers": 0,
    "num_workers": 1,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, coco_dir) -> str:
    """8 COCO photos as 256 px training shards (one fragment)."""
    return write_shards(coco_rows(coco_dir, limit=8), tmp_path_factory.mktemp("train-errors") / "shards.lance")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    return path


def _invoke(*args: str):
    """``curate train ARGS`` in this process; ``res.text`` is its output unwrapped (rich wraps at 80 columns)."""
    from cli.main import app

    res = CliRunner().invoke(app, ["train", *args])
    res.text = " ".join(res.output.split())
    return res


def _no_ray(monkeypatch) -> None:
    """Make starting Ray fail the test: what is checked here must be checked before it."""

    def boom(*_a, **_k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("cli.train.start_ray", boom)


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _interrupt_after_first_step(cmd: list[str], out: Path) -> tuple[int, str, float]:
    """Run ``cmd`` (``python -m cli train ...``), send SIGINT to the command (not its Ray workers)
    once a step's metrics line is printed and its checkpoint published; (rc, output, seconds to exit)."""
    proc = interruptible_cli(cmd, ROOT, {"COLUMNS": "250"}, stderr=subprocess.STDOUT)  # rich wraps at 80 columns in a pipe
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "step 1/" in line:
                break
        deadline = time.time() + 120
        while not (out / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "".join(lines)
        t0 = time.time()
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        return proc.returncode, "".join(lines) + rest, time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_stops_the_run_and_a_rerun_resumes(tmp_path, shards, config, ray_session, monkeypatch):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cli", "train", "--shards", shards, "--model", "tiny", "--config", str(config)]
    rc, output, took = _interrupt_after_first_step([*cmd, "--steps", "100000", "--out", str(out)], out)
    # the step lines carry the time taken and an ETA (audit #12)
    first = next(x for x in output.splitlines() if x.startswith("step 1/100000"))
    assert " elapsed " in first and " eta " in first, first
    # stopped within seconds, not after the 99,999 steps left (about 0.3 s each); 130 like any Ctrl+C
    assert rc == 130 and took < 30, (rc, took, output)
    assert "interrupted" in output and "is kept: re-run to resume" in output, output
    kept = (out / "checkpoints" / "latest").read_text()
    seen = _steps(out)
    time.sleep(3)  # the workers are gone: nothing trains on after the command exits
    assert _steps(out) == seen and (out / "checkpoints" / "latest").read_text() == kept
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*"))[-1] == kept

    # the same command again resumes from the kept checkpoint: the next step only
    k = int(kept.removeprefix("step_"))
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(config), "--steps", str(k + 1), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"step {k + 1}/{k + 1} loss" in res.output and "trained" in res.output
    assert _steps(out)[len(seen) :] == [k + 1]  # not 1, 2, ...: resumed, not restarted

    # once more: already at that step, so nothing to train, said at once and without Ray (#12)
    _no_ray(monkeypatch)
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(config), "--steps", str(k + 1), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"already at step {k + 1} in {out}; nothing to train" in res.text and "trained to" not in res.text

    # a LoRA run into this full fine-tune's folder: one line before Ray starts, not a worker's traceback (#4)
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(config), "--steps", str(k + 2), "--out", str(out), "--lora", "4")
    assert res.exit_code == 2, res.output
    assert f"{out} holds a full fine-tune checkpoint" in res.text and "use another --out" in res.text
    assert "WorkerGroupError" not in res.text and "bug" not in res.text

    # another model size into this folder: one line naming what differs, before Ray (it was a
    # worker's load_state_dict traceback, "a bug in zcurate", after a minute)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**PARAMS, "model_overrides": {"n_layers": 3}}))
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(other), "--steps", str(k + 2), "--out", str(out))
    assert res.exit_code == 2, res.output
    assert f"{out} holds a checkpoint (step_{k + 1:08d}) of another model than --model tiny" in res.text, res.text
    assert "not in the checkpoint: layers.2." in res.text and "bug" not in res.text

    # no VAE for shards of images: said before Ray, with the fixes; --tiny-encoders is one of them
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({k: v for k, v in PARAMS.items() if k != "tiny_encoders"}))
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(bare), "--steps", str(k + 1), "--out", str(out))
    assert res.exit_code == 2 and "no VAE is configured to encode them: set vae_path" in res.text and "--tiny-encoders" in res.text
    res = _invoke("--shards", shards, "--model", "tiny", "--config", str(bare), "--steps", str(k + 1), "--out", str(out), "--tiny-encoders")
    assert res.exit_code == 0 and f"already at step {k + 1}" in res.text, res.output


def test_corrupted_shard_names_the_fragment_not_a_bug(tmp_path, shards, config, ray_session):
    """A damaged data file fails in the worker; the command shows the worker's message (#4)."""
    bad = tmp_path / "bad.lance"
    shutil.copytree(shards, bad)
    data = sorted((bad / "data").glob("*.lance"))[0]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    res = _invoke("--shards", str(bad), "--model", "tiny", "--config", str(config), "--steps", "2", "--out", str(tmp_path / "run"))
    assert res.exit_code == 2, res.output
    text = res.text
    assert f"shard fragment 0 (data/{data.name}) of {bad} is unreadable" in text, text
    assert "WorkerGroupError" not in text and "bug in zcurate" not in text and ".rs:" not in text


def test_empty_shards_are_refused_before_ray(tmp_path, shards, config, monkeypatch):
    empty = tmp_path / "empty.lance"
    lance.write_dataset(lance.dataset(shards).to_table().slice(0, 0), str(empty))
    _no_ray(monkeypatch)
    res = _invoke("--shards", str(empty), "--model", "tiny", "--config", str(config), "--steps", "2", "--out", str(tmp_path / "run"))
    assert res.exit_code == 2, res.output
    assert f"{empty} holds 0 rows: nothing to train on" in res.text, res.output


def test_a_folder_that_is_not_lance_gets_the_friendly_line(tmp_path, config, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    _no_ray(monkeypatch)
    res = _invoke("--shards", str(folder), "--config", str(config), "--steps", "2", "--out", str(tmp_path / "run"))
    assert res.exit_code == 2, res.output
    text = res.text
    assert f"{folder} is not a training shard dataset written by `curate export`: not a Lance dataset" in text, text
    assert ".rs:" not in text and "was not found" not in text


def test_a_bad_command_line_value_is_not_blamed_on_the_config_file(tmp_path, shards, config, monkeypatch):
    """The ConfigError (a UserError) is printed as one line, exit 2."""
    _no_ray(monkeypatch)
    res = _invoke("--shards", shards, "--pairs", shards, "--edit-ratio", "1.5", "--config", str(config))
    msg = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert msg.startswith("error: invalid config in command line:") and "edit_ratio" in msg and str(config) not in msg, msg
    # the same value from the file is the file's
    config.write_text(yaml.safe_dump({**PARAMS, "edit_ratio": 1.5}))
    res = _invoke("--shards", shards, "--pairs", shards, "--config", str(config))
    msg = " ".join(res.output.split())
    assert res.exit_code == 2 and msg.startswith(f"error: invalid config in {config}:"), msg
