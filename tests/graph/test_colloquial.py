"""Everyday names WordNet lacks (graph/data/colloquial.jsonl), tagged against the real WordNet
graph with BM25 statistics of the real COCO-mini captions: "a yellow lab" is a Labrador
retriever, not a laboratory (audit: tagging mapped "yellow lab", "black lab" and "chocolate lab"
to the laboratory, WordNet's only sense of *lab*)."""

from __future__ import annotations

import pytest

from graph.colloquial import load_colloquial

LABRADOR, LABORATORY, LAB_COAT = "wn:02099712", "wn:03629986", "wn:03630383"
CHOCOLATE = {"wn:07922764", "wn:07601999", "wn:04972451"}  # the drink, the sweet, the colour


def _direct(tagger, captions: list[str]) -> list[set[str]]:
    out = tagger.tag_rows([[c] for c in captions])
    return [{t for t, d in zip(ts, ds) if d} for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())]


def test_every_entry_names_the_wordnet_sense_it_says():
    """A wrong offset would tag some other synset silently: each line's label is the synset's
    first lemma, and its cue words are written as the tokenizer makes them (lower case)."""
    from graph.wordnet import synset_lemmas

    entries = load_colloquial()
    assert {e.term for e in entries} >= {"lab", "labrador", "yorkie", "pitbull", "pit bull", "mic", "smartphone"}
    for e in entries:
        assert synset_lemmas(e.sense)[:1] == [e.label], e
        assert all(c == c.lower().strip() and c for c in (*e.cues, *e.before)), e


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    bad = tmp_path / "colloquial.jsonl"
    bad.write_text('# header\n{"term": "lab", "sense": "wn:02099712"}\n{"term": "x", "sense": "dog"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:3: needs a term and a wn: sense"):
        load_colloquial(bad)


def test_the_coco_yellow_lab_is_tagged_as_the_dog(coco_tagger, coco_captions):
    """The real COCO-mini row: "Man cross country skiing with a yellow lab." (its photo has a
    dog, no laboratory). Its captions as one row, the way the graph_tag stage tags it."""
    ids, rows, objects = coco_captions
    r = next(i for i, caps in enumerate(rows) if any("yellow lab" in c for c in caps))
    assert "dog" in objects[r]
    (tags,) = _direct(coco_tagger, [next(c for c in rows[r] if "yellow lab" in c)])
    assert LABRADOR in tags and LABORATORY not in tags
    out = coco_tagger.tag_rows([rows[r]])
    row_tags = set(out["tag_concepts"][0].as_py())
    assert LABRADOR in row_tags and LABORATORY not in row_tags
    assert "wn:02084071" in row_tags  # the dog (named by the other captions, and inherited from the lab)


def test_the_caption_decides_which_lab(wordnet_graph, coco_captions):
    """A colour right before the name, or a dog's things anywhere in the caption, make it the
    dog; a laboratory's things keep it the laboratory; "lab coat" stays one term. The colour
    qualifies the dog and tags nothing of its own. Names WordNet lacks altogether tag their sense."""
    from graph.tagging import Tagger

    caps = {
        "a black lab catching a frisbee": ({LABRADOR}, {LABORATORY}),
        "A chocolate lab lying on a couch": ({LABRADOR}, {LABORATORY, *CHOCOLATE}),
        "a lab puppy chewing a bone": ({LABRADOR}, {LABORATORY}),
        "A Lab on a leash": ({LABRADOR}, {LABORATORY}),
        "Scientists working in a lab": ({LABORATORY}, {LABRADOR}),
        "a scientist in a black coat working in a lab": ({LABORATORY}, {LABRADOR}),
        "A lab with microscopes on the bench": ({LABORATORY}, {LABRADOR}),
        "a man in a black lab coat": ({LAB_COAT}, {LABRADOR, LABORATORY}),
        "A labrador swimming in a lake": ({LABRADOR}, set()),
        "My yorkie on the sofa": ({"wn:02094433"}, set()),
        "a pit bull on a leash": ({"wn:02093428"}, set()),
        "A man speaking into a mic": ({"wn:03759954"}, set()),
    }
    _, rows, _ = coco_captions
    tagger = Tagger(wordnet_graph).fit([c for r in rows for c in r] + list(caps))
    for cap, tags in zip(caps, _direct(tagger, list(caps))):
        want, never = caps[cap]
        assert want <= tags and not tags & never, (cap, sorted(tags))
