"""An entity link graph (e.g. from an encyclopedia dump) pruned by PageRank, as concepts.

The report takes encyclopedia entities and their links and keeps the important ones by
PageRank. The file is a table of links ``source,target[,kind]`` (CSV, TSV or Parquet): every
link counts for PageRank; links of kind ``is_a`` / ``category`` / ``parent`` (``source`` is a
kind of ``target``) also become hierarchy edges. Entities whose PageRank is below the
``quantile`` are dropped. Kept entities that already name a graph node merge into it; the others
become ``links:`` concepts weighted by their normalised PageRank, under their ``is_a`` parents
or, with none, under a ``links:root`` node.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from graph.concepts import ConceptGraph

__all__ = ["HIERARCHY_KINDS", "read_links", "pagerank_prune", "merge_link_graph"]

HIERARCHY_KINDS = frozenset({"is_a", "category", "parent"})


def read_links(path: str | Path) -> pa.Table:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"link file not found: {p}")
    if p.suffix.lower() == ".parquet":
        t = pq.read_table(p)
    else:
        delim = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
        t = pacsv.read_csv(p, parse_options=pacsv.ParseOptions(delimiter=delim))
    missing = {"source", "target"} - set(t.column_names)
    if missing:
        raise ValueError(f"{p}: link table needs columns source and target (missing {sorted(missing)}); optional: kind")
    return t


def pagerank_prune(links: pa.Table, quantile: float = 0.5, alpha: float = 0.85) -> tuple[nx.DiGraph, dict[str, float]]:
    """The link graph restricted to entities with PageRank >= the ``quantile`` of all ranks."""
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    g = nx.DiGraph()
    src = [str(x) for x in links.column("source").to_pylist()]
    dst = [str(x) for x in links.column("target").to_pylist()]
    kinds = links.column("kind").to_pylist() if "kind" in links.column_names else [None] * len(src)
    for s, d, k in zip(src, dst, kinds):
        if s and d and s != d:
            g.add_edge(s, d, kind=(k or "link"))
    if g.number_of_nodes() == 0:
        return g, {}
    pr = nx.pagerank(g, alpha=alpha)
    cut = float(np.quantile(np.fromiter(pr.values(), float), quantile))
    # strictly above the cut (with a float tolerance): entities tied at the bottom go together
    keep = [n for n, r in pr.items() if quantile == 0 or r > cut * (1 + 1e-9)]
    return g.subgraph(keep).copy(), {n: pr[n] for n in keep}


def merge_link_graph(graph: ConceptGraph, path: str | Path, *, quantile: float = 0.5) -> dict[str, int]:
    """Prune the link file by PageRank and merge the kept entities into ``graph`` (in place)."""
    links = read_links(path)
    kept, pr = pagerank_prune(links, quantile)
    if not pr:
        return {"entities": 0, "kept": 0, "merged": 0, "edges": 0}
    top = max(pr.values())
    node_of: dict[str, str] = {}
    merged = 0
    for ent in kept.nodes:
        hit = graph.resolve(ent)
        nid = hit[0] if hit else f"links:{ent.lower().replace(' ', '_')}"
        merged += bool(hit)
        weight = graph.g.nodes[nid]["weight"] if hit else round(1.0 + pr[ent] / top, 4)
        graph.add_concept(nid, graph.label(nid) if hit else ent, terms=[ent], source="links", weight=weight)
        node_of[ent] = nid
    edges = 0
    for s, d, k in kept.edges(data="kind"):
        if k in HIERARCHY_KINDS:
            graph.add_edge(node_of[d], node_of[s])
            edges += 1
    orphans = [n for e, n in node_of.items() if n.startswith("links:") and graph.g.in_degree(n) == 0]
    if orphans:
        graph.add_concept("links:root", "linked entities", source="links", terms=[])
        for n in orphans:
            if n != "links:root":
                graph.add_edge("links:root", n)
    graph.finalize()
    n_all = len({str(x) for c in ("source", "target") for x in links.column(c).to_pylist()})
    return {"entities": n_all, "kept": len(pr), "merged": merged, "edges": edges}
