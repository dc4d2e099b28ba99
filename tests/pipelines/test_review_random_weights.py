"""Random CLIP weights never drive a decision silently (real Lance + Ray): the profiling stage
records that its tiny model was randomly initialised, and then review mining, review apply (reward
head, keep head, thresholds) and retrieval refuse its embeddings with one line naming the column
group, why and the fix; with ``--allow-random-weights`` they run and mark what they made."""

from __future__ import annotations

import json

import lance
import pytest
from typer.testing import CliRunner

from cli.main import app
from curation.reviewdb import ReviewDB
from curation.store import Store
from engines.vector.retrieval import RandomWeightsError, Retriever
from pipelines.review import ReviewApplyConfig, ReviewMineConfig, apply_reviews, mine_queue
from tests.helpers import PASSWORD, add_clip_sim_rule, coco_rows, samples_table


@pytest.fixture(scope="module")
def random_clip_store(tmp_path_factory, coco_dir, ray_session) -> Store:
    """24 COCO photos profiled by the CLIP stage with a randomly initialised tiny model (shared by
    the tests here: each only adds columns or state, and each builds what it reads)."""
    from pipelines.profile import ProfileConfig, run_profile

    uri = str(tmp_path_factory.mktemp("random-clip") / "ds.lance")
    lance.write_dataset(samples_table(coco_rows(coco_dir, limit=24)), uri, max_rows_per_file=12)
    store = Store(uri)
    cfg = ProfileConfig(stages=["clip"], clip={"model": {"backend": "hf_clip", "random_init": True}})
    run_profile(store, cfg, show_progress=False)
    assert json.loads((store.state_dir / "profiling" / "models.json").read_text())["prof_clip"]["random_weights"] is True
    return store


def _one_error_line(out) -> str:
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output and out.exception is None or isinstance(out.exception, SystemExit), out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    joined = " ".join(" ".join(lines).split())  # rich wraps long lines at the terminal width
    assert joined.startswith("error: "), out.output
    return joined


def test_review_loop_refuses_random_embeddings_unless_told_and_then_marks_them(random_clip_store, tmp_path):
    store = random_clip_store
    add_clip_sim_rule(store)
    db = str(tmp_path / "review.sqlite")
    cfg = ReviewMineConfig(n=24, min_hardness=0.0, double_share=0.0, db=db)

    # refused before anything is read or queued
    with pytest.raises(RandomWeightsError) as e:
        mine_queue(store, cfg, show_progress=False)
    msg = str(e.value)
    assert msg.startswith("review mining refused: column group 'prof_clip'") and "\n" not in msg
    assert "prof_clip_image" in msg and "prof_clip_sim" in msg and "randomly initialised weights" in msg
    assert "real weights" in msg and "--allow-random-weights" in msg
    assert not (tmp_path / "review.sqlite").exists()
    # the command line: one line, no traceback
    line = _one_error_line(CliRunner().invoke(app, ["review", "mine", "--dataset", store.uri, "--db", db, "--min-hardness", "0"]))
    assert "review mining refused: column group 'prof_clip'" in line and "--allow-random-weights" in line

    # told: it runs, and the summary and every payload say which inputs were random
    s = mine_queue(store, cfg.model_copy(update={"allow_random_weights": True}), show_progress=False)
    assert s["queued"] == 24 and {"prof_clip_image", "prof_clip_sim"} <= set(s["random_derived"])
    saved = json.loads((store.state_dir / "review" / f"mine-{s['batch']}.json").read_text())
    assert saved["random_derived"] == s["random_derived"]
    rdb = ReviewDB(db)
    ann = rdb.add_user("ann", PASSWORD)
    k = 0
    while (it := rdb.next_item(ann)) is not None:
        assert "prof_clip_image" in it["payload"]["random_derived"]
        rdb.submit(ann, it["id"], "keep" if k % 3 else "drop")
        k += 1
    assert k == 24

    # apply: refused without the flag, nothing changes
    v0 = store.open().version
    with pytest.raises(RandomWeightsError, match=r"^review apply \(reward head, keep head, thresholds\) refused: column group 'prof_clip'"):
        apply_reviews(store, ReviewApplyConfig(db=db, min_labels=4), show_progress=False)
    assert store.open().version == v0 and not (store.state_dir / "review" / "reward_head.json").exists()
    line = _one_error_line(CliRunner().invoke(app, ["review", "apply", "--dataset", store.uri, "--db", db]))
    assert "review apply (reward head, keep head, thresholds) refused" in line

    # told: the heads, thresholds and the report carry the mark; the keep head is what it is
    rep = apply_reviews(store, ReviewApplyConfig(db=db, min_labels=4, allow_random_weights=True), show_progress=False)
    assert store.open().version > v0 and "prof_clip_image" in rep["random_derived"]
    head = json.loads((store.state_dir / "review" / "reward_head.json").read_text())
    assert "prof_clip_image" in head["meta"]["random_derived"] and "prof_clip_sim" in head["meta"]["random_derived"]
    sim_rule = next(t for t in rep["thresholds"] if t["column"] == "prof_clip_sim")
    assert sim_rule["note"].startswith("RANDOM-DERIVED signal") and "random" in sim_rule["random_derived"]
    assert "random_derived" in open(rep["report_html"], encoding="utf-8").read()
    assert "aesthetic_head" not in rep and not (store.state_dir / "review" / "aesthetic_head.safetensors").exists()
    kh = rep["keep_head"]
    assert kh["name"] == "keep-probability head" and kh["scale"] == "0..1" and "prof_clip_image" in kh["random_derived"]
    from engines.active.loop import load_keep_head
    from engines.profiling.aesthetics import load_head

    assert load_keep_head(kh["path"]).meta["random_derived"] == kh["random_derived"]
    with pytest.raises(ValueError, match="NOT-AN-AESTHETICS-HEAD"):
        load_head(kh["path"])
    assert "prof_aesthetic" not in store.open().schema.names  # nothing wrote it into the aesthetics column

    # rev_reward came from a head fitted on random inputs: the next mine names it too
    with pytest.raises(RandomWeightsError, match="rev_reward"):
        mine_queue(store, cfg, show_progress=False)


def test_retrieval_refuses_an_index_over_random_embeddings_unless_told(random_clip_store):
    from pipelines.index import IndexBuildConfig, build_index

    store = random_clip_store
    build_index(store, IndexBuildConfig(column="prof_clip_image", allow_random_weights=True), show_progress=False)
    with pytest.raises(RandomWeightsError, match=r"^retrieval over prof_clip_image refused: column group 'prof_clip'"):
        Retriever(store, "prof_clip_image")
    row = store.open().to_table(columns=["id"]).column("id")[0].as_py()
    line = _one_error_line(CliRunner().invoke(app, ["search", "--dataset", store.uri, "--column", "prof_clip_image", "--id", row]))
    assert "retrieval over prof_clip_image refused" in line and "--allow-random-weights" in line

    r = Retriever(store, "prof_clip_image", allow_random_weights=True)
    hits = r.by_id(row, k=3)
    assert len(hits) == 3 and all(h["random_weights"] is True for h in hits)
    assert "prof_clip_image" in r.random_derived
    out = CliRunner().invoke(
        app, ["search", "--dataset", store.uri, "--column", "prof_clip_image", "--id", row, "--k", "3", "--allow-random-weights"]
    )
    assert out.exit_code == 0 and "RANDOM" in out.output, out.output
    # each hit says what it is: its file and caption, not an id alone
    rows = {r["id"]: r for r in store.open().to_table(columns=["id", "source_key"]).to_pylist()}
    assert all(rows[h["id"]]["source_key"][:12] in out.output for h in hits), out.output


def test_export_rules_refuse_random_scores_unless_told(random_clip_store, tmp_path):
    """An export rule on prof_clip_sim (random CLIP) would drop rows by noise: refused before Ray,
    one line; allowed with the flag, and then noted as random-derived. A rule on a plain column runs."""
    from pipelines.export import ExportRule, check_rules

    store = random_clip_store
    ds = store.open()
    rule = ExportRule(name="clip", where="prof_clip_sim < 0.2")
    with pytest.raises(RandomWeightsError, match="export rule 'clip'.*column group 'prof_clip'"):
        check_rules(ds, [rule], store=store)
    notes: list[str] = []
    assert check_rules(ds, [rule], notes, store=store, allow_random=True) == [rule]
    assert notes and "RANDOM-DERIVED" in notes[0] and "prof_clip_sim" in notes[0]
    plain = ExportRule(name="small", where="width < 10")
    assert check_rules(ds, [plain], store=store) == [plain]
    cfg = tmp_path / "rules.yaml"
    cfg.write_text("rules:\n  - {name: clip, where: 'prof_clip_sim < 0.2'}\n")
    out = CliRunner().invoke(app, ["export", "--dataset", store.uri, "--out", str(tmp_path / "o.lance"), "--config", str(cfg)])
    assert "export rule 'clip'" in _one_error_line(out) and "--allow-random-weights" in out.output
