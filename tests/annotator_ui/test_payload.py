"""The review payload as pydantic models (engines/active/payload.py) and the app's routers.

Why: ``mine`` writes the payload, the review database keeps it as JSON, the web app reads it back;
the models are the one definition both sides use. A mined payload must survive the round trip
unchanged, and a payload with fewer keys (gold items, older queues) must still serve.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from annotator_ui.app import AppSettings, app_routes, create_app
from annotator_ui.routes import admin, auth, images, review
from curation.reviewdb import ReviewDB
from engines.active.mining import MineConfig, mine
from engines.active.payload import ReviewItemPublic, ReviewPayload
from engines.active.rules import DEFAULT_RULES
from tests.engines.active.test_active import _table
from tests.helpers import PASSWORD

MINED_KEYS = {
    "row_id",
    "pos",
    "caption",
    "lang",
    "other_captions",
    "signals",
    "ocr_text",
    "hard_reasons",
    "hardness",
    "pseudo",
    "verifier",
    "neighbours",
    "concept",
    "quality_bin",
}
PUBLIC_KEYS = [
    "id",
    "row_id",
    "lease_expires",
    "caption",
    "other_captions",
    "signals",
    "ocr_text",
    "hard_reasons",
    "pseudo",
    "verifier",
    "neighbours",
    "concept",
]
ADMIN_KEYS = PUBLIC_KEYS + ["status", "gold", "needed", "done_count"]


@pytest.fixture(scope="module")
def mined() -> list[dict]:
    items, _ = mine(_table(), DEFAULT_RULES, MineConfig(n=20, neighbours=2))
    return items


def test_mined_payload_round_trips_through_the_model(mined):
    assert mined and any(it["payload"]["ocr_text"] for it in mined)
    for it in mined:
        p = it["payload"]
        assert set(p) == MINED_KEYS  # the stored keys; the queueing job adds ``version``
        assert json.loads(json.dumps(p)) == p  # plain JSON, as the database stores it
        model = ReviewPayload.model_validate(p)
        assert model.model_dump(exclude={"version"}) == p
        assert model.pseudo is not None and model.verifier is not None and len(model.neighbours) == 2
        stamped = {**p, "version": 3}  # what pipelines.review stores
        assert ReviewPayload.model_validate_json(json.dumps(stamped)).model_dump() == stamped


def test_public_item_from_a_bare_payload_takes_the_defaults():
    item = {"id": 7, "row_id": "r1", "lease_expires": 1.5, "payload": {}}
    out = ReviewItemPublic.of(item).model_dump()
    assert list(out) == PUBLIC_KEYS
    assert out == {
        "id": 7,
        "row_id": "r1",
        "lease_expires": 1.5,
        "caption": "",
        "other_captions": [],
        "signals": {},
        "ocr_text": None,
        "hard_reasons": [],
        "pseudo": {},
        "verifier": {},
        "neighbours": [],
        "concept": None,
    }
    assert ReviewPayload.model_validate({"caption": None, "unknown_key": 1}).caption == ""


@pytest.fixture
def served(tmp_path, mined):
    db = ReviewDB(str(tmp_path / "review.sqlite"))
    db.add_user("admin", PASSWORD, "admin")
    db.enqueue(
        [
            {**mined[0], "priority": 3.0},
            {"row_id": "bare", "priority": 2.0, "payload": {}},
            {"row_id": "few", "priority": 1.0, "payload": {"row_id": "few", "caption": "only a caption"}},
        ],
        "b1",
    )
    app = create_app(AppSettings(db_url=db.url, gold_rate=0.0), db)
    c = TestClient(app)
    r = c.post("/api/login", json={"username": "admin", "password": PASSWORD})
    c.headers["x-csrf-token"] = r.json()["csrf"]
    yield app, c, db
    db.close()


def test_payloads_with_and_without_optional_keys_serve(served, mined):
    app, c, db = served
    seen = {}
    for _ in range(3):
        assert c.get("/", headers={"accept": "text/html"}).status_code == 200  # the page renders it
        it = c.get("/api/next").json()["item"]
        assert list(it) == PUBLIC_KEYS
        adm = c.get(f"/api/items/{it['id']}").json()["item"]
        assert list(adm) == ADMIN_KEYS and adm["status"] == "open" and adm["gold"] is False
        seen[it["row_id"]] = it
        assert c.post(f"/api/items/{it['id']}/skip").status_code == 200
        with db.tx() as t:  # the next call serves the next item, not the one just skipped
            t.exec("UPDATE items SET priority = priority - 100 WHERE id = ?", (it["id"],))
    p = mined[0]["payload"]
    full = seen[p["row_id"]]
    assert {k: full[k] for k in PUBLIC_KEYS[3:]} == {k: p[k] for k in PUBLIC_KEYS[3:]}
    assert seen["bare"]["caption"] == "" and seen["bare"]["pseudo"] == {} and seen["bare"]["neighbours"] == []
    assert seen["few"]["caption"] == "only a caption" and seen["few"]["verifier"] == {}


def test_every_router_is_served_by_the_app(served):
    app = served[0]
    routes = {(r.path, frozenset(r.methods or ())): r.endpoint for r in app_routes(app) if getattr(r, "endpoint", None)}
    for module in (auth, review, images, admin):
        own = [(r.path, frozenset(r.methods)) for r in module.router.routes]
        assert own, module.__name__
        for key in own:
            assert key in routes, (module.__name__, key)
            assert routes[key].__module__ == module.__name__


def test_tags_show_concept_names_with_the_id_in_a_tooltip(tmp_path):
    """Tags were bare ids (``wn:02084071``): queueing adds the graph's English and Chinese
    names to the payload, the page shows them (id as the tooltip); a payload queued before,
    or an id the graph lacks, shows the id."""
    from curation.store import Store
    from graph.concepts import ConceptGraph
    from pipelines.review import ReviewMineConfig, _graph_for_labels, add_tag_labels

    g = ConceptGraph()
    g.add_concept("wn:02084071", "dog", label_zh="狗")
    g.add_concept("wn:02121620", "cat <feline>")
    g.save(tmp_path / "graph")
    pseudo = {"decision": "keep", "tags": ["wn:02084071", "wn:02121620", "kw:sofa"]}
    items = [
        {"row_id": "named", "priority": 2.0, "payload": {"row_id": "named", "pseudo": pseudo, "concept": "wn:02084071"}},
        {"row_id": "plain", "priority": 1.0, "payload": {"row_id": "plain", "caption": "x"}},
    ]
    assert add_tag_labels(items, str(tmp_path / "graph")) == 1 and add_tag_labels(items, None) == 0
    assert items[0]["payload"]["tag_labels"] == {"wn:02084071": {"en": "dog", "zh": "狗"}, "wn:02121620": {"en": "cat <feline>", "zh": ""}}
    assert "tag_labels" not in items[1]["payload"]
    model = ReviewPayload.model_validate(items[0]["payload"])
    assert model.model_dump()["tag_labels"] == items[0]["payload"]["tag_labels"]
    # where the graph comes from: the option, else the dataset's graph_tag stage record
    store = Store(str(tmp_path / "ds.lance"))
    store.write_json("stage_fingerprints.json", {"graph_tag": {"config": {"graph": "/g/from/tagging"}}})
    assert _graph_for_labels(store, ReviewMineConfig()) == "/g/from/tagging"
    assert _graph_for_labels(store, ReviewMineConfig(graph="/mine")) == "/mine"

    db = ReviewDB(str(tmp_path / "review.sqlite"))
    db.add_user("alice", PASSWORD)
    old = {"row_id": "old", "priority": 0.5, "payload": {"row_id": "old", "pseudo": {"decision": "drop", "tags": ["wn:02084071"]}}}
    db.enqueue([*items, old], "b1")
    c = TestClient(create_app(AppSettings(db_url=db.url, gold_rate=0.0), db))
    c.post("/api/login", json={"username": "alice", "password": PASSWORD})
    html = c.get("/").text
    assert '<li title="wn:02084071" data-id="wn:02084071">dog <span lang="zh">狗</span></li>' in html
    assert '<li title="wn:02121620" data-id="wn:02121620">cat &lt;feline&gt;</li>' in html
    assert '<li title="kw:sofa" data-id="kw:sofa">kw:sofa</li>' in html
    assert 'id="concept" title="wn:02084071">dog &middot; 狗</span>' in html
    assert 'value="wn:02084071, wn:02121620, kw:sofa"' in html  # the form still posts ids
    with db.tx() as t:
        t.exec("UPDATE items SET priority = -1 WHERE row_id IN ('named', 'plain')")
        t.exec("UPDATE items SET lease_user = NULL, lease_expires = 0")
    html = c.get("/").text  # a payload queued before names existed: the id is the name
    assert 'data-item="3"' in html and '<li title="wn:02084071" data-id="wn:02084071">wn:02084071</li>' in html
    db.close()
