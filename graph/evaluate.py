"""How good the tags are, measured on real captions: category recall and judged precision.

Tagging drives resampling, so a missed tag or a wrong one skews the balance of a training set.
Two figures, both on COCO-mini (80 photos, five human captions each, COCO instance labels):

- **recall of named categories**: for every image, the COCO object categories that are in the
  photo (instance labels) *and* that one of its captions names (a name or listed synonym from
  ``graph/data/coco_categories.json``, plural -s/-es too). A category is *found* when the row
  carries a direct tag on one of the category's WordNet synsets or on a descendant of one
  ("puppy" finds dog). A category whose synsets are not in the graph cannot be found: that is
  the pruning's fault and counts as a miss.
- **precision on a judged sample**: ``graph/data/judged_tags.jsonl`` holds (caption, concept)
  pairs judged by reading the caption and the concept's gloss (how: the comment lines at the head of that file).
  Every caption of the file is tagged on its own; each direct tag is looked up. Tags nobody
  has judged are reported (``unjudged``), not guessed: judge them and add them to the file.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graph.concepts import ConceptGraph
    from graph.tagging import Tagger

__all__ = [
    "DATA_DIR",
    "direct_tag_sets",
    "load_coco",
    "load_categories",
    "load_judged",
    "category_recall",
    "judged_precision",
    "judged_zh",
    "coco_zh",
    "evaluate",
]

DATA_DIR = Path(__file__).resolve().parent / "data"


def load_coco(coco_dir: str | Path) -> tuple[list[int], list[list[str]], list[set[str]]]:
    """(image ids, captions per image, COCO category names per image), images sorted by id."""
    d = Path(coco_dir)
    caps = json.loads((d / "captions_train2017.json").read_text())
    inst = json.loads((d / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, set[str]] = defaultdict(set)
    for a in inst["annotations"]:
        objects[a["image_id"]].add(names[a["category_id"]])
    by: dict[int, list[str]] = defaultdict(list)
    for a in caps["annotations"]:
        by[a["image_id"]].append(a["caption"].strip())
    ids = sorted(by)
    return ids, [by[i] for i in ids], [objects[i] for i in ids]


def load_categories(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    data = json.loads(Path(path or DATA_DIR / "coco_categories.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_judged(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Judged (caption, concept, correct) rows; lines starting with ``#`` are the instructions."""
    rows = []
    for line in Path(path or DATA_DIR / "judged_tags.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append(json.loads(line))
    return rows


def _name_pattern(names: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(n.lower()) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})(?:s|es)?\b")


def _accepting(graph: ConceptGraph, synsets: Sequence[str]) -> set[str]:
    """The category's synsets that the graph has, and all their descendants."""
    import networkx as nx

    out: set[str] = set()
    for s in synsets:
        if s in graph.g:
            out |= {s} | nx.descendants(graph.g, s)
    return out


def category_recall(graph: ConceptGraph, direct_tags: Sequence[set[str]], rows: Sequence[Sequence[str]], objects, categories) -> dict:
    """Recall of the categories that are in the photo and named by a caption (module docstring)."""
    accept = {c: _accepting(graph, v["synsets"]) for c, v in categories.items() if v["synsets"]}
    pats = {c: _name_pattern(v["names"]) for c, v in categories.items()}
    named = found = 0
    misses: list[dict] = []
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, caps in enumerate(rows):
        text = " ".join(caps).lower()
        for c in sorted(objects[r]):
            if c not in accept or not pats[c].search(text):
                continue
            hit = bool(accept[c] & direct_tags[r])
            named += 1
            found += hit
            per_cat[c][0] += 1
            per_cat[c][1] += hit
            if not hit:
                misses.append({"row": r, "category": c, "caption": next(x for x in caps if pats[c].search(x.lower()))})
    no_node = sorted(c for c, a in accept.items() if not a)
    return {
        "named": named,
        "found": found,
        "recall": round(found / named, 4) if named else 0.0,
        "misses": misses,
        "per_category": {c: tuple(v) for c, v in sorted(per_cat.items())},
        "categories_without_node": no_node,
        "categories_without_synset": sorted(c for c, v in categories.items() if not v["synsets"]),
    }


def direct_tag_sets(tagger: Tagger, rows: Sequence[Sequence[str]]) -> list[set[str]]:
    out = tagger.tag_rows(rows)
    return [{t for t, d in zip(ts, ds) if d} for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())]


def judged_precision(tagger: Tagger, judged: Sequence[dict]) -> dict:
    """Precision of direct tags on the judged captions; unjudged tags listed, not counted."""
    verdict = {(j["caption"], j["concept"]): bool(j["correct"]) for j in judged}
    captions = list(dict.fromkeys(j["caption"] for j in judged))
    tags = direct_tag_sets(tagger, [[c] for c in captions])
    correct = wrong = 0
    unjudged: list[dict] = []
    wrong_rows: list[dict] = []
    for cap, ts in zip(captions, tags):
        for t in sorted(ts):
            v = verdict.get((cap, t))
            if v is None:
                unjudged.append({"caption": cap, "concept": t, "label_en": tagger.graph.label(t)})
            elif v:
                correct += 1
            else:
                wrong += 1
                wrong_rows.append({"caption": cap, "concept": t, "label_en": tagger.graph.label(t)})
    judged_n = correct + wrong
    return {
        "captions": len(captions),
        "tags": judged_n + len(unjudged),
        "judged": judged_n,
        "correct": correct,
        "precision": round(correct / judged_n, 4) if judged_n else 0.0,
        "coverage": round(judged_n / max(judged_n + len(unjudged), 1), 4),
        "wrong": wrong_rows,
        "unjudged": unjudged,
    }


def evaluate(tagger: Tagger, coco_dir: str | Path, *, categories=None, judged=None) -> dict:
    """Both figures for one tagger (fit on the COCO captions first)."""
    _, rows, objects = load_coco(coco_dir)
    rec = category_recall(tagger.graph, direct_tag_sets(tagger, rows), rows, objects, categories or load_categories())
    prec = judged_precision(tagger, judged if judged is not None else load_judged())
    return {"recall": rec, "precision": prec}


def coco_zh(tagger: Tagger, coco_dir: str | Path, *, categories=None, path: str | Path | None = None) -> dict:
    """Held-out Chinese figures on COCO-mini: ``graph/data/coco_zh.jsonl`` renders the first caption
    of each image in Chinese by hand (written before the Chinese rules it measures were tuned).

    - **recall**: the categories in the photo that the English caption names (as
      :func:`category_recall` counts them), found by the Chinese caption's direct tags;
    - **agreement**: the Chinese caption's direct tags that the English caption's direct tags
      also have (the same concept, or one an ancestor or descendant of the other), over all its
      direct tags. A precision proxy that needs no judging (English precision is measured on its
      own judged sample); each disagreement is listed to be read.

    The tagger is fitted on every COCO-mini caption plus the Chinese ones, its statistics restored after."""
    import networkx as nx

    _, rows, objects = load_coco(coco_dir)
    pairs = [
        json.loads(x)
        for x in Path(path or DATA_DIR / "coco_zh.jsonl").read_text(encoding="utf-8").splitlines()
        if x.strip() and not x.startswith("#")
    ]
    en, zh = [p["caption_en"] for p in pairs], [p["caption_zh"] for p in pairs]
    state = tagger.scorer.state()
    try:
        tagger.fit([*(c for r in rows for c in r), *zh])
        zh_tags, en_tags = direct_tag_sets(tagger, [[c] for c in zh]), direct_tag_sets(tagger, [[c] for c in en])
    finally:
        tagger.scorer.load_state(state)
    rec = category_recall(tagger.graph, zh_tags, [[c] for c in en], objects, categories or load_categories())
    g = tagger.graph.g
    agree, differ = 0, []
    for e, z, ts, es in zip(en, zh, zh_tags, en_tags):
        for t in sorted(ts):
            near = {t} | nx.ancestors(g, t) | nx.descendants(g, t)
            if near & es:
                agree += 1
            else:
                differ.append({"caption": z, "caption_en": e, "concept": t, "label_en": tagger.graph.label(t)})
    n = agree + len(differ)
    rec["misses"] = [{**m, "caption_zh": zh[m["row"]]} for m in rec["misses"]]
    return {**rec, "tags": n, "agree": agree, "agreement": round(agree / n, 4) if n else 0.0, "differ": differ}


def judged_zh(tagger: Tagger, fit_texts: Sequence[str] = (), path: str | Path | None = None) -> dict:
    """Precision and recall on the judged Chinese captions (``graph/data/judged_zh.jsonl``).

    The tagger is refitted on ``fit_texts`` plus these captions for the measurement (a word no
    fitted caption contains has no idf and tags nothing) and its statistics restored after.
    Recall: expected concepts with a direct tag on them or on a descendant; precision: direct
    tags judged correct (expected or ``correct``) over those judged; unjudged tags listed."""
    import networkx as nx

    rows = load_judged(path or DATA_DIR / "judged_zh.jsonl")
    captions = [r["caption"] for r in rows]
    state = tagger.scorer.state()
    try:
        tagger.fit([*fit_texts, *captions])
        tags = direct_tag_sets(tagger, [[c] for c in captions])
    finally:
        tagger.scorer.load_state(state)
    g = tagger.graph.g
    expected = found = correct = wrong = 0
    misses: list[dict] = []
    wrong_rows: list[dict] = []
    unjudged: list[dict] = []
    for r, ts in zip(rows, tags):
        for e in r["expected"]:
            hit = e in ts or bool(e in g and nx.descendants(g, e) & ts)
            expected += 1
            found += hit
            if not hit:
                misses.append({"caption": r["caption"], "concept": e, "label_en": r.get("labels", {}).get(e, e)})
        ok, bad = {*r["expected"], *r.get("correct", ())}, set(r.get("wrong", ()))
        for t in sorted(ts):
            row = {"caption": r["caption"], "concept": t, "label_en": tagger.graph.label(t)}
            if t in ok:
                correct += 1
            elif t in bad:
                wrong += 1
                wrong_rows.append(row)
            else:
                unjudged.append(row)
    judged_n = correct + wrong
    return {
        "captions": len(rows),
        "expected": expected,
        "found": found,
        "recall": round(found / expected, 4) if expected else 0.0,
        "judged": judged_n,
        "correct": correct,
        "precision": round(correct / judged_n, 4) if judged_n else 0.0,
        "misses": misses,
        "wrong": wrong_rows,
        "unjudged": unjudged,
    }
