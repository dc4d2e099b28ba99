"""User concept files (CSV/JSONL) merged into a graph; bad files are rejected whole."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from graph.concepts import ConceptGraph, GraphCycleError, UnknownParentError
from graph.userfile import UserFileError, merge_user_concepts


def _small():
    g = ConceptGraph()
    g.add_concept("wn:animal", "animal", source="wordnet")
    g.add_concept("wn:dog", "dog", aliases=["domestic dog"], source="wordnet")
    g.add_concept("wn:food", "food", source="wordnet")
    g.add_edge("wn:animal", "wn:dog")
    return g.finalize()


def test_csv_merges_new_and_existing_concepts(tmp_path):
    g = _small()
    f = tmp_path / "c.csv"
    f.write_text(
        "concept,parent,aliases,zh,weight\n"
        "dog,,doggo|pup,狗,3\n"  # existing node: aliases, zh, weight merged
        "corgi,dog,welsh corgi,柯基,2\n"  # new, under an existing node by label
        "hot pot,food,hotpot,火锅,\n"
        "mala hot pot,hot pot,,麻辣火锅,1.5\n",  # parent defined in the same file
        encoding="utf-8",
    )
    r = merge_user_concepts(g, f)
    assert r == {"rows": 4, "added": 3, "merged": 1, "edges": 3}
    dog = g.node("wn:dog")
    assert dog["weight"] == 3 and dog["label_zh"] == "狗" and {"doggo", "pup", "domestic dog"} <= set(dog["aliases"])
    assert dog["source"] == "wordnet+user"
    (corgi,) = g.resolve("welsh corgi")
    assert g.parents(corgi) == ["wn:dog"] and g.node(corgi)["depth"] == 2
    assert nx.has_path(g.g, "wn:food", g.resolve("麻辣火锅")[0])


def test_jsonl_with_lists(tmp_path):
    g = _small()
    f = tmp_path / "c.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(x, ensure_ascii=False)
            for x in [
                {"concept": "robot dog", "parent": ["dog", "animal"], "aliases": ["robodog"], "weight": 5},
                {"concept": "trending thing", "id": "trend:1"},
            ]
        ),
        encoding="utf-8",
    )
    merge_user_concepts(g, f)
    (rd,) = g.resolve("robodog")
    assert set(g.parents(rd)) == {"wn:dog", "wn:animal"} and g.node(rd)["weight"] == 5
    assert "trend:1" in g and g.parents("trend:1") == []


def test_cycle_in_user_hierarchy_is_reported_and_nothing_merged(tmp_path):
    g = _small()
    before = set(g.g.nodes)
    f = tmp_path / "c.csv"
    f.write_text("concept,parent\nalpha,gamma\nbeta,alpha\ngamma,beta\n")
    with pytest.raises(GraphCycleError) as e:
        merge_user_concepts(g, f)
    assert {"user:alpha", "user:beta", "user:gamma"} == set(e.value.cycle)
    assert "alpha" in str(e.value) and "gamma" in str(e.value)
    assert set(g.g.nodes) == before  # all or nothing


def test_unknown_parent_names_row_and_parent(tmp_path):
    g = _small()
    f = tmp_path / "c.csv"
    f.write_text("concept,parent\ncorgi,dgo\n")
    with pytest.raises(UnknownParentError, match=r"c.csv:2: concept 'corgi' has unknown parent 'dgo'"):
        merge_user_concepts(g, f)
    assert "user:corgi" not in g


def test_bad_rows_listed_with_line_numbers(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("concept,weight,colour\n,1,red\ncat,-4,\n")
    with pytest.raises(UserFileError) as e:
        merge_user_concepts(_small(), f)
    msg = str(e.value)
    assert "line 2: concept" in msg and "line 3: weight" in msg and "colour" in msg
    j = tmp_path / "c.jsonl"
    j.write_text('{"concept": "x"}\nnot json\n[1]\n')
    with pytest.raises(UserFileError, match="line 2: not JSON"):
        merge_user_concepts(_small(), j)
    with pytest.raises(UserFileError, match="'concept' column"):
        (tmp_path / "h.csv").write_text("name\nx\n")
        merge_user_concepts(_small(), tmp_path / "h.csv")
