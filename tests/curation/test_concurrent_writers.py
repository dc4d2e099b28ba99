"""Concurrent writers on one dataset (issue #21, "nothing lost, nothing leaked"): real processes
(the ``curate`` CLI, or ``python -c`` calling the store), and every row of the final version counted.

- two creators at once: one creates, the others append; every row is there exactly once
- the same rows (same source) from two jobs at once: stored once (the ingest ``skip_existing`` rule)
- the same stage twice at once: the second joins (waits, then finds the columns: skipped), or refuses
  clearly when asked; a lock whose holder died (kill -9) is free again
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from curation.runner import StageRunningError, _stage_lock_name, run_stage
from curation.schema import sample_id
from curation.store import DatasetBusyError, Store
from pipelines.basic_stages import CaptionStatsStage
from tests.images import encode, photo

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "LANCE_LOG": "error", "PYTHONPATH": str(ROOT)}


def _curate(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process; their outputs (all must exit 0, with no traceback)."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out, out[-4000:]
    return outs


def _ids(store: Store) -> list[str]:
    return store.to_arrow(columns=["id"]).column("id").to_pylist()


def _folder(path: Path, seeds: range, extra: dict[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True)
    for s in seeds:
        (path / f"img{s:03d}.png").write_bytes(encode(photo(s, (48, 32))))
    for name, data in (extra or {}).items():
        (path / name).write_bytes(data)
    return path


# --- creation and appends: Store.commit_rows from several processes at once --------------------

_WRITER = """
import sys, time, pyarrow as pa
from pathlib import Path
from lance.fragment import write_fragments
from curation.store import IdsAddedMeanwhile, Store
uri, tag, prefix, n, barrier, parties = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6])
sch = pa.schema([("id", pa.string()), ("x", pa.int64())])
frags = write_fragments(pa.table({"id": [f"{prefix}-{i}" for i in range(n)], "x": list(range(n))}, schema=sch), uri, schema=sch)
(barrier / tag).touch()
while len(list(barrier.iterdir())) < parties:  # all have written: now all commit at once, none saw a dataset
    time.sleep(0.01)
try:
    print("version", Store(uri).commit_rows(frags, None, sch).version)
except IdsAddedMeanwhile as e:
    print("overlap", e.count)
"""


def _writers(uri: str, prefixes: list[str], n: int, barrier: Path) -> list[str]:
    """One process per prefix writes n rows ``<prefix>-<i>``; all commit at once (read version: none)."""
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, uri, f"w{k}", prefix, str(n), str(barrier), str(len(prefixes))],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k, prefix in enumerate(prefixes)
    ]
    return [out.strip().splitlines()[-1] for out in _finish(procs, timeout=120)]


def test_creators_at_once_all_rows_land_exactly_once(tmp_path):
    """Four processes that all found no dataset commit at once: one creates, three append."""
    uri = str(tmp_path / "x.lance")
    outs = _writers(uri, ["a", "b", "c", "d"], 10, tmp_path / "barrier")
    ids = _ids(Store(uri))
    assert len(ids) == 40 and set(ids) == {f"{t}-{i}" for t in "abcd" for i in range(10)}, outs
    versions = sorted(int(o.split()[-1]) for o in outs)
    assert versions == [1, 2, 3, 4]  # one creation, then an append each: no version overwrote another


def test_same_rows_from_two_jobs_at_once_are_stored_once(tmp_path):
    """Two jobs with the same ids (the same source) both found no dataset: the second is told
    (IdsAddedMeanwhile, so ingest reads again against the new version) instead of appending twice."""
    uri = str(tmp_path / "x.lance")
    outs = _writers(uri, ["s", "s"], 10, tmp_path / "barrier")
    assert sorted(o.split()[0] for o in outs) == ["overlap", "version"], outs
    assert "overlap 10" in outs
    assert sorted(_ids(Store(uri))) == sorted(f"s-{i}" for i in range(10))


# --- the CLI: two ingests into one new dataset ----------------------------------------------


def test_two_cli_ingests_create_one_dataset_with_every_row(tmp_path):
    """The repro of issue #21: `curate ingest A -d X & curate ingest B -d X`. Every row of both
    folders is in the final version once, and exact_dup saw both (one byte copy across folders)."""
    a = _folder(tmp_path / "a", range(0, 12))
    b = _folder(tmp_path / "b", range(12, 24), {"copy_of_a0.png": (a / "img000.png").read_bytes()})
    uri = str(tmp_path / "x.lance")
    _finish([_curate("ingest", str(a), "--dataset", uri), _curate("ingest", str(b), "--dataset", uri)])
    store = Store(uri)
    expected = {sample_id(str(d.resolve()), p.name) for d in (a, b) for p in d.iterdir()}
    ids = _ids(store)
    assert len(ids) == 25 and set(ids) == expected
    dups = store.to_arrow(columns=["id", "exact_dup_of"], filter="exact_dup_of IS NOT NULL").to_pylist()
    pair = {sample_id(str(a.resolve()), "img000.png"), sample_id(str(b.resolve()), "copy_of_a0.png")}
    assert len(dups) == 1 and {dups[0]["id"], dups[0]["exact_dup_of"]} == pair


def test_two_cli_ingests_of_one_folder_store_it_once(tmp_path):
    """The same folder ingested twice at once: same ids, so (skip_existing) each row is stored once."""
    a = _folder(tmp_path / "a", range(0, 12))
    uri = str(tmp_path / "x.lance")
    _finish([_curate("ingest", str(a), "--dataset", uri), _curate("ingest", str(a), "--dataset", uri)])
    ids = _ids(Store(uri))
    assert sorted(ids) == sorted(sample_id(str(a.resolve()), p.name) for p in a.iterdir())


# --- the same stage twice ---------------------------------------------------------------------


def _copy(store: Store, dst: Path) -> Store:
    shutil.copytree(store.uri, dst)
    return Store(str(dst))


def test_same_stage_twice_at_once_second_joins(coco_store, tmp_path):
    """Two `curate run` of one slow stage: the second waits for the first (its message names the
    first's pid), then finds the columns committed. Dataset identical to a single run's."""
    store = _copy(coco_store, tmp_path / "s.lance")
    pipe = tmp_path / "slow.yaml"
    params = {"sleep_s": 1.5, "num_cpus": 2}  # one worker: four fragments one after another, ~24 s
    pipe.write_text(
        yaml.safe_dump({"dataset": store.uri, "plugins": ["tests.cluster.slow_plugin"], "steps": [{"stage": "toy_slow", "params": params}]})
    )
    first = _curate("run", str(pipe))
    locks = store.state_dir / "locks"
    deadline = time.monotonic() + 180
    # start the second as soon as the first holds the stage's lock (its pid in the lock file), not
    # after its first checkpoint: a second that started later, on a machine loaded by other jobs,
    # once found the first done already (nothing to wait for)
    while not any(f'"pid": {first.pid},' in f.read_text() for f in locks.glob("stage-toy_slow-*.lock")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    second = _curate("run", str(pipe))
    out1, out2 = _finish([first, second])
    assert "committed" in out1
    flat2 = " ".join(out2.split())  # rich wraps long lines
    assert f"stage toy_slow is already running on this dataset (pid {first.pid}," in flat2
    assert "already present" in flat2  # joined: nothing recomputed, nothing committed twice
    t = store.to_arrow(columns=["id", "toy_slow"])
    assert t.num_rows == 80 and t.column("toy_slow").null_count == 0
    assert [v["metadata"].get("total_rows") for v in store.versions()][-1] == "80"


def test_same_stage_refuses_when_asked_not_to_wait(coco_store, tmp_path):
    """``wait_if_running=False``: a clear error naming the holder, before any work or commit."""
    store = _copy(coco_store, tmp_path / "r.lance")
    stage = CaptionStatsStage()
    with store.lock(_stage_lock_name(stage)):
        with pytest.raises(StageRunningError) as e:
            run_stage(store, stage, wait_if_running=False, show_progress=False)
    msg = str(e.value)
    assert msg.startswith(f"stage caption_stats is already running on this dataset (pid {os.getpid()}, host ")
    assert "since " in msg and "wait for it to finish" in msg
    assert store.open().version == 1 and "caption_count" not in store.open().schema.names


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    """kill -9 of the holder frees the lock (the kernel drops a dead process's flock): the next job
    takes it at once, and its record replaces the dead one's."""
    store = Store(str(tmp_path / "k.lance"))
    code = "import sys, time; from curation.store import Store\nwith Store(sys.argv[1]).lock('stage-x'):\n    print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, store.uri], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatasetBusyError, match=f"pid {holder.pid}, host "):
            with store.lock("stage-x", wait=False):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with store.lock("stage-x", wait=False) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_commit_rows_appends_on_a_stage_commit_made_meanwhile(tmp_path):
    """An append whose read version is stale (a stage added columns since) still lands."""
    uri = str(tmp_path / "m.lance")
    sch = pa.schema([("id", pa.string()), ("x", pa.int64())])
    store = Store(uri)
    store.create(pa.table({"id": ["a"], "x": [1]}, schema=sch), schema=sch)
    from lance.fragment import write_fragments

    frags = write_fragments(pa.table({"id": ["b"], "x": [2]}, schema=sch), uri, schema=sch)
    store.open().add_columns({"y": "x * 2"})  # v2, after our read of v1
    new = store.commit_rows(frags, 1, sch)
    assert new.version == 3 and sorted(_ids(store)) == ["a", "b"]


def test_ingest_reads_again_when_its_rows_landed_meanwhile(tmp_path, ray_session, monkeypatch):
    """Both ingests of one folder read before either committed: the one that commits second finds
    its ids landed meanwhile, reads again against the new version, and adds nothing twice."""
    from pipelines.ingest import IngestConfig, ingest

    a = _folder(tmp_path / "a", range(0, 6))
    store = Store(str(tmp_path / "x.lance"))
    commit_rows = Store.commit_rows
    other_job_done: list[int] = []

    def racing(self, fragments, read_version, *args, **kw):
        if not other_job_done:  # "the other job": the same rows commit just before ours
            other_job_done.append(commit_rows(self, fragments, read_version, *args, **kw).version)
        return commit_rows(self, fragments, read_version, *args, **kw)

    monkeypatch.setattr(Store, "commit_rows", racing)
    results = ingest(store, IngestConfig(source=[str(a)], flag_exact_duplicates=False), show_progress=False)
    assert other_job_done == [1] and results[0].status == "skipped"
    assert results[0].stats.counters["skipped_existing"] == 6
    assert sorted(_ids(store)) == sorted(sample_id(str(a.resolve()), p.name) for p in a.iterdir())
