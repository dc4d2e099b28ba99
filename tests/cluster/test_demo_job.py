"""The README's main job, pipelines/demo.yaml, submitted with `ray job submit` to the two-node
cluster: every step (ingest -> profile -> dedup -> graph -> resample -> review mine -> export ->
train tiny) runs as one Ray job, code from the working dir, settings from the runtime env, the
data on a path both nodes see.

Only the paths of demo.yaml are rewritten (to a shared folder) and the corpus is a small slice of
`curate demo-data`, so the job stays within a few minutes; the steps and every other parameter
are the real file's, and the test fails if they were changed on the way."""

from __future__ import annotations

import html
import json
import re
import shutil
import uuid

import pytest
import yaml

from curation.store import Store
from tests.cluster.conftest import ROOT
from tests.cluster.test_multinode import _submit

DEMO = ROOT / "pipelines" / "demo.yaml"
N_IMAGES = 40  # of the ~120 the demo corpus has: two ingest shards of 32 (demo.yaml), so two fragments for two nodes


def _rewrite_paths(value, shared):
    """``demo/...`` (the embedded default's relative paths) -> the same name under ``shared``."""
    if isinstance(value, str) and value.startswith("demo/"):
        return str(shared / value.removeprefix("demo/"))
    if isinstance(value, list):
        return [_rewrite_paths(v, shared) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite_paths(v, shared) for k, v in value.items()}
    return value


def _small_corpus(out):
    """The demo corpus (folder layout), cut to the first N_IMAGES samples with their sidecars."""
    from democorpus.corpus import build_corpus, write_corpus

    full = out.parent / "full-corpus"
    write_corpus(build_corpus(0, ("folder",)), full)
    stems = sorted({p.stem for p in (full / "folder").iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp")})
    keep = set(stems[:N_IMAGES])
    (out / "folder").mkdir(parents=True)
    for p in (full / "folder").iterdir():
        if p.name.split(".")[0] in keep:
            shutil.copy(p, out / "folder" / p.name)
    shutil.rmtree(full)
    return len(keep)


def _job_workers_by_node(cluster, submission_id: str) -> dict[str, set[str]]:
    """Node IP -> the unit workers (``execute_units``' tasks, named ``<worker>.run``) that ran
    units of the submitted job (its driver's job id) there."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes, list_tasks

    job_id = JobSubmissionClient(cluster.dashboard).get_job_info(submission_id).driver_info.id
    ips = {n.node_id: n.node_ip for n in list_nodes(address=cluster.dashboard)}
    out: dict[str, set[str]] = {}
    for t in list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job_id)], limit=10_000, raise_on_missing_output=False):
        if t.name.endswith(".run") and t.state == "FINISHED":
            out.setdefault(ips.get(t.node_id, "?"), set()).add(t.name.removesuffix(".run"))
    return out


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every engine on two 1-CPU nodes: minutes, many more when the cores are shared
def test_demo_pipeline_as_a_ray_job_on_two_nodes(ray_cluster, tmp_path):
    shared = tmp_path / "shared"  # on a real cluster: the volume every node mounts (/data)
    n = _small_corpus(shared / "corpus")

    original = yaml.safe_load(DEMO.read_text())
    cfg = _rewrite_paths(original, shared)
    cfg["dataset"] = str(shared / "demo.lance")
    assert [s["stage"] for s in cfg["steps"]] == [s["stage"] for s in original["steps"]]
    for new, old in zip(cfg["steps"], original["steps"]):  # only paths differ from the real file
        changed = {k for k, v in old.get("params", {}).items() if new["params"][k] != v}
        assert all(str(old["params"][k]).lstrip("['").startswith("demo/") for k in changed), (old, new)
    pipe = shared / "demo.yaml"
    pipe.write_text(yaml.safe_dump(cfg, sort_keys=False))

    submission = f"demo-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CURATE_STATE_DIR": str(shared / "state")}}
    out = _submit(ray_cluster, runtime_env, ["python", "-m", "cli", "run", str(pipe)], extra=["--submission-id", submission], timeout=1400)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in out.stdout, log[-6000:]
    assert "pipeline demo.yaml" in out.stdout  # the job's one-screen summary, tailed by `ray job submit`

    # every step ran: the pipeline report lists each with a status, none failed or was left out
    store = Store(shared / "demo.lance")
    reports = sorted((store.state_dir / "reports").glob("pipeline-v*.html"))
    assert reports, "no pipeline report"
    page = reports[-1].read_text()
    steps = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>v\d+</td>", page)
    assert len(steps) == len(cfg["steps"]), steps  # a step reports under its stage's name (resample_weights)
    assert all(name.startswith(s["stage"]) for (name, _), s in zip(steps, cfg["steps"])), steps
    assert all(status in ("committed", "done") for _, status in steps), steps
    assert html.escape(str(store.uri)) in page or str(store.uri) in page

    # ... and left its output where the next step and the operator find it
    ds = store.open()
    cols = set(ds.schema.names)
    assert ds.count_rows() == n
    for group in ("prof_", "dup_", "tag_"):
        assert any(c.startswith(group) for c in cols), (group, sorted(cols))
    assert any("weight" in c for c in cols), sorted(cols)  # resample
    assert (shared / "graph").is_dir() and (shared / "review.db").is_file()
    from curation.reviewdb import ReviewDB

    db = ReviewDB(str(shared / "review.db"))
    try:
        assert db.counters()["items_total"] > 0
    finally:
        db.close()
    assert Store(shared / "shards").open().count_rows() > 0
    metrics = [json.loads(x) for x in (shared / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    want_steps = next(s["params"]["steps"] for s in cfg["steps"] if s["stage"] == "train")
    assert max(m.get("step", 0) for m in metrics) >= want_steps - 1

    # the work was spread: the job's stage workers ran on the head and on the worker node
    placed = _job_workers_by_node(ray_cluster, submission)
    assert {"127.0.0.2", "127.0.0.3"} <= set(placed), placed
