"""Readable tags where a person looks (issue 20): `curate info`'s tag summary names concepts by
English and Chinese label, with the stored id beside them."""

from __future__ import annotations

import shutil

import pyarrow as pa
from typer.testing import CliRunner


def _tiny_graph(path):
    from graph.concepts import ConceptGraph

    g = ConceptGraph()
    g.add_concept("wn:00015388", "animal", label_zh="动物", source="wordnet")
    g.add_concept("wn:02084071", "dog", label_zh="狗", source="wordnet")
    g.add_concept("wn:02121620", "cat", label_zh="猫", source="wordnet")
    g.add_edge("wn:00015388", "wn:02084071")
    g.add_edge("wn:00015388", "wn:02121620")
    return g.finalize().save(path, graphml=False)


def _tags(n: int) -> pa.Table:
    """Every row inherits animal; dogs on two rows of three, a cat on one."""
    concepts = [["wn:02084071", "wn:00015388"] if i % 3 else ["wn:02121620", "wn:00015388"] for i in range(n)]
    direct = [[True, False] for _ in range(n)]
    return pa.table({"tag_concepts": concepts, "tag_direct": direct})


def test_tag_summary_counts_named_concepts_with_labels(tmp_path):
    from graph.summary import read_labels, tag_summary, tagging_graph

    labels = read_labels(_tiny_graph(tmp_path / "g"))
    rows = tag_summary(_tags(9), labels, top=5)
    assert [(r.id, r.en, r.zh, r.direct, r.rows) for r in rows] == [("wn:02084071", "dog", "狗", 6, 6), ("wn:02121620", "cat", "猫", 3, 3)]
    assert all(r.id != "wn:00015388" for r in rows)  # inherited only: not a head concept of the summary
    assert read_labels(tmp_path / "missing") == {} and tag_summary(_tags(3), {}, 1)[0].en == ""
    assert tagging_graph({"graph_tag": {"config": {"graph": "/g"}}}) == "/g" and tagging_graph(None) is None


def test_curate_info_prints_tag_labels(coco_store, tmp_path):
    import lance

    from cli.main import app
    from curation.store import Store

    dst = tmp_path / "t.lance"
    shutil.copytree(coco_store.uri, dst, ignore=shutil.ignore_patterns("_curation"))
    store = Store(str(dst))
    ids = store.to_arrow(columns=["id"]).column("id")
    lance.dataset(str(dst)).merge(_tags(len(ids)).append_column("id", ids), "id")
    graph = _tiny_graph(tmp_path / "g")
    runner = CliRunner()
    out = runner.invoke(app, ["info", "--dataset", str(dst)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "wn:02084071" in out.output and "pass --graph" in out.output  # no graph known: ids still shown
    store.write_json("stage_fingerprints.json", {"graph_tag": {"config": {"graph": str(graph)}}})  # as the stage records it
    out = runner.invoke(app, ["info", "--dataset", str(dst)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if "wn:02084071" in x)
    assert "dog" in line and "狗" in line and "53" in line  # 80 rows, two of three carry a dog
