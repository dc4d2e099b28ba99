"""The closed loop on real Lance + Ray: mine -> annotate (API) -> apply -> new version, head, thresholds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lance
import numpy as np
import pytest

from curation.reviewdb import ReviewDB
from curation.store import Store
from pipelines.review import ReviewApplyConfig, ReviewMineConfig, apply_reviews, mine_queue
from tests.helpers import PASSWORD, add_clip_sim_rule, add_signals, coco_rows, samples_table


def human_says(signals: dict) -> str:
    """The hidden policy of our simulated reviewers: stricter on quality, lenient on similarity."""
    return "keep" if signals["prof_quality"] >= 0.6 and signals["prof_clip_sim"] >= 0.1 else "drop"


def test_mine_review_apply_closes_the_loop(tmp_path, coco_store, ray_session):
    uri = str(tmp_path / "ds.lance")
    shutil.copytree(Path(coco_store.uri), uri)
    add_signals(uri)
    store = Store(uri)
    add_clip_sim_rule(store)
    dbfile = str(tmp_path / "review.sqlite")
    summary = mine_queue(store, ReviewMineConfig(n=80, min_hardness=0.0, db=dbfile), show_progress=False)
    assert summary["queued"] == 80 and summary["criteria"]["near_threshold"] > 0
    assert "like_flagged" in summary["skipped_criteria"]

    db = ReviewDB(dbfile)
    users = [db.add_user("ann1", PASSWORD), db.add_user("ann2", PASSWORD)]
    truth, edited, flagged = {}, None, None
    k = 0
    while True:
        it = db.next_item(users[k % 2])
        if it is None:
            break
        sig = it["payload"]["signals"]
        dec = human_says(sig)
        truth[it["row_id"]] = dec
        caption = None
        if edited is None:
            caption, edited = "A reviewed caption; DROP TABLE items; --", it["row_id"]
        flag = dec == "drop" and flagged is None
        if flag:
            flagged = it["row_id"]
        db.submit(users[k % 2], it["id"], dec, caption=caption, flag=flag, tags=["coco"])
        k += 1
    assert len(truth) == 80
    v_before = store.open().version

    rep = apply_reviews(store, ReviewApplyConfig(db=dbfile), show_progress=False)
    ds = store.open()
    assert ds.version > v_before and rep["version_after"] == ds.version
    t = ds.to_table(
        columns=["id", "rev_decision", "rev_caption", "rev_flag", "rev_reviewer", "rev_votes", "rev_reward", "rev_tags", "prof_quality"]
    )
    got = dict(zip(t.column("id").to_pylist(), t.column("rev_decision").to_pylist()))
    assert got == truth
    caps = dict(zip(t.column("id").to_pylist(), t.column("rev_caption").to_pylist()))
    assert caps[edited] == "A reviewed caption; DROP TABLE items; --"
    assert sum(c is not None for c in caps.values()) == 1
    assert dict(zip(t.column("id").to_pylist(), t.column("rev_flag").to_pylist()))[flagged] is True
    votes = t.column("rev_votes").to_pylist()
    for who, v in zip(t.column("rev_reviewer").to_pylist(), votes):
        assert set(who.split(",")) <= {"ann1", "ann2"} and len(who.split(",")) == v
    assert 1 <= votes.count(2) <= 25 and len(db.double_annotated()) == votes.count(2)  # ~10% double-annotated
    # the reward head learned the reviewers' policy: kept rows score higher
    reward = np.array(t.column("rev_reward").to_pylist())
    keep = np.array([truth[i] == "keep" for i in t.column("id").to_pylist()])
    assert reward[keep].mean() > reward[~keep].mean() + 0.2
    # thresholds moved the way the humans lean: quality up from 0.45, similarity down from 0.2
    rules = {r["column"]: r["threshold"] for r in json.loads((store.state_dir / "review" / "thresholds.json").read_text())["rules"]}
    assert rules["prof_quality"] > 0.45 and rules["prof_clip_sim"] < 0.2
    assert Path(rep["report_html"]).read_text().count("data:image/png;base64") >= 2
    assert rep["pseudo_label_agreement"]["n"] == 80
    assert json.loads((store.state_dir / "review" / "graph_tags.json").read_text())["tags"][edited] == ["coco"]
    assert "cv_auc" in rep["reward_head"]
    # the head trained on the embeddings is what it is: a keep probability, not an aesthetics score
    from engines.active.loop import load_keep_head
    from engines.profiling.aesthetics import load_head

    keep_head = load_keep_head(rep["keep_head"]["path"])
    assert keep_head.dim == 32 and keep_head.meta["scale"] == rep["keep_head"]["scale"] == "0..1"
    assert "aesthetic_head" not in rep
    with pytest.raises(ValueError, match="NOT-AN-AESTHETICS-HEAD"):
        load_head(rep["keep_head"]["path"])
    # the next mine reads the new thresholds and does not queue reviewed rows again
    again = mine_queue(store, ReviewMineConfig(n=80, min_hardness=0.0, db=dbfile), show_progress=False)
    assert again["queued"] == 0
    assert {r["column"]: r["threshold"] for r in again["rules"]}["prof_quality"] == rules["prof_quality"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_mine_and_apply_through_a_postgresql_review_database(tmp_path, coco_dir, db_url, ray_session):
    """The same mine -> review -> apply code with the review state on a PostgreSQL server
    (the SQLite path is the test above): decisions land in the new Lance version, apply is audited."""
    rows = coco_rows(coco_dir, limit=16)
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    add_signals(uri)
    store = Store(uri)
    summary = mine_queue(store, ReviewMineConfig(n=16, min_hardness=0.0, double_share=0.0, db=db_url), show_progress=False)
    assert summary["queued"] == 16
    db = ReviewDB(db_url)
    ann = db.add_user("ann1", PASSWORD)
    truth = {}
    while (it := db.next_item(ann)) is not None:
        truth[it["row_id"]] = human_says(it["payload"]["signals"])
        db.submit(ann, it["id"], truth[it["row_id"]], caption="fixed 'caption' ?" if len(truth) == 1 else None)
    assert len(truth) == 16
    rep = apply_reviews(store, ReviewApplyConfig(db=db_url, min_labels=4), show_progress=False)
    t = store.open().to_table(columns=["id", "rev_decision", "rev_caption", "rev_reviewer"])
    assert dict(zip(t.column("id").to_pylist(), t.column("rev_decision").to_pylist())) == truth
    assert [c for c in t.column("rev_caption").to_pylist() if c] == ["fixed 'caption' ?"]
    assert set(t.column("rev_reviewer").to_pylist()) == {"ann1"}
    assert rep["version_after"] == store.open().version and db.audit_count("apply") == 1
    # applied again with no new decision: the dataset is left as it is (it had a new version with
    # nothing new in it for every apply)
    again = apply_reviews(store, ReviewApplyConfig(db=db_url, min_labels=4), show_progress=False)
    assert again["stage"]["status"] == "skipped" and again["version_after"] == rep["version_after"] == store.open().version
    db.close()


def test_a_misspelt_review_rule_is_refused_before_mining(tmp_path, coco_store, ray_session):
    """A user's rule on a column the dataset lacks stops mining with the column and the fix,
    instead of silently mining without it (the default rules are optional and only noted)."""
    from engines.active.rules import DEFAULT_RULES, MissingRuleColumn, Rule, save_rules
    from pipelines.review import review_dir

    uri = str(tmp_path / "ds.lance")
    shutil.copytree(Path(coco_store.uri), uri)
    add_signals(uri)
    store = Store(uri)
    typo = Rule(column="prof_qualty", op=">=", threshold=0.5)
    save_rules(review_dir(store) / "thresholds.json", [*DEFAULT_RULES, typo])
    with pytest.raises(MissingRuleColumn, match=r"prof_qualty .*did you mean prof_quality"):
        mine_queue(store, ReviewMineConfig(n=8, db=str(tmp_path / "r.sqlite")), show_progress=False)
    assert not (tmp_path / "r.sqlite").exists()
