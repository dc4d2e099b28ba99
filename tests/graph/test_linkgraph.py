"""A link graph pruned by PageRank: low-rank entities are removed, is_a links become hierarchy."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from graph.concepts import ConceptGraph
from graph.linkgraph import merge_link_graph, pagerank_prune


def _links():
    src, dst, kind = [], [], []
    hubs = ["Cat", "Dog", "Paris"]
    for i in range(30):  # many pages link to the hubs; nobody links to the pages
        for h in hubs[: 1 + i % 3]:
            src.append(f"page{i}")
            dst.append(h)
            kind.append("link")
    src += ["Persian cat", "Cat"]
    dst += ["Cat", "Dog"]
    kind += ["is_a", "link"]
    for _ in range(5):
        src.append("page0")
        dst.append("Persian cat")
        kind.append("link")
    return pa.table({"source": src, "target": dst, "kind": kind})


def test_pagerank_prune_removes_low_rank_nodes():
    kept, pr = pagerank_prune(_links(), quantile=0.5)
    assert {"Cat", "Dog", "Paris", "Persian cat"} <= set(kept.nodes)
    assert not any(n.startswith("page") for n in kept.nodes)  # pages nobody links to rank lowest
    full, _ = pagerank_prune(_links(), quantile=0.0)
    assert full.number_of_nodes() == 34


def test_merge_link_graph(tmp_path):
    pq.write_table(_links(), tmp_path / "links.parquet")
    g = ConceptGraph()
    g.add_concept("wn:cat", "cat", source="wordnet")
    r = merge_link_graph(g, tmp_path / "links.parquet", quantile=0.5)
    assert r["entities"] == 34 and r["kept"] >= 4 and r["merged"] == 1 and r["edges"] == 1
    assert g.node("wn:cat")["source"] == "wordnet+links"  # "Cat" merged into the existing node
    (persian,) = g.resolve("Persian cat")
    assert g.parents(persian) == ["wn:cat"]  # is_a link -> hierarchy edge
    (paris,) = g.resolve("Paris")
    assert g.parents(paris) == ["links:root"] and g.node(paris)["weight"] > 1.0
    assert not g.resolve("page1")
