"""Faults: a killed Ray worker, a killed driver, two jobs committing at once. Each ends with committed
columns whose content hash equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from ray import cloudpickle

from curation.runner import run_stage
from tests.cluster import slow_plugin
from tests.cluster.conftest import ROOT, column_hash, copy_store

cloudpickle.register_pickle_by_value(slow_plugin)


@pytest.fixture(scope="module")
def reference(coco_store, tmp_path_factory, ray_session):
    """Hashes of an uninterrupted run of the slow stage (two output names: toy_slow, toy_b)."""
    store = copy_store(coco_store, tmp_path_factory.mktemp("ref") / "ref.lance")
    for col in ("toy_slow", "toy_b"):
        assert run_stage(store, slow_plugin.SlowStage(column=col, sleep_s=0.0), show_progress=False).status == "committed"
    return {col: column_hash(store, [col]) for col in ("toy_slow", "toy_b")}


def _wait_for(cond, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return v


def _slow_pipeline(tmp_path, store, cluster, **params) -> list[str]:
    """`curate run` of the slow stage on the cluster's worker node (one slot: fragments run one
    after another, so a kill lands mid-stage with some fragments done and some not)."""
    pipe = tmp_path / "slow.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "dataset": store.uri,
                "plugins": ["tests.cluster.slow_plugin"],
                "steps": [{"stage": "toy_slow", "params": {"num_cpus": 1, "resources": {"worker_node": 1}, **params}}],
            }
        )
    )
    return [sys.executable, "-m", "cli", "run", str(pipe), "--address", cluster.address]


def test_killed_worker_is_retried_and_result_is_identical(ray_cluster, coco_store, tmp_path, reference):
    from ray.util.state import list_tasks

    store = copy_store(coco_store, tmp_path / "w.lance")
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = _slow_pipeline(tmp_path, store, ray_cluster, sleep_s=0.3, pid_dir=str(pids))
    driver = subprocess.Popen(
        cmd, cwd=ROOT, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        # the process computing the stage's unit, found through the state API once it computes its
        # first batch: SIGKILL it
        _wait_for(lambda: list(pids.iterdir()), "the stage's worker to start")
        running = [("name", "=", "_FragmentWorker.run"), ("state", "=", "RUNNING")]  # the state API follows within a second or so
        victims = _wait_for(
            lambda: [t.worker_pid for t in list_tasks(address=ray_cluster.dashboard, filters=running, raise_on_missing_output=False)],
            "the unit's task in the state API",
            timeout=30,
        )
        assert len(victims) == 1 and (pids / str(victims[0])).exists(), (victims, list(pids.iterdir()))
        os.kill(victims[0], signal.SIGKILL)
        out, _ = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, out[-3000:]
    assert "committed" in out
    assert {p.name for p in pids.iterdir()} - {str(victims[0])}, "no replacement worker computed anything"
    assert column_hash(store, ["toy_slow"]) == reference["toy_slow"]


def test_killed_driver_resumes_from_checkpoints(ray_cluster, coco_store, tmp_path, reference):
    store = copy_store(coco_store, tmp_path / "d.lance")
    cmd = _slow_pipeline(tmp_path, store, ray_cluster, sleep_s=0.4)
    driver = subprocess.Popen(
        cmd, cwd=ROOT, env=ray_cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    ckpts = store.state_dir / "checkpoints"
    try:
        _wait_for(lambda: list(ckpts.glob("toy_slow-*/unit-*.json")) or driver.poll() is not None, "a fragment checkpoint")
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    n_done = len(list(ckpts.glob("toy_slow-*/unit-*.json")))
    assert 1 <= n_done < 4 and "toy_slow" not in store.open().schema.names  # nothing half-committed
    out = subprocess.run(cmd, cwd=ROOT, env=ray_cluster.env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"resuming, {n_done} of 4 fragments already computed" in out.stderr
    assert column_hash(store, ["toy_slow"]) == reference["toy_slow"]


def test_two_jobs_adding_columns_at_once_both_commit(coco_store, tmp_path, ray_session, reference):
    store = copy_store(coco_store, tmp_path / "c.lance")
    barrier = threading.Barrier(2)  # both read the same version: the second commit must conflict and retry
    results: dict = {}

    def job(col: str) -> None:
        stage = slow_plugin.SlowStage(column=col, sleep_s=0.05)
        stage._barrier = barrier
        results[col] = run_stage(store, stage, concurrency=1, show_progress=False)

    threads = [threading.Thread(target=job, args=(c,)) for c in ("toy_slow", "toy_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert all(r.status == "committed" for r in results.values()) and len(results) == 2
    first, second = sorted(results.values(), key=lambda r: r.version)
    assert second.read_version == first.version  # the loser recomputed on top of the winner's commit
    assert {"toy_slow", "toy_b"} <= set(store.open().schema.names)
    assert column_hash(store, ["toy_slow"]) == reference["toy_slow"]
    assert column_hash(store, ["toy_b"]) == reference["toy_b"]
