"""The dedup job on the two-node cluster gives the same groups as on the embedded one.

One dataset of real photos and their duplicates (edits and exact copies), copied twice: ``curate
dedup --address`` on one copy, ``curate dedup`` (embedded Ray, in its own temp dir) on the other,
with units small enough that the index, candidate and verification phases each have several, and
``communities_max_edges: 0`` so the communities are found per connected component on Ray too.
The committed ``dup_*`` columns must be identical; on the cluster, the phases are placed by the
config's ``resources`` (index and candidates on the head, verification on the worker node), and
every unit must have run where it was placed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time

import lance
import pytest
import yaml

from curation.store import Store
from tests.cluster.conftest import ROOT, column_hash, copy_store, unit_task_ids, units_by_node

DUP_COLUMNS = ["dup_group", "dup_keep", "dup_of", "dup_reason", "dup_sim"]
ROWS_PER_UNIT = 16  # 128 rows in fragments of 16: eight units per phase for a pool of two actors (one per node)
HEAD, WORKER = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def dup_store(coco_dir, tmp_path_factory) -> Store:
    """128 rows: 64 COCO photos (fragments 0-3), then crop / mirror / quarter-turn edits of the
    first 16 and exact copies of the next 16 (fragments 4-7): every duplicate pair spans two units."""
    from engines.vector.synth import make_variant
    from tests.helpers import coco_rows, sample_row, samples_table

    rows = coco_rows(coco_dir, limit=64)
    for g, r in enumerate(rows[:16]):
        for kind in ("crop", "mirror", "rotate"):
            rows.append(sample_row(make_variant(r["image"], kind, g), "edits", f"{g}-{kind}"))
    for r in list(rows[16:32]):
        rows.append(sample_row(r["image"], "copies", r["source_key"]))
    assert len(rows) == 128
    uri = tmp_path_factory.mktemp("dedup") / "dups.lance"
    lance.write_dataset(samples_table(rows), str(uri), max_rows_per_file=ROWS_PER_UNIT)
    return Store(str(uri))


def _dedup(store: Store, config, env: dict[str, str], address: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli", "dedup", "--dataset", store.uri, "--config", str(config)]
    if address:
        cmd += ["--address", address]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(900)
def test_dedup_on_two_nodes_gives_the_embedded_groups(ray_cluster, dup_store, tmp_path):
    on_cluster = copy_store(dup_store, tmp_path / "cluster.lance")
    embedded = copy_store(dup_store, tmp_path / "embedded.lance")
    settings = {"rows_per_unit": ROWS_PER_UNIT, "communities_max_edges": 0}
    config = tmp_path / "dedup.yaml"
    config.write_text(yaml.safe_dump(settings))
    # on the cluster, each phase placed by the node resources the fixture gives: the index and the
    # candidate search on the head, verification on the worker node (placement only: same groups)
    placed_config = tmp_path / "dedup-placed.yaml"
    pins = {"index": {"head_node": 1}, "candidates": {"head_node": 1}, "verify": {"worker_node": 1}}
    placed_config.write_text(yaml.safe_dump({**settings, "resources": pins}))

    before = unit_task_ids(ray_cluster)
    t0 = time.monotonic()
    out = _dedup(on_cluster, placed_config, ray_cluster.env, ray_cluster.address)
    t_cluster = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # the embedded run: no address, nothing in the environment that points at the cluster, and its
    # own Ray temp dir (short: unix socket paths), so it can only start its own local instance
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="re", dir="/tmp")
    try:
        t0 = time.monotonic()
        out = _dedup(embedded, config, {**env, "RAY_TMPDIR": ray_tmp})
        t_embedded = time.monotonic() - t0
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for store in (on_cluster, embedded):  # both took the per-component path (the job's report notes)
        (report,) = (store.state_dir / "vector").glob("dedup-v*.json")
        notes = json.loads(report.read_text())["notes"]
        assert any("communities per connected component on Ray" in n for n in notes), notes

    # the same committed groups, kept rows, reasons and similarities, row by row
    got = on_cluster.to_arrow(columns=["id", *DUP_COLUMNS]).sort_by("id").to_pylist()
    want = embedded.to_arrow(columns=["id", *DUP_COLUMNS]).sort_by("id").to_pylist()
    assert column_hash(on_cluster, DUP_COLUMNS) == column_hash(embedded, DUP_COLUMNS), [(a, b) for a, b in zip(got, want) if a != b][:10]
    groups = {r["dup_group"] for r in got if r["dup_group"] is not None}
    removed = sum(not r["dup_keep"] for r in got)
    assert groups and removed, got

    # where the cluster run's units ran: every unit of each phase on the node its resources name
    placed = {w: units_by_node(ray_cluster, w, before) for w in ("_FragmentWorker", "_ShardWorker", "_CandidateWorker", "_AcceptWorker")}
    print(f"\n{len(groups)} groups, {removed} rows removed; cluster {t_cluster:.0f} s, embedded {t_embedded:.0f} s; units by node {placed}")
    units = 128 // ROWS_PER_UNIT
    assert placed["_ShardWorker"] == {HEAD: units} and placed["_CandidateWorker"] == {HEAD: units}, placed
    assert placed["_AcceptWorker"] == {WORKER: units}, placed
