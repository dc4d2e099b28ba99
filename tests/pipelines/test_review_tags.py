"""`curate review apply` and reviewed tags that name no concept of the dataset's graph (stored
before the review UI checked tags, or by a server without a graph): they are kept as given, and
the apply report counts them instead of letting them pass unseen. Real Lance, real Ray."""

from __future__ import annotations

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from curation.reviewdb import ReviewDB
from curation.store import Store
from pipelines.review import ReviewApplyConfig, apply_reviews, tags_outside_graph
from tests.helpers import PASSWORD, coco_rows, samples_table


def _graph(tmp_path) -> str:
    d = tmp_path / "graph"
    d.mkdir()
    pq.write_table(
        pa.table({"id": ["wn:02084071", "wn:02121620"], "label_en": ["dog", "cat"], "label_zh": ["狗", "猫"]}), d / "nodes.parquet"
    )
    return str(d)


def test_tags_outside_graph_counts_rows_and_words(tmp_path):
    graph = _graph(tmp_path)
    tags = {"r1": ["wn:02084071"], "r2": ["dgo", "wn:02121620"], "r3": ["dgo", "sofa"]}
    assert tags_outside_graph(tags, graph) == {"rows": 2, "tags": {"dgo": 2, "sofa": 1}, "graph": graph}
    assert tags_outside_graph({"r1": ["wn:02084071"]}, graph) is None
    assert tags_outside_graph(tags, None) is None and tags_outside_graph(tags, str(tmp_path / "nowhere")) is None


def test_apply_reports_tags_that_name_no_concept(tmp_path, coco_dir, ray_session):
    rows = coco_rows(coco_dir, limit=4)
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    store = Store(uri)
    graph = _graph(tmp_path)
    store.write_json("stage_fingerprints.json", {"graph_tag": {"config": {"graph": graph}}})  # as the stage runner records it
    dbfile = str(tmp_path / "review.sqlite")
    db = ReviewDB(dbfile)
    alice = db.add_user("alice", PASSWORD)
    db.enqueue([{"row_id": r["id"], "priority": float(9 - i), "payload": {"row_id": r["id"], "pos": i}} for i, r in enumerate(rows)], "b1")
    for tags in (["wn:02084071"], ["dgo", "wn:02121620"], [], ["wn:02121620"]):
        it = db.next_item(alice)
        db.submit(alice, it["id"], "keep", tags=tags)
    db.close()
    rep = apply_reviews(store, ReviewApplyConfig(db=dbfile), show_progress=False)
    assert rep["graph_tags_rows"] == 3
    assert rep["tags_not_in_graph"] == {"rows": 1, "tags": {"dgo": 1}, "graph": graph}
    stored = {i: t for i, t in zip(*store.open().to_table(columns=["id", "rev_tags"]).to_pydict().values())}
    assert stored[rows[1]["id"]] == ["dgo", "wn:02121620"]  # kept as given, only reported
