"""The concept graph: a directed acyclic graph of concepts, edges parent -> child.

Every source (WordNet, user files, a pruned link graph, tags mined from captions) produces or
edits one :class:`ConceptGraph`; they are merged by node id. A node carries:

- ``id``: stable, prefixed by its source (``wn:02084071``, ``user:hot-pot``, ``mined:c3``);
- ``label_en`` / ``label_zh``: display names (``label_zh`` is ``""`` when no source gives one);
- ``aliases``: synonyms (WordNet lemmas, user aliases, Cilin synonyms of the Chinese label);
- ``terms``: the strings that *tag* this concept in captions. Usually the label and aliases, but
  a WordNet lemma with several senses ("dog": animal, frump, hot dog...) tags only its most
  frequent sense, so one word never tags a dozen unrelated concepts;
- ``source``: where it came from (``wordnet``, ``user``, ``links``, ``mined``, joined with ``+``);
- ``depth``: hops from the nearest root (recomputed by :meth:`ConceptGraph.finalize`);
- ``weight``: a user's up/down-weight (1.0 by default); resampling multiplies the prior by it.

On disk a graph is a folder: ``nodes.parquet`` and ``edges.parquet`` (the documented, round-trip
format), ``graph.graphml`` (for Gephi, Cytoscape, igraph: list attributes joined with ``|``) and
``meta.json`` (counts and a content digest that identifies the graph in checkpoints).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import UserError

__all__ = [
    "ConceptGraph",
    "GraphCycleError",
    "UnknownParentError",
    "NODE_SCHEMA",
    "EDGE_SCHEMA",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1

NODE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label_en", pa.string()),
        pa.field("label_zh", pa.string()),
        pa.field("aliases", pa.list_(pa.string())),
        pa.field("terms", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("depth", pa.int32()),
        pa.field("weight", pa.float64()),
    ]
)
EDGE_SCHEMA = pa.schema([pa.field("parent", pa.string(), nullable=False), pa.field("child", pa.string(), nullable=False)])


class GraphCycleError(UserError, ValueError):
    """The hierarchy has a cycle; ``cycle`` lists the node ids in order (first == last)."""

    def __init__(self, cycle: list[str], labels: list[str] | None = None):
        self.cycle = cycle
        shown = " -> ".join(f"{i} ({l})" if l and l != i else i for i, l in zip(cycle, labels or cycle))
        super().__init__(f"the concept hierarchy has a cycle: {shown}; remove one of these parent links")


class GraphFileError(UserError, ValueError):
    """A concept graph folder whose files cannot be read as a graph (not Parquet, columns
    missing): said in one line with the fix, not as a bug."""


class UnknownParentError(UserError, ValueError):
    """Concepts name parents that exist neither in the graph nor in the same file."""

    def __init__(self, missing: list[tuple[str, str, str]]):
        self.missing = missing  # (where, concept, parent)
        lines = [f"  {w}: concept {c!r} has unknown parent {p!r}" for w, c, p in missing[:20]]
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        super().__init__(
            "unknown parents (add the parent as a concept, fix its spelling, or use an existing id/label):\n" + "\n".join(lines) + more
        )


def _uniq(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for x in items:
        if x and x not in seen:
            seen[x] = None
    return list(seen)


@dataclass
class ConceptGraph:
    """A networkx ``DiGraph`` of concepts plus the operations every source needs."""

    g: nx.DiGraph

    def __init__(self, g: nx.DiGraph | None = None):
        self.g = g if g is not None else nx.DiGraph()
        self._term_index: dict[str, list[str]] | None = None

    # --- building ------------------------------------------------------------------------
    def add_concept(
        self,
        id: str,
        label_en: str,
        *,
        label_zh: str = "",
        aliases: Iterable[str] = (),
        terms: Iterable[str] | None = None,
        source: str = "user",
        weight: float = 1.0,
    ) -> str:
        """Add a node, or merge into the node with the same id (aliases and terms are unioned,
        a non-empty Chinese label fills an empty one, the newer weight wins, sources are joined)."""
        aliases = _uniq(aliases)
        terms = _uniq([label_en, *aliases, label_zh] if terms is None else terms)
        self._term_index = None
        if id in self.g:
            n = self.g.nodes[id]
            n["aliases"] = _uniq([*n["aliases"], *aliases])
            n["terms"] = _uniq([*n["terms"], *terms])
            if label_zh and not n["label_zh"]:
                n["label_zh"] = label_zh
            if weight != 1.0:
                n["weight"] = float(weight)
            if source not in n["source"].split("+"):
                n["source"] = f"{n['source']}+{source}"
            return id
        self.g.add_node(
            id,
            label_en=label_en,
            label_zh=label_zh or "",
            aliases=aliases,
            terms=terms,
            source=source,
            depth=0,
            weight=float(weight),
        )
        return id

    def add_edge(self, parent: str, child: str) -> None:
        if parent == child:
            raise GraphCycleError([parent, parent], [self.label(parent)] * 2)
        self.g.add_edge(parent, child)

    def merge(self, other: ConceptGraph) -> ConceptGraph:
        """Add every node and edge of ``other`` (same-id nodes merge, see :meth:`add_concept`)."""
        for nid, a in other.g.nodes(data=True):
            self.add_concept(
                nid, a["label_en"], label_zh=a["label_zh"], aliases=a["aliases"], terms=a["terms"], source=a["source"], weight=a["weight"]
            )
        self.g.add_edges_from(other.g.edges())
        return self

    # --- checks and derived attributes ------------------------------------------------------
    def find_cycle(self) -> list[str] | None:
        """One cycle as a closed list of ids (``[a, b, a]``), or None. Never loops forever:
        Kahn's peeling visits every edge once; only the nodes it cannot peel (those on or
        below a cycle) go to networkx's DFS to name one cycle."""
        indeg = dict(self.g.in_degree())
        stack = [n for n, d in indeg.items() if d == 0]
        succ = self.g._succ
        while stack:
            u = stack.pop()
            for v in succ[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    stack.append(v)
        stuck = [n for n, d in indeg.items() if d > 0]
        if not stuck:
            return None
        try:
            edges = nx.find_cycle(self.g.subgraph(stuck))
        except nx.NetworkXNoCycle:
            return None
        return [u for u, _ in edges] + [edges[0][0]]

    def check_acyclic(self) -> None:
        cycle = self.find_cycle()
        if cycle:
            raise GraphCycleError(cycle, [self.label(c) for c in cycle])

    def finalize(self) -> ConceptGraph:
        """Check the graph is a DAG and set every node's depth (hops from the nearest root)."""
        self.check_acyclic()
        depth = {n: 0 for n in self.roots()}
        queue = deque(depth)
        while queue:
            u = queue.popleft()
            for v in self.g.successors(u):
                if v not in depth:
                    depth[v] = depth[u] + 1
                    queue.append(v)
        nx.set_node_attributes(self.g, depth, "depth")
        return self

    # --- queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def __contains__(self, nid: str) -> bool:
        return nid in self.g

    def node(self, nid: str) -> dict[str, Any]:
        return {"id": nid, **self.g.nodes[nid]}

    def label(self, nid: str) -> str:
        return self.g.nodes[nid].get("label_en", nid) if nid in self.g else nid

    def display(self, nid: str) -> str:
        """What a person reads for a tag: "dog / 狗" (the Chinese label when there is one); ids
        stay the stored form, this is only for reports and the CLI."""
        if nid not in self.g:
            return nid
        a = self.g.nodes[nid]
        return f"{a['label_en']} / {a['label_zh']}" if a.get("label_zh") else a["label_en"]

    def roots(self) -> list[str]:
        return [n for n, d in self.g.in_degree() if d == 0]

    def parents(self, nid: str) -> list[str]:
        return list(self.g.predecessors(nid))

    def children(self, nid: str) -> list[str]:
        return list(self.g.successors(nid))

    def term_index(self) -> dict[str, list[str]]:
        """Lower-cased term -> ids of the nodes it tags (cached until the graph changes)."""
        if self._term_index is None:
            idx: dict[str, list[str]] = {}
            for nid, terms in self.g.nodes(data="terms"):
                for t in terms:
                    idx.setdefault(t.lower(), []).append(nid)
            self._term_index = idx
        return self._term_index

    def resolve(self, ref: str) -> list[str]:
        """Ids a user reference names: an id, else nodes tagged by it, else nodes labelled so."""
        if ref in self.g:
            return [ref]
        hits = self.term_index().get(ref.strip().lower())
        if hits:
            return list(hits)
        key = ref.strip().lower()
        return [n for n, l in self.g.nodes(data="label_en") if l.lower() == key]

    def neighbourhood(self, nid: str, radius: int = 1) -> dict[str, Any]:
        """A node, one path to a root, and its parents/children within ``radius`` hops."""
        path = [nid]
        while True:
            ps = self.parents(path[-1])
            if not ps or len(path) > 64:
                break
            path.append(min(ps, key=lambda p: self.g.nodes[p]["depth"]))
        up, down = {nid}, {nid}
        for _ in range(radius):
            up |= {p for n in up for p in self.g.predecessors(n)}
            down |= {c for n in down for c in self.g.successors(n)}
        return {
            "node": self.node(nid),
            "path_to_root": [(p, self.label(p)) for p in path],
            "parents": [(p, self.label(p)) for p in self.parents(nid)],
            "children": [(c, self.label(c)) for c in self.children(nid)],
            "ancestors_within_radius": len(up) - 1,
            "descendants_within_radius": len(down) - 1,
        }

    def stats(self) -> dict[str, Any]:
        """Counts a person checks after a build: sizes, sources, zh coverage, depth histogram."""
        g = self.g
        sources: Counter = Counter()
        for s in nx.get_node_attributes(g, "source").values():
            for part in s.split("+"):
                sources[part] += 1
        depth = Counter(nx.get_node_attributes(g, "depth").values())
        zh = sum(1 for _, z in g.nodes(data="label_zh") if z)
        terms = self.term_index()
        return {
            "nodes": g.number_of_nodes(),
            "edges": g.number_of_edges(),
            "roots": len(self.roots()),
            "leaves": sum(1 for _, d in g.out_degree() if d == 0),
            "multi_parent_nodes": sum(1 for _, d in g.in_degree() if d > 1),
            "nodes_with_zh_label": zh,
            "zh_label_share": round(zh / max(len(g), 1), 4),
            "terms": len(terms),
            "terms_shared_by_several_nodes": sum(1 for v in terms.values() if len(v) > 1),
            "max_depth": max(depth, default=0),
            "depth_histogram": {int(k): v for k, v in sorted(depth.items())},
            "nodes_by_source": dict(sources.most_common()),
        }

    # --- persistence -------------------------------------------------------------------
    def node_table(self) -> pa.Table:
        ids = list(self.g.nodes)
        cols: dict[str, list] = {"id": ids}
        for f in NODE_SCHEMA.names[1:]:
            cols[f] = [self.g.nodes[n][f] for n in ids]
        return pa.Table.from_pydict(cols, schema=NODE_SCHEMA)

    def edge_table(self) -> pa.Table:
        edges = list(self.g.edges)
        return pa.Table.from_pydict({"parent": [u for u, _ in edges], "child": [v for _, v in edges]}, schema=EDGE_SCHEMA)

    def digest(self) -> str:
        """Content hash of nodes and edges: identifies this graph in stage checkpoints."""
        h = hashlib.sha1()
        for t in (self.node_table(), self.edge_table()):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, t.schema) as w:
                w.write_table(t)
            h.update(sink.getvalue())
        return h.hexdigest()[:16]

    def save(self, path: str | Path, graphml: bool = True) -> Path:
        """Write ``nodes.parquet``, ``edges.parquet``, ``meta.json`` (and ``graph.graphml``)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.node_table(), out / "nodes.parquet")
        pq.write_table(self.edge_table(), out / "edges.parquet")
        if graphml:
            self.write_graphml(out / "graph.graphml")
        meta = {"format_version": FORMAT_VERSION, "digest": self.digest(), **self.stats()}
        (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        return out

    def write_graphml(self, path: str | Path) -> None:
        flat = nx.DiGraph()
        for n, a in self.g.nodes(data=True):
            flat.add_node(n, **{k: ("|".join(v) if isinstance(v, list) else v) for k, v in a.items()})
        flat.add_edges_from(self.g.edges)
        nx.write_graphml(flat, str(path))

    @classmethod
    def load(cls, path: str | Path) -> ConceptGraph:
        """Read a graph folder written by :meth:`save` (or the two Parquet files' folder)."""
        p = Path(path)
        if not (p / "nodes.parquet").exists():
            raise FileNotFoundError(f"no concept graph at {p} (expected nodes.parquet); build one with `curate graph build --out {p}`")
        if not (p / "edges.parquet").exists():
            raise FileNotFoundError(f"the concept graph at {p} has no edges.parquet: rebuild it with `curate graph build --out {p}`")
        nodes, edges = _read_graph_file(p, "nodes.parquet", ["id"]), _read_graph_file(p, "edges.parquet", ["parent", "child"])
        g = nx.DiGraph()
        fields = NODE_SCHEMA.names[1:]
        g.add_nodes_from(
            (nid, {f: (nodes[f][i] if nodes[f][i] is not None else ("" if f == "label_zh" else nodes[f][i])) for f in fields})
            for i, nid in enumerate(nodes["id"])
        )
        g.add_edges_from(zip(edges["parent"], edges["child"]))
        return cls(g)


def _read_graph_file(folder: Path, name: str, needs: list[str]) -> dict[str, list]:
    try:
        t = pq.read_table(folder / name)
    except (pa.ArrowInvalid, OSError) as e:
        raise GraphFileError(
            f"the concept graph at {folder} is unreadable ({name}: {str(e).splitlines()[0][:120]}): "
            f"rebuild it with `curate graph build --out {folder}`"
        ) from None
    if missing := [c for c in needs if c not in t.column_names]:
        raise GraphFileError(
            f"{folder / name} has no column {missing}: not a concept graph of this tool; rebuild it with `curate graph build`"
        )
    return t.to_pydict()
