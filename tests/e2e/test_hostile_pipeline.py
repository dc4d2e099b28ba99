"""The hostile corpus through the whole pipeline: the run completes, every input row is accounted
for, and the review UI (the real server, Debian's Chromium) shows the hostile captions as text."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

from curation.store import Store
from democorpus.hostile import write_hostile_corpus
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hostile input, honest reviewer"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, coco_dir, ray_session):
    """The hostile corpus through every engine once, shared by the tests of this module."""
    from pipelines.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("hostile")
    photos = sorted((coco_dir / "images").glob("*.jpg"))
    cases = write_hostile_corpus(tmp / "h", photos[0].read_bytes())
    ds = tmp / "h.lance"
    cfg = {
        "dataset": str(ds),
        "steps": [
            {"stage": "ingest", "params": {"source": [str(tmp / "h")], "shard_size": 8}},
            {"stage": "profile", "params": {"stages": ["meta", "hash", "entropy", "degradation", "nsfw", "caption", "scores"]}},
            {"stage": "dedup"},
            {"stage": "graph_build", "params": {"out": str(tmp / "graph"), "visual_only": True, "zh": False, "graphml": False}},
            {"stage": "graph_tag", "params": {"graph": str(tmp / "graph")}},
            # no target size: as many rows as export would keep. Resampling counts only rows that
            # are trained on (every default export check), and the hostile corpus is mostly
            # copies of one photo, broken files and images too small to train on
            {"stage": "resample", "params": {"graph": str(tmp / "graph")}},
            {"stage": "review_mine", "params": {"n": 10, "db": str(tmp / "review.db")}},
            {"stage": "export", "params": {"out": str(tmp / "shards"), "resolution": 256}},
            {
                "stage": "train",
                "params": {
                    "shards": str(tmp / "shards"),
                    "model": "tiny",
                    "steps": 2,
                    "out_dir": str(tmp / "train"),
                    "tiny_encoders": True,
                    "ckpt_every": 1000,
                    "sample_every": 0,
                },
            },
        ],
    }
    path = tmp / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_pipeline(path, show_progress=False)
    return SimpleNamespace(tmp=tmp, cases=cases, ds=ds, db=tmp / "review.db", results=results)


def test_hostile_corpus_through_every_engine(hostile_run):
    tmp, cases, ds = hostile_run.tmp, hostile_run.cases, hostile_run.ds
    assert [r.stage for r in hostile_run.results][-1] == "train"

    store = Store(ds)
    rows = store.to_arrow(columns=["id", "source_key", "error", "captions"]).to_pylist()
    assert len(rows) == len(cases)  # one row per hostile input, none lost
    profile = next(r for r in hostile_run.results if r.stage == "profile")
    assert profile.extra["rows"] == len(rows), profile.extra  # rows profiled, not counted once per profiling stage
    # every row is kept, excluded with a reason, or errored with a reason
    kept = set(Store(tmp / "shards").to_arrow(columns=["id"]).column("id").to_pylist())
    excluded = {r["id"]: r["reason"] for r in pq.read_table(tmp / "shards" / "_curation" / "export" / "excluded.parquet").to_pylist()}
    assert kept.isdisjoint(excluded)
    for r in rows:
        assert r["id"] in kept or excluded.get(r["id"]), r["source_key"]
        if r["error"]:
            assert r["id"] not in kept and excluded[r["id"]]
    assert all(reason for reason in excluded.values())
    # hostile captions travel as data, byte for byte (the UI shows them as text: the test below)
    html_row = next(r for r in rows if r["source_key"] == "folder/html_caption.jpg")
    assert "<script>" in html_row["captions"][0]["text"]
    metrics = [json.loads(line) for line in (tmp / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert metrics and all(m.get("loss") is None or m["loss"] == m["loss"] for m in metrics)  # finite, not NaN


# --- the review UI on the hostile rows --------------------------------------------------------------


def _queue_every_row(store: Store, db_path: Path) -> dict[str, str]:
    """Put every row of the dataset in the review queue the way the pipeline does.

    The pipeline's ``review_mine`` queued only the hardest few; mining again through the same
    call (``mine_queue``) with no hardness floor queues every clean row, with its look-alikes,
    pseudo-label and verdict. Rows with an ingest error are never mined (nothing to decide on):
    they go in through the database's ``enqueue`` (what ``mine_queue`` calls), with their error as
    the reason shown, so the UI meets their broken image bytes and path-like error messages too.
    Returns {row id: how it was queued}."""
    from curation.reviewdb import ReviewDB
    from engines.active.pseudo import choose_caption
    from pipelines.review import ReviewMineConfig, mine_queue

    mine_queue(store, ReviewMineConfig(n=1000, min_hardness=0.0, double_share=0.0, db=str(db_path)), show_progress=False)
    ds = store.open()
    table = ds.to_table(columns=["id", "captions", "error"]).to_pylist()
    db = ReviewDB(str(db_path))
    try:
        with db.tx(write=False) as t:
            queued = {r[0] for r in t.all("SELECT row_id FROM items")}
        extra = [
            {
                "row_id": r["id"],
                "priority": 0.0,
                "needed": 1,
                "payload": {
                    "row_id": r["id"],
                    "pos": pos,
                    "version": ds.version,
                    "caption": choose_caption(r["captions"])[0],
                    "other_captions": [],
                    "hard_reasons": [f"ingest error: {r['error']}"],
                },
            }
            for pos, r in enumerate(table)
            if r["id"] not in queued
        ]
        assert all(it["payload"]["hard_reasons"][0] != "ingest error: None" for it in extra), "a clean row was not mined"
        db.enqueue(extra, "hostile-errored", user="tests/e2e")
    finally:
        db.close()
    return {r["id"]: ("enqueued" if r["id"] not in queued else "mined") for r in table}


@pytest.fixture
def review_server(hostile_run):
    """``curate review add-user`` and ``curate review serve`` as an operator runs them, on loopback."""
    store = Store(hostile_run.ds)
    how = _queue_every_row(store, hostile_run.db)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "cli", "review"]
    db_args = ["--dataset", str(hostile_run.ds), "--db", str(hostile_run.db)]
    made = subprocess.run(
        [*cli, "add-user", "rita", *db_args, "--password-stdin"],
        input=PASSWORD + "\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    port = free_port()
    log = hostile_run.tmp / "serve.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [*cli, "serve", *db_args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "review server did not come up"
            time.sleep(0.3)
        yield SimpleNamespace(base=base, store=store, how=how, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.browser
def test_review_ui_pages_through_the_hostile_rows(hostile_run, review_server, browser):
    srv = review_server
    rows = {r["id"]: r for r in srv.store.to_arrow(columns=["id", "source_key", "error", "captions"]).to_pylist()}
    by_key = {r["source_key"]: r for r in rows.values()}

    page = browser.new_page()
    dialogs: list[str] = []
    responses: list[tuple[int, str]] = []
    requests: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("response", lambda r: responses.append((r.status, r.url)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(srv.base + "/login")
    page.fill("#username", "rita")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-button")
    assert page.url == srv.base + "/"

    shown: dict[str, dict] = {}
    for _ in range(len(rows) + 1):  # every item once: a skipped item is not offered to us again
        page.wait_for_load_state("load")
        if page.locator("#empty").count():
            break
        rid = page.text_content("#row-id")
        assert rid in rows and rid not in shown, rid
        shown[rid] = {
            "caption": page.input_value("#caption"),
            "reasons": page.locator("#hard-reasons li").all_text_contents(),
            "imgs": page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))"),
        }
        # nothing from a caption became markup or ran: no injected element, no flag, no dialog
        assert page.evaluate("window.__xss === undefined"), rows[rid]["source_key"]
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"], script:not([src]), [onerror]').length") == 0
        assert dialogs == []
        with page.expect_navigation() as posted:  # the post's 303 to "/", or the error it answered
            page.click("#btn-skip")
        # every item can be handed back, the 64,000-character caption included (ingest's limit)
        assert posted.value.status < 400, (rows[rid]["source_key"], posted.value.status)
        page.wait_for_url(srv.base + "/")
    else:
        pytest.fail("the queue never ran empty")
    assert set(shown) == set(rows)  # every row, clean or errored, was shown once

    def seen(key: str) -> dict:
        return shown[by_key[key]["id"]]

    for key in ("folder/html_caption.jpg", "folder/path_caption.jpg", "folder/url_path_caption.jpg", "folder/huge_caption.jpg"):
        stored = by_key[key]["captions"][0]["text"]
        assert seen(key)["caption"] == stored, key  # the exact text, in the textarea, as text
    assert seen("folder/html_caption.jpg")["caption"].startswith('<img src=x onerror="window.__xss=1')
    assert len(seen("folder/huge_caption.jpg")["caption"]) == 64_000  # the 1.1 MB caption, cut at ingest
    # the invalid-UTF-8 sidecar never became text: the row carries the reason, the UI shows it
    bad = seen("folder/invalid_utf8_caption.jpg")
    assert bad["caption"] == "" and any("caption_encoding" in r and "not UTF-8" in r for r in bad["reasons"])
    escape = next(r for r in rows.values() if (r["error"] or "").startswith("path_outside_source"))
    assert any("../../../../etc/hostname" in r for r in shown[escape["id"]]["reasons"])
    assert page.evaluate("window.__xss === undefined") and dialogs == []  # after the last page too

    # images: only /image/<row id> of rows in the dataset, never a path taken from a caption
    id_path = re.compile(r"^/image/([0-9A-Za-z_.:-]{1,128})$")
    for s in shown.values():
        for src in s["imgs"]:
            m = id_path.match(src)
            assert m and m.group(1) in rows, src
    origin_paths = [u.removeprefix(srv.base) for u in requests if u.startswith(srv.base)]
    assert all(u.startswith(srv.base) for u in requests), [u for u in requests if not u.startswith(srv.base)]
    assert not any("etc" in p or ".." in p or "%2e" in p.lower() for p in origin_paths), origin_paths
    for p in origin_paths:
        assert p in ("/", "/login") or p.startswith(("/static/", "/annotate/")) or id_path.match(p), p
    # a caption's path cannot be fetched by hand either: refused with 4xx
    for probe in ("/image/..%2F..%2Fetc%2Fpasswd", "/image/x%00y", "/static/..%2F..%2Fpyproject.toml"):
        r = page.request.get(srv.base + probe)
        assert 400 <= r.status < 500, (probe, r.status)

    # no page, image or post answered 5xx (broken image bytes get 404 / 415, not a crash)
    assert all(status < 500 for status, _ in responses), [x for x in responses if x[0] >= 500]
    image_status = {st for st, u in responses if "/image/" in u}
    assert 200 in image_status
    assert "Traceback" not in srv.log.read_text()
