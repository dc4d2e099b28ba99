"""Suggestions for the tag field: concept labels (English and Chinese) looked up by prefix.

Why an index of its own: the tag field stores concept ids (``wn:08674251``) that nobody can
type from memory; the annotator types a word in either language and picks the concept. The
names come from the queue's payloads (``tag_labels``, looked up in the graph when the items
were mined) and, when the server was given a concept graph, from all of its nodes. Prefix
search over sorted keys (bisect), so a keystroke costs microseconds even over the 82k WordNet
nouns. The index is rebuilt when the queue grows (a new ``mine``), otherwise kept.
"""

import bisect
import threading
from pathlib import Path
from typing import Any

from curation.reviewdb import ReviewDB

__all__ = ["TagIndex", "graph_labels"]

# a query matches at most this many keys before ranking (a one-letter prefix matches thousands)
_CANDIDATES = 400


def graph_labels(graph: str | None) -> dict[str, dict[str, str]]:
    """Concept id -> ``{"en", "zh"}`` for every node of a graph folder's ``nodes.parquet``
    (empty without one: the queue's own labels still serve)."""
    nodes = Path(graph) / "nodes.parquet" if graph else None
    if nodes is None or not nodes.is_file():
        return {}
    import pyarrow.parquet as pq

    cols = [c for c in ("id", "label_en", "label_zh") if c in pq.read_schema(nodes).names]
    t = pq.read_table(nodes, columns=cols)
    en = t.column("label_en").to_pylist() if "label_en" in cols else [""] * t.num_rows
    zh = t.column("label_zh").to_pylist() if "label_zh" in cols else [""] * t.num_rows
    return {str(i): {"en": e or "", "zh": z or ""} for i, e, z in zip(t.column("id").to_pylist(), en, zh)}


class TagIndex:
    """Prefix search over concept labels (and ids), queue labels ranked before graph-only ones."""

    def __init__(self, db: ReviewDB, graph: str | None):
        self.db, self.graph = db, graph
        self._lock = threading.Lock()
        self._built_for: int | None = None
        self._graph: dict[str, dict[str, str]] | None = None
        self._keys: list[tuple[str, str]] = []
        self._labels: dict[str, dict[str, str]] = {}
        self._queued: set[str] = set()

    def search(self, q: str, limit: int) -> list[dict[str, str]]:
        self._refresh()
        q = q.strip().casefold()
        if not q:
            return []
        keys, found = self._keys, {}
        at = bisect.bisect_left(keys, (q, ""))
        while at < len(keys) and len(found) < _CANDIDATES and keys[at][0].startswith(q):
            found.setdefault(keys[at][1], keys[at][0])
            at += 1
        ranked = sorted(found, key=lambda cid: self._rank(cid, q))
        return [{"id": cid, **self._labels[cid]} for cid in ranked[:limit]]

    def _rank(self, cid: str, q: str) -> tuple:
        # the whole label starting with the query first, then concepts already in the queue,
        # then shorter (more general) labels
        lab = self._labels[cid]
        whole = lab["en"].casefold().startswith(q) or lab["zh"].startswith(q)
        return (not whole, cid not in self._queued, len(lab["en"] or lab["zh"]), cid)

    def _refresh(self) -> None:
        """Rebuild when the queue has grown since the last build (new items, new labels)."""
        total = self.db.counters().get("items_total", 0)
        with self._lock:
            if total == self._built_for:
                return
            if self._graph is None:
                self._graph = graph_labels(self.graph)
            queued = self.db.tag_labels()
            labels = {**self._graph, **queued}
            self._keys = sorted({k for cid, lab in labels.items() for k in _keys(cid, lab)})
            self._labels, self._queued, self._built_for = labels, set(queued), total


def _keys(cid: str, lab: dict[str, Any]) -> list[tuple[str, str]]:
    """What a query may start with: the id, each label, and each word of the English label."""
    en, zh = lab["en"].casefold(), lab["zh"]
    words = en.replace("-", " ").replace("_", " ").split()
    return [(k, cid) for k in {cid.casefold(), en, zh, *words} if k]
