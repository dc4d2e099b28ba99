"""The stage runner (commit, skip, overwrite, resume), `curate run` with typed configs, a real Ray cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from ray import cloudpickle

from curation.config import ConfigError
from curation.runner import run_stage
from curation.store import Store
from pipelines.basic_stages import CaptionStatsStage
from tests.curation import toy_plugin
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
cloudpickle.register_pickle_by_value(toy_plugin)


def _wait_all_cpus_free(timeout_s: float = 30.0) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while (free := ray.available_resources().get("CPU", 0.0)) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"only {free} of {ray.cluster_resources()['CPU']} CPUs free: a job left actors behind"
        time.sleep(0.2)


def _copy(store, tmp_path, name="c.lance"):
    dst = tmp_path / name
    shutil.copytree(store.uri, dst, ignore=shutil.ignore_patterns("_curation"))
    return Store(dst)


def test_stage_commit_skip_overwrite(coco_store, tmp_path, ray_session):
    store = _copy(coco_store, tmp_path)
    v0 = store.open().version
    r = run_stage(store, CaptionStatsStage(), show_progress=False)
    assert r.status == "committed" and r.version == v0 + 1 and r.fragments == 4 and r.stats.rows == 80
    t = store.to_arrow(columns=["captions", "caption_count", "caption_chars", "caption_lang"]).to_pylist()
    for row in t:
        assert row["caption_count"] == len(row["captions"]) >= 5
        assert row["caption_chars"] == max(len(c["text"]) for c in row["captions"])
        assert row["caption_lang"] == "en"
    assert Path(r.stats_path).exists()
    assert run_stage(store, CaptionStatsStage(), show_progress=False).status == "skipped"
    r3 = run_stage(store, CaptionStatsStage(), overwrite=True, show_progress=False)
    assert r3.status == "committed" and store.open().count_rows() == 80
    assert store.diff(r.version, r3.version)["values_changed"] == {}


def test_stage_resumes_after_failure_with_same_values(coco_store, tmp_path, ray_session):
    store = _copy(coco_store, tmp_path)
    marker = tmp_path / "fail"
    marker.write_text("1")
    frag_ids = [sorted(f.to_table(columns=["id"]).column("id").to_pylist())[0] for f in store.open().get_fragments()]
    Path(f"{marker}.{frag_ids[2]}").write_text("1")  # the third fragment fails
    stage = toy_plugin.ShoutStage({"fail_marker": str(marker)})
    with pytest.raises(Exception, match="injected failure") as failed:
        run_stage(store, stage, show_progress=False, concurrency=1)
    assert "toy_shout" not in store.open().schema.names  # nothing half-committed
    # the failed job's actors are gone although its traceback (``failed``) is still alive: a
    # leaked actor pool would hold CPUs that later jobs (a training placement group) wait for
    _wait_all_cpus_free()
    del failed
    marker.unlink()
    r = run_stage(store, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False)
    assert r.status == "committed" and 1 <= r.fragments_resumed <= 3
    clean = _copy(coco_store, tmp_path, "clean.lance")
    run_stage(clean, toy_plugin.ShoutStage({"fail_marker": str(marker)}), show_progress=False)
    assert store.to_arrow(columns=["id", "toy_shout"]).to_pylist() == clean.to_arrow(columns=["id", "toy_shout"]).to_pylist()
    assert r.stats.counters["shouted"] == 80


def test_changed_config_recomputes_unchanged_skips(coco_store, tmp_path, ray_session):
    store = _copy(coco_store, tmp_path)
    assert run_stage(store, toy_plugin.ShoutStage({"suffix": "!"}), show_progress=False).status == "committed"
    assert run_stage(store, toy_plugin.ShoutStage({"suffix": "!"}), show_progress=False).status == "skipped"
    r = run_stage(store, toy_plugin.ShoutStage({"suffix": "?"}), show_progress=False)
    assert r.status == "committed"
    vals = store.to_arrow(columns=["toy_shout"]).column("toy_shout").to_pylist()
    assert len(vals) == 80 and all(v.endswith("?") for v in vals)
    assert run_stage(store, toy_plugin.ShoutStage({"suffix": "?"}), show_progress=False).status == "skipped"


def _pipeline(tmp_path, coco_dir, params_extra=None):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, src / p.name)
        (src / (p.stem + ".txt")).write_text(f"photo {p.stem}")
    cfg = {
        "dataset": str(tmp_path / "p.lance"),
        "plugins": ["tests.curation.toy_plugin"],
        "steps": [
            {"stage": "ingest", "params": {"source": [str(src)], "shard_size": 3}},
            {"stage": "caption_stats"},
            {"stage": "toy_shout", "params": {"suffix": "?!", **(params_extra or {})}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_curate_run_two_stage_pipeline(tmp_path, coco_dir, ray_session):
    from pipelines.pipeline import run_pipeline

    results = run_pipeline(_pipeline(tmp_path, coco_dir), show_progress=False)
    assert [r.stage for r in results] == ["ingest", "caption_stats", "toy_shout"]
    t = Store(tmp_path / "p.lance").to_arrow(columns=["captions", "toy_shout", "caption_count"]).to_pylist()
    assert len(t) == 6
    assert all(r["toy_shout"] == r["captions"][0]["text"].upper() + "?!" and r["caption_count"] == 1 for r in t)
    report = sorted((tmp_path / "p.lance" / "_curation" / "reports").glob("pipeline-v*.html"))[-1].read_text()
    assert "toy_shout" in report and "shouted = 6" in report and "data:image/png;base64," in report
    # a second run finds everything done and changes nothing
    again = run_pipeline(_pipeline(tmp_path, coco_dir), show_progress=False)
    assert [r.status for r in again[1:]] == ["skipped", "skipped"]


def test_bad_configs_name_the_field(tmp_path, coco_dir):
    from curation.config import load_pipeline

    with pytest.raises(ConfigError, match=r"steps\[2\]\.params\.sufix: unknown field") as e:
        load_pipeline(_pipeline(tmp_path, coco_dir, {"sufix": "x"}))
    assert "did you mean 'suffix'?" in str(e.value) and "`curate stages toy_shout`" in str(e.value)
    bad = yaml.safe_load(_pipeline(tmp_path, coco_dir).read_text())
    bad["steps"][0]["params"]["shard_size"] = "many"
    bad["steps"].append({"stage": "no_such_step"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        load_pipeline(tmp_path / "bad.yaml")
    msg = str(e.value)
    assert "steps[0].params.shard_size" in msg and "'many'" in msg
    assert "steps[3].stage: unknown step 'no_such_step'; allowed:" in msg and "caption_stats" in msg
    nested = yaml.safe_load(_pipeline(tmp_path, coco_dir).read_text())
    nested["steps"] = [
        {"stage": "dedup", "params": {"near": {"kk": 4}}},
        {"stage": "export", "params": {"out": "o", "rules": [{"name": "a", "where": "x", "optinal": True}]}},
    ]
    (tmp_path / "nested.yaml").write_text(yaml.safe_dump(nested))
    with pytest.raises(ConfigError) as e:
        load_pipeline(tmp_path / "nested.yaml")
    msg = str(e.value)
    assert "steps[0].params.near.kk: unknown field (did you mean 'k'?); allowed: k, min_candidate_sim," in msg
    assert "steps[1].params.rules[0].optinal: unknown field (did you mean 'optional'?); allowed: name, where, optional" in msg
    (tmp_path / "nodata.yaml").write_text("steps: []\n")
    with pytest.raises(ConfigError, match="dataset: required field is missing"):
        load_pipeline(tmp_path / "nodata.yaml")
    both = yaml.safe_load(_pipeline(tmp_path, coco_dir, {"sufix": "x"}).read_text())
    both["ray"] = {"num_cpu": 2}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    with pytest.raises(ConfigError) as e:  # a bad top-level field and a bad step: both in one round
        load_pipeline(tmp_path / "both.yaml")
    msg = str(e.value)
    assert "ray.num_cpu: unknown field (did you mean 'num_cpus'?)" in msg and "steps[2].params.sufix: unknown field" in msg


def test_stage_on_a_ray_cluster_started_by_the_test(coco_store, tmp_path):
    """`ray start --head` as a separate cluster; the CLI joins it by --address and runs a stage."""
    store = _copy(coco_store, tmp_path)
    port = free_port("127.0.0.2")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.2",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            "--memory=2000000000",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out = None
        for _ in range(3):  # the head takes a few seconds to accept drivers
            time.sleep(4)
            out = subprocess.run(
                [sys.executable, "-m", "curation.cli", "stage", "caption_stats", "--dataset", store.uri, "--address", f"127.0.0.2:{port}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "committed" in out.stdout + out.stderr
        assert min(store.to_arrow(columns=["caption_count"]).column("caption_count").to_pylist()) >= 5
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_workers_report_rows_as_they_go_and_the_bar_follows(coco_store, tmp_path, ray_session):
    """The progress of a stage moves in rows as each batch is done (a bar in fragments moves in 4
    big steps here, and in 1 on a one-fragment dataset), and a resumed run starts from the rows
    already done."""
    import threading

    import ray
    from rich.progress import Progress

    from curation.runner import RowProgress, _FragmentWorker

    store = _copy(coco_store, tmp_path)
    stage = toy_plugin.ShoutStage()
    stage.batch_size = 8
    ds = store.open()
    rows = RowProgress(total=ds.count_rows() + 20, start=20)
    worker = _FragmentWorker(store, stage, ds.version, progress=rows.counter)
    with Progress(disable=True) as progress:
        task = progress.add_task("toy", total=rows.total, completed=rows.start)
        stop = threading.Event()
        follower = threading.Thread(target=rows.follow, args=(progress, task, stop))
        follower.start()
        for frag in ds.get_fragments():
            worker(pa.table({"fragment_id": [frag.fragment_id]}))
        deadline = time.time() + 10
        while progress.tasks[0].completed < rows.total and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        follower.join()
        assert progress.tasks[0].completed == rows.total == 100
    assert ray.get(rows.counter.value.remote()) == 80  # every row once (Lance's schema probe not counted)
