"""Gold items (known answers mixed into the queue to measure annotators) must not be
recognisable, and queueing them must say what really happened.

Why: a gold row that mining had not picked was queued with a caption and "gold item" as its only
reason, no pseudo-label, verifier or signals: annotators spot it and gold accuracy measures how
people treat a known test. And a gold row already in the queue lost its gold flag silently (the
summary said 3 gold items, the database had 2)."""

from __future__ import annotations

import json

import lance
import pytest
from fastapi.testclient import TestClient

from annotator_ui.app import AppSettings, create_app
from curation.reviewdb import ReviewDB
from curation.store import Store
from pipelines.review import ReviewMineConfig, mine_queue
from tests.helpers import PASSWORD, add_signals, coco_rows, samples_table


@pytest.fixture
def mined(tmp_path, coco_dir):
    """12 COCO rows with signals; a first mine queues 4 of them, alice decides the first."""
    rows = coco_rows(coco_dir, limit=12)
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    add_signals(uri)
    store = Store(uri)
    dbfile = str(tmp_path / "review.sqlite")
    mine_queue(store, ReviewMineConfig(n=4, min_hardness=0.0, double_share=0.0, db=dbfile), show_progress=False)
    db = ReviewDB(dbfile)
    alice = db.add_user("alice", PASSWORD)
    first = db.next_item(alice)
    db.submit(alice, first["id"], "keep")
    with db.tx(write=False) as t:
        queued = [r[0] for r in t.all("SELECT row_id FROM items ORDER BY id")]
    yield store, db, dbfile, rows, queued, first["row_id"]
    db.close()


def _gold_csv(path, answers: dict[str, str]) -> str:
    path.write_text("row_id,answer\n" + "".join(f"{r},{a}\n" for r, a in answers.items()))
    return str(path)


def test_gold_rows_already_queued_are_counted_or_reported_never_dropped(mined, tmp_path):
    store, db, dbfile, rows, queued, decided = mined
    open_row = next(r for r in queued if r != decided)
    fresh = [r["id"] for r in rows if r["id"] not in queued][:2]
    gold = {decided: "keep", open_row: "drop", fresh[0]: "keep", fresh[1]: "drop"}
    cfg = ReviewMineConfig(n=1, min_hardness=1.0, double_share=0.0, db=dbfile, gold=_gold_csv(tmp_path / "gold.csv", gold))
    summary = mine_queue(store, cfg, show_progress=False)
    assert summary["gold"] == 3 and db.counters()["gold_items"] == 3
    assert summary["gold_skipped"] == [{"row_id": decided, "reason": summary["gold_skipped"][0]["reason"]}]
    assert "already reviewed" in summary["gold_skipped"][0]["reason"]
    with db.tx(write=False) as t:
        flags = dict(t.all("SELECT row_id, gold_answer FROM items WHERE gold = 1"))
    assert flags == {open_row: "drop", fresh[0]: "keep", fresh[1]: "drop"}
    saved = json.loads((store.state_dir / "review" / f"mine-{summary['batch']}.json").read_text())
    assert saved["gold"] == 3 and len(saved["gold_skipped"]) == 1


def test_a_gold_item_looks_like_any_other_item(mined, tmp_path):
    """A gold row mining did not pick gets a payload built like every mined item's (signals,
    pseudo-label, verifier, reasons, look-alikes from its row); nothing served says gold."""
    store, db, dbfile, rows, queued, decided = mined
    fresh = next(r["id"] for r in rows if r["id"] not in queued)
    cfg = ReviewMineConfig(n=1, min_hardness=1.0, double_share=0.0, db=dbfile, gold=_gold_csv(tmp_path / "g.csv", {fresh: "drop"}))
    assert mine_queue(store, cfg, show_progress=False)["gold"] == 1
    with db.tx(write=False) as t:
        payloads = {r[0]: (json.loads(r[1]), r[2]) for r in t.all("SELECT row_id, payload, gold FROM items")}
    gold_payload = payloads[fresh][0]
    normal = next(p for r, (p, g) in payloads.items() if not g)
    assert set(gold_payload) == set(normal)
    assert gold_payload["pseudo"] and gold_payload["verifier"] and gold_payload["signals"] and gold_payload["neighbours"]
    assert "gold item" not in gold_payload["hard_reasons"] and gold_payload["concept"] is not None
    app = create_app(AppSettings(db_url=dbfile, dataset=store.uri, gold_rate=1.0), db)
    c = TestClient(app)
    assert c.post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 200
    item = c.get("/api/next").json()["item"]
    assert item["row_id"] == fresh and db.get_item(item["id"])["gold"]  # the gold share serves it
    assert item["pseudo"]["decision"] in ("keep", "drop") and item["verifier"]["verdict"] and item["signals"]
    html = c.get("/").text
    assert 'id="pseudo"' in html and "Pseudo-label: " + item["pseudo"]["decision"] in html
    for text in (json.dumps(item), html):
        assert "gold" not in text.lower()


def test_a_bad_gold_file_is_refused_before_a_queue_is_made(mined, tmp_path):
    """A mistyped run leaves no empty database behind that a later serve or apply would accept."""
    store = mined[0]
    for name, text in (("unknown.csv", "row_id,answer\nno-such-row,keep\n"), ("bad.csv", "row_id,answer\nx,maybe\n")):
        gold = tmp_path / name
        gold.write_text(text)
        db = tmp_path / f"{name}.sqlite"
        with pytest.raises(ValueError, match="gold rows not in the dataset|expected 'row_id,keep"):
            mine_queue(store, ReviewMineConfig(n=4, gold=str(gold), db=str(db)), show_progress=False)
        assert not db.exists()
