"""Shared fixtures: one Ray instance per test session, real small data, and the fixtures that tests
in more than one directory use (the S3 server, review databases, the WordNet graph, tiny encoders).

Fixtures used by one directory only live in that directory's ``conftest.py``; plain builders
(rows, shards, review items) are in ``tests/helpers.py``."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

import curation  # noqa: F401  (sets Ray auth/env defaults before anything imports ray)

ROOT = Path(__file__).resolve().parents[1]
COCO = (ROOT / ".." / "shared" / "data" / "coco-mini").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session (embedded, loopback, small object store)."""
    import ray

    from curation.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    """80 real COCO photos with 5 human captions each (../shared/data/coco-mini)."""
    if not (COCO / "images").is_dir():
        pytest.fail(f"coco-mini not found at {COCO}; it lives in ../shared/data next to the checkout")
    return COCO


@pytest.fixture(scope="session")
def coco_store(tmp_path_factory, coco_dir):
    """A Lance samples dataset of the 80 COCO photos (4 fragments of 20). Treat as read-only:
    copy it (``shutil.copytree``) before adding columns in a test."""
    import lance

    from curation.store import Store
    from tests.helpers import coco_rows, samples_table

    uri = tmp_path_factory.mktemp("coco") / "coco.lance"
    lance.write_dataset(samples_table(coco_rows(coco_dir)), str(uri), max_rows_per_file=20)
    return Store(str(uri))


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium: no browser download at test time


@pytest.fixture
def browser():
    """Headless Chromium through Playwright, for the UI tests."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield b
        b.close()


@pytest.fixture(scope="session")
def coco_sample_rows(coco_dir) -> list[dict]:
    """The samples-table rows of the 80 COCO photos (``tests.helpers.coco_rows``), built once."""
    from tests.helpers import coco_rows

    return coco_rows(coco_dir)


# --- S3 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_env():
    """A moto S3 server on loopback and the AWS_* variables that point the store at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.helpers import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request in the test log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT"], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    yield env, client
    server.stop()


# --- review databases (the review DB, the annotator app and the review job run on both engines) ---


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
    from tests.helpers import free_port

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
        subprocess.run(
            run_as + [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
        )
        for _attempt in range(3):  # the free port can be taken by someone else before the server binds it
            port = free_port()
            # fsync off and small buffers: a throwaway server for tests; listens on loopback only
            opts = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200 -c shared_buffers=32MB"
            r = subprocess.run(
                run_as + [f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start"], capture_output=True, text=True
            )
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
    """A fresh, empty review database URL: a SQLite file, or a new database on the test server.

    Tests taking it run once per engine: the data-access layer promises the same behaviour on both
    through the same code."""
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


# --- the concept graph (graph engine tests and the graph job) --------------------------------------


@pytest.fixture(scope="session")
def wordnet_graph():
    """All 82k WordNet noun synsets with Chinese labels (built once; treat as read-only)."""
    from graph.chinese import add_zh_labels
    from graph.wordnet import load_wordnet

    g = load_wordnet()
    add_zh_labels(g)
    return g


@pytest.fixture(scope="session")
def coco_captions(coco_dir):
    """(image ids, captions per image, COCO object category names per image)."""
    caps = json.loads((coco_dir / "captions_train2017.json").read_text())
    inst = json.loads((coco_dir / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, set[str]] = defaultdict(set)
    for a in inst["annotations"]:
        objects[a["image_id"]].add(names[a["category_id"]])
    by: dict[int, list[str]] = defaultdict(list)
    for a in caps["annotations"]:
        by[a["image_id"]].append(a["caption"].strip())
    ids = sorted(by)
    return ids, [by[i] for i in ids], [objects[i] for i in ids]


@pytest.fixture(scope="session")
def coco_tagger(wordnet_graph, coco_captions):
    """A tagger over the WordNet graph with BM25 statistics of the 400 COCO captions."""
    from graph.tagging import Tagger

    _, rows, _ = coco_captions
    return Tagger(wordnet_graph).fit([c for r in rows for c in r])


@pytest.fixture(scope="session")
def coco_graph_dir(tmp_path_factory, wordnet_graph, coco_tagger, coco_captions):
    """A saved concept graph: the WordNet concepts the COCO captions name, with all their ancestors
    (a real sub-hierarchy, small enough to load in a test; treat as read-only)."""
    import networkx as nx

    from graph.concepts import ConceptGraph

    _, rows, _ = coco_captions
    tagged = {t for ts in coco_tagger.tag_rows(rows)["tag_concepts"].to_pylist() for t in ts}
    keep = set(tagged).union(*(nx.ancestors(wordnet_graph.g, t) for t in tagged))
    # in WordNet's node order: networkx's subgraph().copy() orders nodes by set iteration, which
    # changes with the process's hash seed, and so did the order of equal-score tags between runs
    wn = wordnet_graph.g
    sub = nx.DiGraph()
    sub.graph.update(wn.graph)
    sub.add_nodes_from((n, dict(d)) for n, d in wn.nodes(data=True) if n in keep)
    sub.add_edges_from((u, v, dict(d)) for u, v, d in wn.edges(data=True) if u in keep and v in keep)
    out = tmp_path_factory.mktemp("graph") / "g"
    ConceptGraph(sub).finalize().save(out, graphml=False)
    return out


# --- training (model/loader tests and the export/train jobs) ---------------------------------------


@pytest.fixture
def one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread is several times faster than two
    threads fighting other processes for the cores. Autouse in ``tests/training``; job tests that
    train ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_encoders():
    from training.encoders import Encoders

    return Encoders.tiny(cap_dim=32, seed=0)
