"""Editing pairs in the review queue (``curate pairs review``): queued into the hard cases' review
database, shown source | target side by side with the instruction editable, decided, and written
back to the pair table by ``curate review apply``; ``curate pairs export`` then skips dropped pairs.

Real data throughout: 6 coco-mini photos, 4 text pairs from the real render job (Ray), a mined-style
pair table whose row has no image bytes (its images come from the dataset rows, as a pair whose
bytes were never stored would), a real SQLite review database, the real web app (TestClient, and
uvicorn + Chromium for the layout).
"""

from __future__ import annotations

import shutil

import lance
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from annotator_ui.app import AppSettings, create_app
from curation.reviewdb import ReviewDB
from curation.store import Store
from pipelines.pairs import PAIRS_SCHEMA, PairExportConfig, PairsConfig, export_pairs, render_pairs, table_path
from pipelines.pairs.review import PairReviewConfig, apply_pair_reviews, review_pairs
from pipelines.review import ReviewApplyConfig, apply_reviews, default_db_url
from tests.helpers import PASSWORD, samples_table, served, wait_until

N = 4
ZWSP = "\u200b"


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory, coco_sample_rows, ray_session):
    """6 coco-mini photos, 4 rendered pairs in the default pair table, and a mined table with one
    pair without instruction nor image bytes (source row 0, target row 1). Copied per test."""
    root = tmp_path_factory.mktemp("pair-review")
    uri = str(root / "ds.lance")
    rows = coco_sample_rows[:6]
    lance.write_dataset(samples_table(rows), uri)
    store = Store(uri)
    render_pairs(store, PairsConfig(n=N, seed=0), show_progress=False)
    mined = {name: None for name in PAIRS_SCHEMA.names}
    mined |= {
        "pair_id": "0123456789abcdef01234567",
        "source_id": rows[0]["id"],
        "target_id": rows[1]["id"],
        "kind": "mined",
        "changed_fraction": 0.05,
    }
    mined |= {"provenance": f"mine v1 column=vec_desc target={rows[1]['id']} sim=0.97000 instruction_source=none", "width": 640}
    lance.write_dataset(pa.Table.from_pylist([mined], schema=PAIRS_SCHEMA), table_path(store, "mined"))
    return uri, [r["id"] for r in rows]


@pytest.fixture
def ds(base_dataset, tmp_path):
    """A fresh copy of the dataset with its pair tables (tests write to them)."""
    src, ids = base_dataset
    uri = str(tmp_path / "ds.lance")
    shutil.copytree(src, uri)
    return Store(uri), ids


def _queue(store: Store, **kw) -> tuple[dict, ReviewDB]:
    rep = review_pairs(store, PairReviewConfig(**kw))
    assert rep["db"] == default_db_url(store)  # the hard cases' queue
    db = ReviewDB(default_db_url(store))
    for name, role in (("alice", "annotator"), ("bob", "annotator"), ("boss", "admin")):
        db.add_user(name, PASSWORD, role)
    return rep, db


def _login(app, name: str) -> TestClient:
    c = TestClient(app)
    r = c.post("/api/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200
    c.headers["x-csrf-token"] = r.json()["csrf"]
    return c


def _pairs(store: Store, name: str = "pairs") -> dict[str, dict]:
    return {r["pair_id"]: r for r in lance.dataset(table_path(store, name)).to_table().to_pylist()}


def test_pairs_are_queued_once_each_mined_without_instruction_first(ds):
    store, ids = ds
    rep, db = _queue(store)
    assert rep["queued"] == rep["added"] == N + 1 and rep["by_priority"] == {"no_instruction": 1, "generated": N}
    items = sorted((db.get_item(i + 1) for i in range(N + 1)), key=lambda it: -it["priority"])
    first = items[0]
    assert first["row_id"] == "pair:0123456789abcdef01234567" and first["payload"]["caption"] == ""
    assert first["payload"]["pair"]["target_id"] == ids[1] and first["payload"]["signals"]["similarity"] == 0.97
    rendered = _pairs(store)
    for it in items[1:]:
        p = it["payload"]
        pid = it["row_id"].removeprefix("pair:")
        assert p["kind"] == "pair" and p["pair"]["pair_id"] == pid and p["pair"]["kind"] in ("replace", "remove", "add")
        assert p["caption"] == rendered[pid]["instruction_en"] and p["pair"]["instruction_zh"] == rendered[pid]["instruction_zh"]
        assert p["pair"]["table_version"] == 1 and p["pair"]["table"] == table_path(store, "pairs")
    # a re-run updates the open items, never duplicates one; kinds and limit select
    again = review_pairs(store, PairReviewConfig())
    assert (again["added"], again["updated"]) == (0, N + 1) and db.counters()["items_total"] == N + 1
    only = review_pairs(store, PairReviewConfig(kinds=["mined"], limit=5))
    assert only["queued"] == 1 and only["other_kinds"] == N
    with pytest.raises(ValueError, match="no Lance dataset there"):
        review_pairs(store, PairReviewConfig(pairs=[str(store.state_dir / "nope.lance")]))
    db.close()


def test_api_serves_both_images_and_records_an_edited_instruction(ds):
    store, ids = ds
    _, db = _queue(store, kinds=["replace", "remove", "add"])
    app = create_app(AppSettings(db_url=db.url, dataset=store.uri, invisible="reject"), db)
    alice, bob, boss = _login(app, "alice"), _login(app, "bob"), _login(app, "boss")
    item = alice.get("/api/next").json()["item"]
    pair = item["pair"]
    pid = pair["pair_id"]
    stored = _pairs(store)[pid]
    assert item["row_id"] == f"pair:{pid}" and item["caption"] == stored["instruction_en"]
    assert pair["instruction_zh"] == stored["instruction_zh"] and pair["edit_lang"] == "en" and "table" not in pair
    for side, col in (("source", "src_image"), ("target", "tgt_image")):
        r = alice.get(pair[f"{side}_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == stored[col]
    assert boss.get(pair["source_url"]).status_code == 200  # an admin sees any queued pair
    # not bob's, malformed, unknown, another side: 404, never 422 or 500
    for url in (pair["source_url"], f"/pair-image/{pid}/middle", "/pair-image/..%2F..%2Fetc/source", "/pair-image/x'y/source"):
        assert bob.get(url).status_code == 404, url
    for url in ("/pair-image/ffffffffffffffffffffffff/target", "/pair-image/" + "a" * 300 + "/source", f"/pair-image/{pid}%00/source"):
        assert boss.get(url).status_code == 404, url
    # the same invisible-character rule as captions, then the edit is recorded
    r = alice.post(f"/api/items/{item['id']}/decision", json={"decision": "keep", "caption": f"Replace it{ZWSP}."})
    assert r.status_code == 422 and "U+200B" in r.text
    r = alice.post(f"/api/items/{item['id']}/decision", json={"decision": "keep", "caption": "Replace the sign's text."})
    assert r.status_code == 200
    d = next(d for d in db.decisions() if d["row_id"] == f"pair:{pid}")
    assert (d["decision"], d["caption"]) == ("keep", "Replace the sign's text.")
    assert alice.get(pair["target_url"]).status_code == 200  # their history still shows it
    html = alice.get(f"/history/{item['id']}", headers={"accept": "text/html"}).text
    assert f"/pair-image/{pid}/source" in html
    db.close()


def test_mined_pair_without_bytes_is_served_from_the_dataset_rows(ds):
    store, ids = ds
    _, db = _queue(store, kinds=["mined"])
    app = create_app(AppSettings(db_url=db.url, dataset=store.uri), db)
    alice = _login(app, "alice")
    page = alice.get("/", headers={"accept": "text/html"}).text
    assert 'id="pair-source"' in page and 'id="pair-target"' in page and "none yet, write one" in page
    pair = alice.get("/api/next").json()["item"]["pair"]
    photos = {r["id"]: r["image"] for r in store.open().to_table(columns=["id", "image"]).to_pylist()}
    assert alice.get(pair["source_url"]).content == photos[ids[0]]
    assert alice.get(pair["target_url"]).content == photos[ids[1]]
    db.close()


def test_apply_writes_review_and_instruction_and_export_skips_drops(ds, ray_session, tmp_path):
    store, ids = ds
    _, db = _queue(store, kinds=["replace", "remove", "add"])
    alice = next(u for u in db.users() if u.name == "alice")
    before = _pairs(store)
    decided = {}
    for i, decision in enumerate(["keep", "drop", "keep", "keep"]):
        item = db.next_item(alice)
        caption = "Change the text on the sign." if i == 0 else None
        db.submit(alice, item["id"], decision, caption=caption)
        decided[item["row_id"].removeprefix("pair:")] = (decision, caption)
    version_before = store.open().version
    rep = apply_reviews(store, ReviewApplyConfig(), show_progress=False)
    # the hard-case side saw nothing of the pairs
    assert rep["decisions"] == 0 and rep["rows_reviewed"] == 0 and rep["version_after"] == version_before + 1
    assert store.open().to_table(columns=["rev_decision"]).column("rev_decision").null_count == len(ids)
    assert rep["pairs"]["keep"] == 3 and rep["pairs"]["drop"] == 1 and rep["pairs"]["edited"] == 1
    ds_pairs = lance.dataset(table_path(store, "pairs"))
    assert ds_pairs.schema.names == PAIRS_SCHEMA.names + ["review", "instruction_en_orig", "instruction_zh_orig"]
    after = _pairs(store)
    for pid, (decision, caption) in decided.items():
        row, old = after[pid], before[pid]
        assert row["review"] == decision and row["src_image"] == old["src_image"] and row["tgt_image"] == old["tgt_image"]
        if caption:  # the English instruction edited: en replaced, zh cleared (it no longer matches), both kept
            assert (row["instruction_en"], row["instruction_zh"]) == (caption, None)
            assert (row["instruction_en_orig"], row["instruction_zh_orig"]) == (old["instruction_en"], old["instruction_zh"])
        else:
            assert (row["instruction_en"], row["instruction_zh"]) == (old["instruction_en"], old["instruction_zh"])
            assert row["instruction_en_orig"] is None
    # applying again writes nothing new
    version = ds_pairs.version
    again = apply_pair_reviews(db.decisions())
    assert again["tables"][0]["written"] == 0 and lance.dataset(table_path(store, "pairs")).version == version
    # a reviewed table is still a pair table: the render job appends to it
    render_pairs(store, PairsConfig(n=N + 2, seed=0), show_progress=False)
    grown = _pairs(store)
    assert len(grown) == N + 2 and sum(r["review"] is None for r in grown.values()) == 2
    # export leaves out the dropped pair, with its reason
    out = str(tmp_path / "shards.lance")
    res = export_pairs(store, PairExportConfig(out=out, resolution=256, tables=[table_path(store, "pairs")]), show_progress=False)
    dropped = next(pid for pid, (d, _) in decided.items() if d == "drop")
    shard_ids = set(lance.dataset(out).to_table(columns=["id"]).column("id").to_pylist())
    assert dropped not in shard_ids and len(shard_ids) == N + 1 and res.extra["by_reason"] == {"review_drop": 1}
    edited = next(pid for pid, (_, c) in decided.items() if c)
    caps = lance.dataset(out).to_table(columns=["id", "captions"], filter=f"id = '{edited}'").column("captions")[0].as_py()
    assert [c["text"] for c in caps] == ["Change the text on the sign."]
    db.close()


def test_cli_queues_pairs_and_refuses_bad_input(ds):
    from typer.testing import CliRunner

    from cli.main import app

    store, _ = ds
    r = CliRunner().invoke(app, ["pairs", "review", "--dataset", store.uri, "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert "2 of 5 pairs queued" in " ".join(r.output.split())
    bad = [
        ["--pairs", str(store.state_dir / "missing.lance")],
        ["--limit", "0"],
        ["--db", str(store.state_dir)],  # a directory
    ]
    for extra in bad:
        r = CliRunner().invoke(app, ["pairs", "review", "--dataset", store.uri, *extra])
        assert r.exit_code == 2 and "Traceback" not in r.output and "error" in r.output, (extra, r.output)


# --- the page in a real browser ----------------------------------------------------------------


@pytest.fixture
def pair_server(ds):
    """The web app on loopback with the 5 pairs queued (the mined one first)."""
    store, ids = ds
    _, db = _queue(store)
    with served(create_app(AppSettings(db_url=db.url, dataset=store.uri), db)) as base:
        yield base, store, db
    db.close()


def _boxes_side_by_side(page) -> None:
    """Both images loaded, source left of target, both and the buttons inside the 1366x768 window."""
    for sel in ("#pair-source", "#pair-target"):
        wait_until(page, f"document.querySelector('{sel}').complete && document.querySelector('{sel}').naturalWidth > 0")
    src, tgt = page.locator("#pair-source").bounding_box(), page.locator("#pair-target").bounding_box()
    assert src["x"] + src["width"] <= tgt["x"], (src, tgt)
    assert abs(src["y"] - tgt["y"]) < 2 and src["width"] > 200 and tgt["width"] > 200
    for box in (src, tgt, page.locator("#btn-accept").bounding_box(), page.locator("#btn-reject").bounding_box()):
        assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= 1366 and box["y"] + box["height"] <= 768, box
    caption = page.locator("#caption").bounding_box()
    assert caption["y"] + caption["height"] <= 768


@pytest.mark.browser
def test_page_shows_the_pair_side_by_side_and_saves_the_instruction(pair_server, browser):
    base, store, db = pair_server
    page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    page.goto(base + "/login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-button")
    # the mined pair without instruction comes first: write one with the keyboard, keep it
    assert page.text_content("#row-id") == "pair:0123456789abcdef01234567" and page.input_value("#caption") == ""
    _boxes_side_by_side(page)
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "caption"
    page.keyboard.type("Move the camera a little to the right.")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    # app.js empties the live region on load and refills it 50 ms later (so screen readers announce it)
    wait_until(page, "document.getElementById('saved').textContent.length > 0")
    assert page.text_content("#saved").startswith("saved: keep")
    # a rendered pair: its instruction is there to edit, the Chinese one shown; drop it with r
    second = page.text_content("#row-id")
    assert second.startswith("pair:") and page.input_value("#caption") and page.is_visible("#other-instruction")
    _boxes_side_by_side(page)
    with page.expect_navigation():
        page.keyboard.press("r")
    decided = {d["row_id"]: d for d in db.decisions()}
    assert decided["pair:0123456789abcdef01234567"]["caption"] == "Move the camera a little to the right."
    assert decided["pair:0123456789abcdef01234567"]["decision"] == "keep"
    assert decided[second]["decision"] == "drop" and decided[second]["caption"] is None
    # the single-image layout is untouched for hard cases: no pair markup on a row item
    assert page.locator("#item-image").count() == 0 and page.locator("#pair-box").count() == 1
