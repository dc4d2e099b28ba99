"""Fixtures for cluster tests: a two-node Ray cluster started with ``ray start`` (shared by the
tests of this package) and a content hash of committed columns. The local S3-compatible server
(``s3_env``) is in ``tests/conftest.py``: the S3 index job tests use it too."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.store import Store
from tests.helpers import free_port  # noqa: F401  (re-exported for the cluster tests)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def copy_store(store: Store, dst: Path) -> Store:
    shutil.copytree(store.uri, dst, ignore=shutil.ignore_patterns("_curation"))
    return Store(dst)


def column_hash(store: Store, columns: list[str]) -> str:
    """sha256 of the given columns, rows ordered by id: equal hashes = identical committed values."""
    t = store.to_arrow(columns=["id", *columns]).sort_by("id")
    return hashlib.sha256(json.dumps(t.to_pylist(), sort_keys=True, default=str).encode()).hexdigest()


def unit_task_ids(cluster) -> set[str]:
    """Ids of the unit tasks (``execute_units``) the cluster has run so far: a test leaves them out
    of its counts (other tests' jobs share the session's cluster)."""
    return {t.task_id for t in _unit_tasks(cluster)}


def units_by_node(cluster, worker: str, before: set[str] = frozenset(), job_id: str | None = None) -> dict[str, int]:
    """Node IP -> units of ``execute_units`` run by ``worker`` (its tasks are named
    ``<worker>.run``, one a unit) that finished, leaving out the tasks in ``before`` and, with
    ``job_id``, other jobs'. Counts work done where it was done."""
    from ray.util.state import list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=cluster.dashboard)}
    out: dict[str, int] = {}
    for t in _unit_tasks(cluster):
        if t.name == f"{worker}.run" and t.state == "FINISHED" and t.task_id not in before and job_id in (None, t.job_id):
            ip = ips.get(t.node_id, "?")
            out[ip] = out.get(ip, 0) + 1
    return out


def _unit_tasks(cluster) -> list:
    from ray.util.state import list_tasks

    tasks = list_tasks(address=cluster.dashboard, filters=[("type", "=", "NORMAL_TASK")], limit=10_000, raise_on_missing_output=False)
    return [t for t in tasks if t.name.endswith(".run")]


def ray_env(**extra: str) -> dict[str, str]:
    """Environment of every Ray process we start: token auth (as the project's core sets it), no
    usage stats, the venv first on PATH (so ``python`` in a submitted job is the project's)."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


@dataclass
class Cluster:
    address: str  # GCS address for drivers (--address)
    dashboard: str  # http address for `ray job submit` and the state API
    env: dict[str, str]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    """End the nodes we started: their whole process groups (never `ray stop`, which ends everyone's).
    A head asked politely can take 30 s (graceful dashboard shutdown): after a short wait, SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for p in procs:  # to the group even when its leader has exited: its children may not have
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="package")
def ray_cluster():
    """A head (127.0.0.2, 1 CPU, dashboard on 127.0.0.1) and a worker node (127.0.0.3, 1 CPU,
    custom resource ``worker_node``), each its own `ray start` process group and temp dir."""
    port, dport = free_port("127.0.0.2"), free_port()
    dirs = [tempfile.mkdtemp(prefix="rc", dir="/tmp") for _ in range(2)]  # short: unix socket paths
    env = ray_env()
    # token auth: `ray start` refuses to run without a token, and on a fresh machine none exists
    # until some Ray process made one (an embedded `ray.init` does; this fixture may run first)
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    # the agent's HTTP port is fixed (52365) by default: another Ray on the same address (the
    # session's embedded one, another engineer's) would leave this node without a job agent
    mem = ["--memory=2000000000", "--object-store-memory=100000000"]
    head = _start(
        [
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.2",
            "--num-cpus=1",
            '--resources={"head_node": 1}',
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dport}",
            f"--dashboard-agent-listen-port={free_port('127.0.0.2')}",
            f"--temp-dir={dirs[0]}",
            *mem,
        ],
        env,
    )
    nodes = [head]
    try:
        deadline = time.monotonic() + 120
        while (
            subprocess.run([str(VENV_BIN / "ray"), "status", f"--address=127.0.0.2:{port}"], env=env, capture_output=True).returncode != 0
        ):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        nodes.append(
            _start(
                [
                    f"--address=127.0.0.2:{port}",
                    "--node-ip-address=127.0.0.3",
                    "--num-cpus=1",
                    '--resources={"worker_node": 1}',
                    f"--dashboard-agent-listen-port={free_port('127.0.0.3')}",
                    f"--temp-dir={dirs[1]}",
                    *mem,
                ],
                env,
            )
        )
        while (
            "worker_node"
            not in subprocess.run(
                [str(VENV_BIN / "ray"), "status", f"--address=127.0.0.2:{port}"], env=env, capture_output=True, text=True
            ).stdout
        ):
            assert nodes[1].poll() is None and time.monotonic() < deadline, "the Ray worker node did not join"
            time.sleep(1)
        yield Cluster(f"127.0.0.2:{port}", f"http://127.0.0.1:{dport}", env)
    finally:
        _stop(list(reversed(nodes)))
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
