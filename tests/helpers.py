"""Test data builders: real images into samples-schema Arrow tables (no Ray, no ingest needed),
training shards written from them, and review-loop data (users' password, queued items, signals)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from PIL import Image

from curation.schema import SAMPLES_SCHEMA, sample_id, sha256_hex
from curation.text import detect_lang


def sample_row(data: bytes, source: str, key: str, captions: list[str] | None = None, kind: str = "short") -> dict:
    """One row of the samples table for encoded image bytes (width/height/format read by PIL)."""
    with Image.open(io.BytesIO(data)) as im:
        w, h, fmt = im.size[0], im.size[1], im.format
    return {
        "id": sample_id(source, key),
        "image": data,
        "image_uri": None,
        "image_sha256": sha256_hex(data),
        "source": source,
        "source_key": key,
        "captions": [{"text": c, "kind": kind, "lang": detect_lang(c)} for c in (captions or [])],
        "width": w,
        "height": h,
        "format": fmt,
        "error": None,
    }


def samples_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def coco_rows(coco_dir: Path, limit: int | None = None) -> list[dict]:
    """COCO-mini photos with their five human captions each, in file-name order."""
    caps = json.loads((coco_dir / "captions_train2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for a in caps["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    files = {im["file_name"]: im["id"] for im in caps["images"]}
    rows = []
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:limit]:
        rows.append(sample_row(p.read_bytes(), str(coco_dir), p.name, by_image.get(files.get(p.name), []), kind="short"))
    return rows


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on a loopback address (servers of the tests listen on loopback only)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port: its base URL; stopped on exit."""
    import threading
    import time

    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)


# --- training shards ------------------------------------------------------------------------------


def write_shards(rows: list[dict], uri, resolution: int = 256, rows_per_file: int = 20) -> str:
    """Samples-table rows -> a training shard dataset at ``uri`` (several fragments), written
    without Ray (export's pure row function)."""
    import lance

    from pipelines.export import ExportConfig, resolve_roles, shard_rows

    src = samples_table(rows)
    cfg = ExportConfig(out=str(uri), resolution=resolution)
    table, excluded = shard_rows(src, cfg, resolve_roles(src.schema, cfg))
    assert not excluded, excluded
    lance.write_dataset(table, str(uri), max_rows_per_file=rows_per_file)
    return str(uri)


# --- review loop ----------------------------------------------------------------------------------

PASSWORD = "correct horse battery"


def make_items(n: int, *, gold: int = 0, double_every: int = 0, prefix: str = "r") -> list[dict]:
    """``n`` queued items with distinct priorities (the first is served first)."""
    items = []
    for i in range(n):
        it = {
            "row_id": f"{prefix}{i:06d}",
            "priority": float(n - i),
            "payload": {"row_id": f"{prefix}{i:06d}", "caption": f"caption {i}", "pos": i},
            "needed": 2 if double_every and i % double_every == 0 else 1,
        }
        if i < gold:
            it["gold_answer"] = "keep" if i % 2 == 0 else "drop"
        items.append(it)
    return items


def _u(row_id: str, salt: str) -> float:
    return int(hashlib.sha1(f"{salt}{row_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def add_signals(uri: str) -> None:
    """Profile-like columns (deterministic per row) for the loop to learn from."""
    import lance
    import numpy as np

    def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column("id").to_pylist()
        rng = np.random.default_rng(len(ids))
        emb = rng.normal(size=(len(ids), 32)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return pa.RecordBatch.from_pydict(
            {
                "prof_quality": pa.array([_u(i, "q") for i in ids], pa.float32()),
                "prof_clip_sim": pa.array([0.5 * _u(i, "s") for i in ids], pa.float32()),
                "prof_clip_image": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), 32),
            }
        )

    lance.dataset(uri).add_columns(udf, read_columns=["id"])


def add_clip_sim_rule(store) -> None:
    """A user's own rule on caption-image similarity (not a default: no AUC can be measured
    offline), so the loop's recalibration and random-weight marking of a similarity rule are tested."""
    from engines.active.rules import DEFAULT_RULES, Rule, save_rules
    from pipelines.review import review_dir

    sim = Rule(column="prof_clip_sim", op=">=", threshold=0.2, why="caption does not match the image", optional=True)
    save_rules(review_dir(store) / "thresholds.json", [*DEFAULT_RULES, sim])


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript ``expression`` with ``page.evaluate`` until it is truthy. Not
    ``page.wait_for_function``: when its first check is false it polls inside the page with
    ``eval``, which the app's Content-Security-Policy (``script-src 'self'``) refuses, so a wait
    that is not over at once fails (seen on CI); ``page.evaluate`` goes through the protocol."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:g} s: {expression}")
        page.wait_for_timeout(50)


def interruptible_cli(cmd: list[str], cwd: Path, env: dict, stderr=subprocess.PIPE) -> subprocess.Popen:
    """A ``curate`` command as a terminal starts it, for Ctrl-C tests: its own session (so the test
    can signal its process group) and SIGINT at its default. A command started in the background by
    a non-interactive shell (a CI runner's) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so Ctrl-C could not be tested there."""

    def sigint_default() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, **env}
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True, preexec_fn=sigint_default
    )
