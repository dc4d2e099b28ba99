"""A multi-node Ray cluster on one machine (head + worker node started by `ray start`): a stage whose
resources need the worker node runs there, and `ray job submit` runs a stage as a submitted job.
The dataset lives on a path both nodes see (on a real cluster: a shared filesystem or s3://)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import yaml

from curation.store import Store
from tests.cluster.conftest import ROOT, VENV_BIN, copy_store, unit_task_ids, units_by_node


def test_stage_pinned_to_worker_node(ray_cluster, coco_store, tmp_path):
    store = copy_store(coco_store, tmp_path / "shared.lance")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "dataset": store.uri,
                "plugins": ["tests.cluster.slow_plugin"],
                "steps": [{"stage": "toy_slow", "params": {"sleep_s": 0.0, "num_cpus": 1, "resources": {"worker_node": 1}}}],
            }
        )
    )
    before = unit_task_ids(ray_cluster)
    out = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(pipe), "--address", ray_cluster.address],
        cwd=ROOT,
        env=ray_cluster.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert store.open().count_rows(filter="toy_slow IS NOT NULL") == 80
    # every worker of the stage ran on the node that has the resource, none on the head
    placed = units_by_node(ray_cluster, "_FragmentWorker", before)
    assert placed and set(placed) == {"127.0.0.3"}, placed


def _submit(
    cluster, runtime_env: dict, entrypoint: list[str], *, extra: list[str] = (), timeout: float = 300
) -> subprocess.CompletedProcess:
    """`ray job submit` with the repository as working dir; the head's job agent needs a few
    seconds after the cluster is up, so "no available agent" is retried."""
    cmd = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(runtime_env),
        *extra,
        "--",
        *entrypoint,
    ]
    deadline = time.monotonic() + 90
    while True:
        out = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout)
        if "No available agent" not in out.stderr + out.stdout or time.monotonic() > deadline:
            return out
        time.sleep(3)


def test_ray_job_submit_runs_the_pipeline_on_s3(ray_cluster, s3_env, coco_dir, tmp_path, monkeypatch):
    """The pipeline file as a submitted job: code from the working dir, S3 settings from the
    runtime env (this test process has none of them), data in a bucket both nodes reach."""
    env, client = s3_env
    client.create_bucket(Bucket="cluster-jobs")
    uri = "s3://cluster-jobs/photos.lance"
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, src / p.name)
        (src / f"{p.stem}.txt").write_text(f"photo {p.stem}")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "dataset": uri,
                "plugins": ["tests.cluster.slow_plugin"],
                "steps": [
                    {"stage": "ingest", "params": {"source": [str(src)], "shard_size": 3}},
                    {"stage": "caption_stats"},
                    {"stage": "toy_slow", "params": {"sleep_s": 0.0, "num_cpus": 1, "resources": {"worker_node": 1}}},
                ],
            }
        )
    )
    runtime_env = {"env_vars": {**env, "CURATE_STATE_DIR": str(tmp_path / "state")}}
    out = _submit(ray_cluster, runtime_env, ["python", "-m", "cli", "run", str(pipe)])
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert "pipeline pipe.yaml" in out.stdout  # the job's summary, tailed by `ray job submit`
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    t = Store(uri).to_arrow(columns=["captions", "caption_count", "toy_slow"]).to_pylist()
    assert len(t) == 6 and all(r["caption_count"] == 1 and len(r["toy_slow"]) == 16 for r in t)
