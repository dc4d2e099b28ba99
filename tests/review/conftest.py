"""Fixtures for review tests: real review databases (a SQLite file, and a throwaway PostgreSQL
server started for the test session) with users and queued items.

The important database and API tests take ``db_url`` and so run once per engine: the data-access
layer promises the same behaviour on both through the same code.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.reviewdb import ReviewDB
from tests.helpers import free_port

PASSWORD = "correct horse battery"


def make_items(n: int, *, gold: int = 0, double_every: int = 0, prefix: str = "r") -> list[dict]:
    """``n`` queued items with distinct priorities (the first is served first)."""
    items = []
    for i in range(n):
        it = {"row_id": f"{prefix}{i:06d}", "priority": float(n - i),
              "payload": {"row_id": f"{prefix}{i:06d}", "caption": f"caption {i}", "pos": i},
              "needed": 2 if double_every and i % double_every == 0 else 1}
        if i < gold:
            it["gold_answer"] = "keep" if i % 2 == 0 else "drop"
        items.append(it)
    return items


def _pg_bin() -> str | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None



@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the test session: its admin URL (trust auth, loopback only).

    initdb refuses to run as root, so as root the server runs as the ``postgres`` system user
    (Debian's package makes it) in a temporary directory it owns; its unix socket lives there too.
    Skips (with the reason) only when the server binaries or psycopg are missing."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need `pip install psycopg[binary]`")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="/tmp/pgt")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "log")
    try:
        subprocess.run(run_as + [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                 "--no-sync", "--no-instructions"], check=True, capture_output=True)
        for attempt in range(3):  # the free port can be taken by someone else before the server binds it
            port = free_port()
            # fsync off and small buffers: a throwaway server for tests; listens on loopback only
            opts = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200 -c shared_buffers=32MB"
            r = subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60",
                                         "start"], capture_output=True, text=True)
            if r.returncode == 0:
                break
        else:
            tail = open(log, errors="replace").read()[-2000:] if os.path.exists(log) else r.stderr
            pytest.fail(f"PostgreSQL test server did not start:\n{tail}")
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty review database URL: a SQLite file, or a new database on the test server."""
    if request.param == "sqlite":
        yield str(tmp_path / "review.sqlite")
        return
    import psycopg

    base = request.getfixturevalue("pg_server")
    name = "review_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base + "/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield f"{base}/{name}"
    with psycopg.connect(base + "/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def review_db(db_url):
    db = ReviewDB(db_url)
    db.add_user("admin", PASSWORD, "admin")
    db.add_user("alice", PASSWORD)
    db.add_user("bob", PASSWORD)
    yield db
    db.close()


def _u(row_id: str, salt: str) -> float:
    return int(hashlib.sha1(f"{salt}{row_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def add_signals(uri: str) -> None:
    """Profile-like columns (deterministic per row) for the loop to learn from."""

    def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column("id").to_pylist()
        rng = np.random.default_rng(len(ids))
        emb = rng.normal(size=(len(ids), 32)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return pa.RecordBatch.from_pydict({
            "prof_quality": pa.array([_u(i, "q") for i in ids], pa.float32()),
            "prof_clip_sim": pa.array([0.5 * _u(i, "s") for i in ids], pa.float32()),
            "prof_clip_image": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), 32),
        })

    lance.dataset(uri).add_columns(udf, read_columns=["id"])
