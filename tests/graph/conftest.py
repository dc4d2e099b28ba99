"""Graph-engine fixtures: the WordNet graph and the COCO-mini captions with their object labels."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest


@pytest.fixture(scope="session")
def wordnet_graph():
    """All 82k WordNet noun synsets with Chinese labels (built once; treat as read-only)."""
    from graph.chinese import add_zh_labels
    from graph.wordnet import load_wordnet

    g = load_wordnet()
    add_zh_labels(g)
    return g


@pytest.fixture(scope="session")
def coco_captions(coco_dir):
    """(image ids, captions per image, COCO object category names per image)."""
    caps = json.loads((coco_dir / "captions_train2017.json").read_text())
    inst = json.loads((coco_dir / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, set[str]] = defaultdict(set)
    for a in inst["annotations"]:
        objects[a["image_id"]].add(names[a["category_id"]])
    by: dict[int, list[str]] = defaultdict(list)
    for a in caps["annotations"]:
        by[a["image_id"]].append(a["caption"].strip())
    ids = sorted(by)
    return ids, [by[i] for i in ids], [objects[i] for i in ids]


@pytest.fixture(scope="session")
def coco_tagger(wordnet_graph, coco_captions):
    """A tagger over the WordNet graph with BM25 statistics of the 400 COCO captions."""
    from graph.tagging import Tagger

    _, rows, _ = coco_captions
    return Tagger(wordnet_graph).fit([c for r in rows for c in r])
