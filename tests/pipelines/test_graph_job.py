"""The graph jobs end to end on a real Lance dataset with Ray: tag, resample, manifest, report, CLI."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner


def test_tag_and_resample_on_lance_with_ray(ray_session, coco_store, coco_graph_dir, tmp_path):
    from curation.config import RunContext
    from curation.runner import run_stage
    from curation.store import Store
    from pipelines.graph import GraphTagStage, ResampleStepConfig, run_resample

    shutil.copytree(coco_store.uri, tmp_path / "x.lance")
    store = Store(str(tmp_path / "x.lance"))
    res = run_stage(store, GraphTagStage({"graph": str(coco_graph_dir)}), show_progress=False)
    assert res.status == "committed" and res.fragments == 4 and res.stats.rows == 80
    t = store.to_arrow(columns=["id", "tag_concepts", "tag_scores", "tag_direct"])
    assert sum(1 for x in t.column("tag_concepts").to_pylist() if x) == 80
    assert res.stats.counters["tags"] == sum(len(x) for x in t.column("tag_concepts").to_pylist())
    again = run_stage(store, GraphTagStage({"graph": str(coco_graph_dir)}), show_progress=False)
    assert again.status == "skipped"

    results = run_resample(
        RunContext(store=store, show_progress=False), ResampleStepConfig(graph=str(coco_graph_dir), target_size=60, max_upsample=3)
    )
    r = results[-1]
    assert r.status == "committed" and r.extra["target_size"] == 60
    w = store.to_arrow(columns=["rs_weight", "rs_copies", "rs_stage"])
    assert sum(w.column("rs_copies").to_pylist()) == 60 and max(w.column("rs_copies").to_pylist()) <= 3
    man = pq.read_table(r.extra["manifest"])
    assert sum(man.column("copies").to_pylist()) == 60 and set(man.column("id").to_pylist()) <= set(t.column("id").to_pylist())
    html = open(r.extra["report"], encoding="utf-8").read()
    assert html.count("<img") >= 1 and "entropy" in html and "Rows with the largest weights" in html


def test_resample_without_tags_or_graph_is_a_clear_error(coco_store, tmp_path):
    from curation.config import RunContext
    from curation.store import Store
    from pipelines.graph import ResampleStepConfig, run_resample

    shutil.copytree(coco_store.uri, tmp_path / "y.lance")
    with pytest.raises(ValueError, match="pass --graph"):
        run_resample(RunContext(store=Store(str(tmp_path / "y.lance"))), ResampleStepConfig())


def test_cli_build_show_and_bad_user_file(tmp_path, coco_graph_dir):
    from cli.main import app

    runner = CliRunner()
    users = tmp_path / "u.csv"
    users.write_text("concept,parent,zh,weight\nstreet food,,小吃,2\nhot pot,street food,火锅,3\n", encoding="utf-8")
    out = tmp_path / "g2"
    r = runner.invoke(app, ["graph", "build", "--out", str(out), "--no-wordnet", "--no-zh", "--user", str(users)])
    assert r.exit_code == 0, r.output
    assert (out / "nodes.parquet").exists() and (out / "graph.graphml").exists() and (out / "report.html").exists()
    r = runner.invoke(app, ["graph", "show", "--graph", str(out), "--node", "火锅"])
    assert r.exit_code == 0 and "hot pot" in r.output and "street food" in r.output
    r = runner.invoke(app, ["graph", "show", "--graph", str(coco_graph_dir), "--node", "dog"])
    assert r.exit_code == 0 and "depth histogram" in r.output and "animal" in r.output
    bad = tmp_path / "cycle.csv"
    bad.write_text("concept,parent\nx,y\ny,x\n")
    r = runner.invoke(app, ["graph", "build", "--out", str(tmp_path / "g3"), "--no-wordnet", "--no-zh", "--user", str(bad)])
    assert r.exit_code == 2 and "cycle" in r.output
    r = runner.invoke(app, ["graph", "show", "--graph", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "curate graph build" in r.output


def test_pipeline_yaml_steps_validate(tmp_path):
    from curation.config import ConfigError, load_pipeline

    y = tmp_path / "p.yaml"
    y.write_text(
        f"dataset: {tmp_path}/d.lance\nsteps:\n"
        f"  - stage: graph_build\n    params: {{out: {tmp_path}/g, visual_only: true}}\n"
        f"  - stage: graph_tag\n    params: {{graph: {tmp_path}/g, decay: 0.3}}\n"
        f"  - stage: resample\n    params: {{graph: {tmp_path}/g, target_size: 1000, method: cap}}\n"
    )
    _, steps = load_pipeline(y)
    assert [n for n, _ in steps] == ["graph_build", "graph_tag", "resample"] and steps[1][1].decay == 0.3
    y.write_text(f"dataset: {tmp_path}/d.lance\nsteps:\n  - stage: resample\n    params: {{method: magic, target_sise: 3}}\n")
    with pytest.raises(ConfigError) as e:
        load_pipeline(y)
    assert "steps[0].params.method" in str(e.value) and "target_sise" in str(e.value)


def test_tag_corpus_counts_are_made_on_the_workers_and_equal_a_fit_on_the_driver(ray_session, coco_store, coco_graph_dir, monkeypatch):
    """graph_tag's BM25 statistics come from counts the workers make, one unit a fragment (no
    caption is read into the driver); summed, they give the idf of a fit over every caption."""
    import numpy as np

    import curation.runner as runner
    from graph.concepts import ConceptGraph
    from graph.tagging import TagConfig, Tagger
    from pipelines.graph import GraphTagConfig, corpus_idf

    real, calls = runner.execute_units, []
    monkeypatch.setattr(
        runner, "execute_units", lambda units, cls, *a, **kw: (calls.append((len(units), cls.__name__)), real(units, cls, *a, **kw))[1]
    )
    ds = coco_store.open()
    state = corpus_idf(coco_store, ds.version, GraphTagConfig(graph=str(coco_graph_dir)))
    assert calls == [(len(ds.get_fragments()), "_CaptionCounts")] and len(ds.get_fragments()) == 4

    fit = Tagger(ConceptGraph.load(coco_graph_dir), TagConfig())
    texts = [
        c["text"] for caps in ds.to_table(columns=["captions"]).column("captions").to_pylist() for c in caps or [] if c and c.get("text")
    ]
    fit.fit(texts)
    got = Tagger(ConceptGraph.load(coco_graph_dir), TagConfig()).scorer.load_state(state)
    assert got.n_docs == fit.scorer.n_docs == len(texts) == 400 and got.avgdl == fit.scorer.avgdl
    assert np.count_nonzero(fit.scorer.idf) > 100 and np.array_equal(got.idf, fit.scorer.idf)
