"""An empty concept graph is refused where it would do harm: `graph build` with nothing to build
from, `graph tag --overwrite` (it would blank every row's tags); and `graph build` says what each
phase took (audit vector #14, graph bullets)."""

from __future__ import annotations

import re
import shutil

import pytest
from typer.testing import CliRunner

USER_CONCEPTS = "concept,parent,aliases\nanimal,,\ndog,animal,puppy\ncat,animal,kitten\ngiraffe,animal,\nbus,,\npizza,,\n"


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_build_with_no_source_or_no_concepts_is_refused(tmp_path):
    from cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["graph", "build", "--out", str(tmp_path / "g"), "--no-wordnet", "--no-zh"])
    assert r.exit_code == 2 and "nothing to build the graph from" in _flat(r.output), r.output
    assert not (tmp_path / "g" / "nodes.parquet").exists()
    # a --user file that is not there: said before WordNet loads (it came after ~30 s of loading)
    r = runner.invoke(app, ["graph", "build", "--out", str(tmp_path / "g"), "--user", str(tmp_path / "nosuch.csv")])
    assert r.exit_code == 2 and f"user concept file not found: {tmp_path / 'nosuch.csv'}" in _flat(r.output), r.output
    assert "loaded WordNet" not in r.output and "wordnet" not in r.output.lower()
    empty = tmp_path / "empty.csv"
    empty.write_text("concept,parent\n")
    r = runner.invoke(app, ["graph", "build", "--out", str(tmp_path / "g"), "--no-wordnet", "--no-zh", "--user", str(empty)])
    assert r.exit_code == 2 and "no concepts" in _flat(r.output), r.output
    assert not (tmp_path / "g" / "nodes.parquet").exists()


def test_build_prints_each_phase_with_its_time(tmp_path):
    from cli.main import app

    users = tmp_path / "u.csv"
    users.write_text(USER_CONCEPTS)
    r = CliRunner().invoke(app, ["graph", "build", "--out", str(tmp_path / "g"), "--no-wordnet", "--no-zh", "--user", str(users)])
    assert r.exit_code == 0, r.output
    flat = _flat(r.output)
    assert len(re.findall(r"\(\d+\.\ds, \d+\.\ds in all\)", flat)) == 4, r.output  # (this phase, since the start)
    at = [flat.find(p) for p in ("user concepts", "checked: 6 nodes", "wrote nodes and edges", "report written")]
    assert -1 not in at and at == sorted(at), r.output


def test_tag_overwrite_with_an_empty_graph_keeps_the_tags(ray_session, coco_store, tmp_path):
    from cli.main import app
    from curation.runner import run_stage
    from curation.store import Store
    from graph.concepts import ConceptGraph
    from pipelines.graph import GraphTagStage

    users = tmp_path / "u.csv"
    users.write_text(USER_CONCEPTS)
    runner = CliRunner()
    assert (
        runner.invoke(app, ["graph", "build", "--out", str(tmp_path / "g"), "--no-wordnet", "--no-zh", "--user", str(users)]).exit_code == 0
    )
    shutil.copytree(coco_store.uri, tmp_path / "x.lance")
    store = Store(str(tmp_path / "x.lance"))
    run_stage(store, GraphTagStage({"graph": str(tmp_path / "g")}), show_progress=False)
    before = store.to_arrow(columns=["tag_concepts"]).column("tag_concepts").to_pylist()
    assert sum(1 for t in before if t) >= 10  # real captions name dogs, cats, giraffes, buses, pizza

    ConceptGraph().finalize().save(tmp_path / "empty", graphml=False)  # e.g. written before builds refused it
    r = runner.invoke(app, ["graph", "tag", "-d", store.uri, "--graph", str(tmp_path / "empty"), "--overwrite"])
    assert r.exit_code == 2 and "has no concepts" in _flat(r.output), r.output
    with pytest.raises(ValueError, match="has no concepts"):  # the pipeline step too
        run_stage(store, GraphTagStage({"graph": str(tmp_path / "empty")}), overwrite=True, show_progress=False)
    assert store.to_arrow(columns=["tag_concepts"]).column("tag_concepts").to_pylist() == before
