"""WordNet's noun hierarchy as the embedded default concept graph, parsed from the data files.

Debian's ``wordnet-base`` puts WordNet 3.0 in ``/usr/share/wordnet``. Its ``data.noun`` is one
synset per line (offset, lexicographer file, lemmas, pointers, gloss), so a direct parse takes
about a second for all 82,115 noun synsets; nltk's reader would need extra files and a copy.

- Nodes are synsets (``wn:<offset>``), labelled by their first lemma; all lemmas are aliases.
- Edges come from hypernym (``@``) and instance-hypernym (``@i``) pointers, parent -> child.
- ``index.noun`` lists each lemma's senses most frequent first. A lemma *tags* (``terms``) only
  its most frequent sense, so "dog" in a caption means the animal, not "frump" or "hot dog".
- A one-word lemma that WordNet's sense-tagged corpus counts (``cntlist.rev``) use mostly as a
  verb or adjective ("black", "wear", "hold", "standing") does not tag its noun sense: captions
  say "a black dog wearing a hat", and without a part-of-speech tagger those words would tag the
  colour black and erosion. They stay aliases.
- ``visual_only`` drops synsets of lexicographer files that name no visible thing (acts,
  attributes, cognition, communication, feelings, motives, relations, states, time...) and
  reconnects their children to the nearest kept ancestor, as the report drops non-visual concepts.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

import networkx as nx

from graph.concepts import ConceptGraph

__all__ = [
    "WORDNET_DIR",
    "LEXNAMES",
    "VISUAL_LEXNAMES",
    "VISUAL_KEEP",
    "gloss",
    "instance_synsets",
    "lexname",
    "synset_lemmas",
    "TANGIBLE_LEXNAMES",
    "load_wordnet",
    "noun_counts",
    "noun_exceptions",
    "noun_lemmas",
    "noun_senses",
]

WORDNET_DIR = Path("/usr/share/wordnet")

LEXNAMES = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}
VISUAL_LEXNAMES = frozenset(
    {
        "noun.Tops",
        "noun.animal",
        "noun.artifact",
        "noun.body",
        "noun.food",
        "noun.location",
        "noun.object",
        "noun.person",
        "noun.phenomenon",
        "noun.plant",
        "noun.shape",
        "noun.substance",
        "noun.event",
        "noun.group",
    }
)


# Visible things that WordNet files under abstract lexicographer files: traffic lights and street
# signs are noun.communication. Their subtrees stay in a visual-only graph.
VISUAL_KEEP = frozenset(
    {
        "wn:06873571",  # visual signal: traffic light, stoplight, flag, beacon...
        "wn:06793231",  # sign, "a public display of a message": street sign, signpost...
    }
)


def _check_dir(wordnet_dir: Path) -> Path:
    d = Path(wordnet_dir)
    if not (d / "data.noun").exists():
        raise FileNotFoundError(
            f"WordNet data not found at {d} (no data.noun); install the Debian package wordnet-base "
            "or pass the folder holding data.noun and index.noun"
        )
    return d


def _lemma_text(word: str) -> str:
    return word.replace("_", " ")


def noun_senses(wordnet_dir: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """lemma (lower case, spaces) -> offsets of its noun senses, most frequent first (index.noun)."""
    senses: dict[str, list[str]] = {}
    with open(Path(wordnet_dir) / "index.noun", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            parts = line.split()
            # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets...
            n_syn, n_ptr = int(parts[2]), int(parts[3])
            offsets = parts[4 + n_ptr + 2 :]
            if len(offsets) >= n_syn and offsets:
                senses[_lemma_text(parts[0]).lower()] = offsets
    return senses


def _primary_senses(wordnet_dir: Path) -> dict[str, str]:
    """lemma -> offset of its most frequent noun sense."""
    return {k: v[0] for k, v in noun_senses(wordnet_dir).items()}


def gloss(nid: str, wordnet_dir: Path = WORDNET_DIR) -> str:
    """The WordNet gloss of ``wn:<offset>`` (the offset is the line's byte offset in data.noun)."""
    if not nid.startswith("wn:"):
        return ""
    with open(Path(wordnet_dir) / "data.noun", "rb") as f:
        f.seek(int(nid[3:]))
        return f.readline().decode("utf-8", "replace").partition(" | ")[2].strip()


def synset_lemmas(nid: str, wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """The lemmas of ``wn:<offset>`` read from data.noun (for synsets a pruned graph lacks)."""
    if not nid.startswith("wn:"):
        return []
    with open(Path(wordnet_dir) / "data.noun", encoding="utf-8", errors="replace") as f:
        f.seek(int(nid[3:]))
        return _parse_line(f.readline())[1]


TANGIBLE_LEXNAMES = frozenset(
    {"noun.artifact", "noun.food", "noun.animal", "noun.plant", "noun.object", "noun.body", "noun.person", "noun.substance"}
)


def lexname(nid: str, wordnet_dir: Path = WORDNET_DIR) -> str:
    """The lexicographer file of ``wn:<offset>`` ("noun.artifact"); "" for other ids."""
    if not nid.startswith("wn:"):
        return ""
    with open(Path(wordnet_dir) / "data.noun", "rb") as f:
        f.seek(int(nid[3:]))
        return LEXNAMES.get(int(f.readline()[9:11]), "")


def _pos_counts(wordnet_dir: Path) -> dict[str, list[int]]:
    """lemma -> [noun, verb, adjective, adverb] tagged-sense counts from cntlist.rev."""
    counts: dict[str, list[int]] = {}
    p = wordnet_dir / "cntlist.rev"
    if not p.exists():
        return counts
    slot = {"1": 0, "2": 1, "3": 2, "5": 2, "4": 3}
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, cnt = line.split()
            lemma, _, rest = key.partition("%")
            counts.setdefault(_lemma_text(lemma).lower(), [0, 0, 0, 0])[slot.get(rest[:1], 0)] += int(cnt)
    return counts


@lru_cache(maxsize=2)
def noun_counts(wordnet_dir: Path = WORDNET_DIR) -> dict[str, int]:
    """lemma -> how often WordNet's tagged corpus uses it as a noun (cntlist.rev). Why: to choose
    between two singulars of a plural that are both terms ("vases": vase 12, vas 0)."""
    return {k: v[0] for k, v in _pos_counts(Path(wordnet_dir)).items() if v[0]}


def _verb_stems(word: str) -> list[str]:
    if word.endswith("ing") and len(word) > 5:
        b = word[:-3]
        return [b, b + "e", b[:-1]] if len(b) > 2 and b[-1] == b[-2] else [b, b + "e"]
    if word.endswith("ed") and len(word) > 4:
        b = word[:-2]
        return [b, word[:-1], b[:-1]] if b[-1] == b[-2] else [b, word[:-1]]
    return []


def _mostly_not_noun(word: str, counts: dict[str, list[int]]) -> bool:
    """True when the word is used as a verb/adjective/adverb more than twice as often as a noun."""
    if " " in word or (word not in counts and not word.endswith(("ing", "ed"))):
        return False
    n, v, a, r = counts.get(word, (0, 0, 0, 0))
    v = max([v] + [counts.get(s, (0, 0, 0, 0))[1] for s in _verb_stems(word)])
    return max(v, a, r) > 2 * n


@lru_cache(maxsize=2)
def instance_synsets(wordnet_dir: Path = WORDNET_DIR) -> frozenset[str]:
    """Ids of synsets that are instances (``@i``: a named person, city, river), not kinds of thing.
    Why: a caption's lower-case "day" is not Clarence Day; a name tags only where it is written
    as one (:class:`graph.tagging.Tagger`)."""
    out = set()
    with open(Path(wordnet_dir) / "data.noun", encoding="utf-8", errors="replace") as f:
        for line in f:
            if " @i " in line.partition(" | ")[0]:
                out.add(f"wn:{line[:8]}")
    return frozenset(out)


def noun_lemmas(wordnet_dir: Path = WORDNET_DIR) -> set[str]:
    """Every noun lemma (lower case, spaces for underscores): a cheap "is this a noun" lexicon."""
    return set(_primary_senses(_check_dir(wordnet_dir)))


def noun_exceptions(wordnet_dir: Path = WORDNET_DIR) -> dict[str, str]:
    """Irregular plurals from ``noun.exc`` (``mice -> mouse``, ``men -> man``), for lemmatising."""
    out: dict[str, str] = {}
    p = Path(wordnet_dir) / "noun.exc"
    if p.exists():
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out.setdefault(_lemma_text(parts[0]).lower(), _lemma_text(parts[1]).lower())
    return out


def load_wordnet(wordnet_dir: str | Path = WORDNET_DIR, *, visual_only: bool = False) -> ConceptGraph:
    """Parse ``data.noun`` into a :class:`ConceptGraph` (depths set, checked acyclic).

    ``g.graph["lexnames"]`` keeps, per lexicographer file, the synsets before and after the
    visual-only cut, so the build report can say what the cut removed."""
    d = _check_dir(Path(wordnet_dir))
    senses = noun_senses(d)
    pos_counts = _pos_counts(d)
    g = nx.DiGraph()
    edges: list[tuple[str, str]] = []
    lexname: dict[str, str] = {}
    with open(d / "data.noun", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):  # licence header
                continue
            nid, lemmas, lex, ptrs = _parse_line(line)
            edges.extend((p, nid) for p in ptrs)
            g.add_node(nid, label_en=lemmas[0], label_zh="", aliases=lemmas[1:], terms=[], source="wordnet", depth=0, weight=1.0)
            lexname[nid] = LEXNAMES.get(lex, "noun.Tops")
    g.add_edges_from(edges)
    before = Counter(lexname.values())
    if visual_only:
        _drop_contracting(g, _non_visual(g, lexname))
    _set_terms(g, senses, pos_counts)
    after = Counter(lexname[n] for n in g)
    g.graph["lexnames"] = {k: [before[k], after.get(k, 0)] for k in sorted(before)}
    return ConceptGraph(g).finalize()


def _parse_line(line: str) -> tuple[str, list[str], int, list[str]]:
    """(node id, lemmas, lexicographer file number, hypernym ids) of one data.noun line."""
    parts = line.partition(" | ")[0].split()
    offset, lex = parts[0], int(parts[1])
    n_words = int(parts[3], 16)
    lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(n_words)]
    i = 4 + 2 * n_words
    ptrs = []
    for k in range(int(parts[i])):
        sym, target, pos = parts[i + 1 + 4 * k : i + 4 + 4 * k]
        if pos == "n" and sym in ("@", "@i"):
            ptrs.append(f"wn:{target}")
    return f"wn:{offset}", lemmas, lex, ptrs


def _non_visual(g: nx.DiGraph, lexname: dict[str, str]) -> list[str]:
    """Synsets of non-visual lexicographer files, except the subtrees of ``VISUAL_KEEP``."""
    keep = set()
    for root in VISUAL_KEEP:
        if root in g:
            keep |= {root} | nx.descendants(g, root)
    return [n for n in g if lexname[n] not in VISUAL_LEXNAMES and n not in keep]


def _set_terms(g: nx.DiGraph, senses: dict[str, list[str]], pos_counts: dict[str, list[int]]) -> None:
    """A lemma tags the most frequent of its senses *that the graph kept*: in a visual-only graph
    "book" tags the bound pages, since the written work (noun.communication) was cut."""
    for nid, a in g.nodes(data=True):
        lemmas = [a["label_en"], *a["aliases"]]
        a["terms"] = [
            lm for lm in lemmas if _first_kept(senses.get(lm.lower(), ()), g) == nid and not _mostly_not_noun(lm.lower(), pos_counts)
        ]


def _first_kept(offsets, g: nx.DiGraph) -> str | None:
    return next((f"wn:{o}" for o in offsets if f"wn:{o}" in g), None)


def _drop_contracting(g: nx.DiGraph, drop: list[str]) -> None:
    """Remove nodes, linking each removed node's parents to its children (keeps ancestry)."""
    for n in drop:
        ps, cs = list(g.predecessors(n)), list(g.successors(n))
        g.add_edges_from((p, c) for p in ps for c in cs)
        g.remove_node(n)
