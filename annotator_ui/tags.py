"""Suggestions for the tag field: concept labels (English and Chinese) looked up by prefix; and
the check of the tags a decision stores.

Why an index of its own: the tag field stores concept ids (``wn:08674251``) that nobody can
type from memory; the annotator types a word in either language and picks the concept. The
names come from the queue's payloads (``tag_labels``, looked up in the graph when the items
were mined) and, when the server was given a concept graph, from all of its nodes. Prefix
search over sorted keys (bisect), so a keystroke costs microseconds even over the 82k WordNet
nouns. The index is rebuilt when the queue grows (a new ``mine``), otherwise kept.

Why decisions' tags are checked here (``resolve``): a tag that is no concept of the graph (a
typo, a free word) was stored and then did nothing when the decisions were applied. With a
graph, a tag must be a concept id or a concept's exact English or Chinese name (any case), and
is stored as the id; anything else is refused with close concepts to pick from. Without a graph
the server cannot tell a concept from a typo, and tags are stored as given (as before).
"""

import bisect
import difflib
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curation.reviewdb import ReviewDB

__all__ = ["TagIndex", "Resolved", "graph_labels", "graph_terms"]

# at most this many concepts are offered for an unknown tag (and listed for an ambiguous name)
SUGGESTIONS = 5

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


def graph_terms(graph: str | None) -> dict[str, str]:
    """Lower-case tagging term -> the one concept it tags, from a graph folder's ``terms``
    column (empty without one). A WordNet lemma tags only its most frequent sense, so this says
    which of the concepts labelled "dog" an annotator typing "dog" means: the animal."""
    nodes = Path(graph) / "nodes.parquet" if graph else None
    if nodes is None or not nodes.is_file():
        return {}
    import pyarrow.parquet as pq

    if "terms" not in pq.read_schema(nodes).names:
        return {}
    t = pq.read_table(nodes, columns=["id", "terms"])
    owners: dict[str, set[str]] = {}
    for cid, terms in zip(t.column("id").to_pylist(), t.column("terms").to_pylist()):
        for term in terms or ():
            owners.setdefault(term.casefold(), set()).add(str(cid))
    return {k: next(iter(v)) for k, v in owners.items() if len(v) == 1}


class Resolved(list):
    """The tags as concept ids (a list), with ``problems``: one ``{"tag", "reason", "concepts"}``
    per tag that could not be stored (``reason`` "unknown" with close concepts, or "ambiguous"
    with the concepts the name has)."""

    def __init__(self, ids: Iterable[str] = (), problems: list[dict[str, Any]] | None = None):
        super().__init__(ids)
        self.problems = problems or []


class TagIndex:
    """Prefix search over concept labels (and ids), queue labels ranked before graph-only ones;
    and :meth:`resolve`, the check of a decision's tags against the graph."""

    def __init__(self, db: ReviewDB, graph: str | None):
        self.db, self.graph = db, graph
        self._lock = threading.Lock()
        self._built_for: int | None = None
        self._graph: dict[str, dict[str, str]] | None = None
        self._terms: dict[str, str] = {}
        self._keys: list[tuple[str, str]] = []
        self._labels: dict[str, dict[str, str]] = {}
        self._names: dict[str, list[str]] = {}
        self._queued: set[str] = set()

    @property
    def checks(self) -> bool:
        """Whether decisions' tags are checked: only against a concept graph (``--graph``, or the
        one the dataset's tags were made with). Without one a tag is stored as given."""
        if not self.graph:
            return False
        self._refresh()
        return bool(self._graph)

    def labels(self, ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """Display names of the ids the index knows (the history page names chosen tags with them)."""
        self._refresh()
        return {i: self._labels[i] for i in ids if i in self._labels}

    def resolve(self, tags: Iterable[str], proposed: Iterable[str] = ()) -> Resolved:
        """A decision's tags as concept ids, each given as an id or as a concept's exact English or
        Chinese name (any case; "Dog", "狗" -> ``wn:02084071``), in order, without repeats.

        ``proposed``: the item's own proposed tags (what the form is filled with) are kept as
        they are when they name no concept (caption keywords mined without a graph): the
        annotator accepting the proposal is not refused. A name several concepts share goes to
        the one already in the queue, else the one the graph tags with that word (its most
        frequent sense), else it is ambiguous. Without a graph (``checks`` false) the tags come
        back exactly as given: the server cannot tell a concept from a typo (the behaviour
        before tags were checked)."""
        tags = list(tags)
        if not self.checks:
            return Resolved(tags)
        tags = [t.strip() for t in tags if t and t.strip()]
        keep = set(proposed)
        ids: list[str] = []
        problems: list[dict[str, Any]] = []
        looked_up = 0  # close concepts cost a fuzzy search each: offered for the first few only
        for tag in tags:
            if tag in self._labels:
                ids.append(tag)
                continue
            named = self._named(tag)
            if len(named) == 1:
                ids.append(named[0])
            elif tag in keep:
                ids.append(tag)
            elif named:
                problems.append({"tag": tag, "reason": "ambiguous", "concepts": [self._entry(c) for c in named[:SUGGESTIONS]]})
            else:
                looked_up += 1
                problems.append({"tag": tag, "reason": "unknown", "concepts": self.close(tag) if looked_up <= SUGGESTIONS else []})
        return Resolved(dict.fromkeys(ids), problems)

    def _named(self, tag: str) -> list[str]:
        """The concepts whose English or Chinese label is ``tag`` (any case), best first; one
        when the queue or the graph's tagging terms single it out."""
        q = tag.casefold()
        found = self._names.get(q, [])
        if len(found) > 1:
            pool = [c for c in found if c in self._queued] or found
            term = self._terms.get(q)
            found = pool if len(pool) == 1 else [term] if term in pool else pool
        return found

    def close(self, tag: str, limit: int = SUGGESTIONS) -> list[dict[str, str]]:
        """Concepts to offer for a tag that names none: those whose label (or a word of it)
        starts with it, then labels spelt nearly like it (a typo: "giraffee", "dgo")."""
        out = {c["id"]: c for c in self.search(tag, limit)}
        q = tag.strip().casefold()
        if len(out) < limit and q:
            keys = self._keys
            lo = bisect.bisect_left(keys, (q[0], ""))
            hi = bisect.bisect_left(keys, (chr(ord(q[0]) + 1), ""))
            words = sorted({k for k, _ in keys[lo : min(hi, lo + 50_000)]})
            pool = difflib.get_close_matches(q, words, n=50, cutoff=0.6)
            # fewest edits first (a swap of two letters is one: "dgo" is "dog", not "do" or "dingo"),
            # then a concept's whole name before a word of a longer name
            pool.sort(key=lambda w: (_edits(q, w), w not in self._names, abs(len(w) - len(q)), w))
            for word in pool[:limit]:
                at = bisect.bisect_left(keys, (word, ""))
                named = []
                while at < len(keys) and keys[at][0] == word:
                    named.append(keys[at][1])
                    at += 1
                for cid in sorted(named, key=lambda c: self._rank(c, word))[: limit - len(out)]:  # "dog" before "dog show"
                    out.setdefault(cid, self._entry(cid))
        return list(out.values())[:limit]

    def _entry(self, cid: str) -> dict[str, str]:
        return {"id": cid, **self._labels[cid]}

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
                self._terms = graph_terms(self.graph) if self._graph else {}
            queued = self.db.tag_labels()
            labels = {**self._graph, **queued}
            names: dict[str, list[str]] = {}
            for cid, lab in labels.items():
                for name in {lab["en"].casefold(), lab["zh"].casefold()} - {""}:
                    names.setdefault(name, []).append(cid)
            self._keys = sorted({k for cid, lab in labels.items() for k in _keys(cid, lab)})
            self._labels, self._names, self._queued, self._built_for = labels, names, set(queued), total


def _keys(cid: str, lab: dict[str, Any]) -> list[tuple[str, str]]:
    """What a query may start with: the id, each label, and each word of the English label."""
    en, zh = lab["en"].casefold(), lab["zh"]
    words = en.replace("-", " ").replace("_", " ").split()
    return [(k, cid) for k in {cid.casefold(), en, zh, *words} if k]


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
    neighbouring letters each cost one (the typos people make in a tag field)."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]
