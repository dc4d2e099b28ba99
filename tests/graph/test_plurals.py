"""Plurals lemmatise to the concept they name, on the WordNet graph and real COCO captions.

"horses" used to become "hors" (a word of *hors d'oeuvre*, so in the term vocabulary) and never
tagged *horse*; the same for vases, doses, corpses... (audit vector #3)."""

from __future__ import annotations

from graph.bm25 import Tokenizer


def _direct_labels(tagger, graph, captions: list[str]) -> list[set[str]]:
    out = tagger.tag_rows([[c] for c in captions])
    return [{graph.label(i) for i, d in zip(ts, ds) if d} for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())]


def test_a_word_inside_a_multiword_term_does_not_take_the_plural():
    tok = Tokenizer(["hors d'oeuvre", "horse", "bus", "glass", "box", "dish", "vas", "vase"], noun_counts={"vase": 12})
    assert tok.tokens("horses buses glasses boxes dishes") == ["horse", "bus", "glass", "box", "dish"]
    assert tok.tokens("hors d'oeuvres") == ["hors d'oeuvre"]  # the phrase still joins
    assert tok.lemma("vases") == "vase"  # two one-word terms: the commoner noun wins


def test_horses_tag_horse_on_real_captions(coco_tagger, coco_captions, wordnet_graph):
    ids, rows, _ = coco_captions
    herd = rows[ids.index(78499)]  # four of its five COCO captions say "horses", none "horse"
    assert sum("horses" in c.lower() for c in herd) == 4
    labels = _direct_labels(coco_tagger, wordnet_graph, [*herd, "Horses standing in the grass.", "A horse in a field."])
    assert all("horse" in lab for lab, cap in zip(labels, [*herd, "h", "h"]) if "horse" in cap.lower())
    assert "grass" in labels[-2]


def test_other_plurals_keep_working(coco_tagger, wordnet_graph):
    tok = coco_tagger.tokenizer
    words = "buses glasses boxes dishes giraffes benches knives skies mice men vases corpses doses lenses"
    assert [tok.lemma(w) for w in words.split()] == [
        *("bus glasses box dish giraffe bench knife sky mouse man".split()),  # "glasses" is itself a term (spectacles)
        *("vase corpse dose lens".split()),
    ]
    caps = [
        "A fleet of buses parked on an airport tarmac.",
        "Two glasses of wine on a table.",
        "Boxes stacked in a room.",
        "Two giraffes near the fence.",
        "Three vases of flowers on a shelf.",
        "Knives on a cutting board.",
    ]
    labels = _direct_labels(coco_tagger, wordnet_graph, caps)
    for want, got in zip(["bus", "glass", "box", "giraffe", "vase", "knife"], labels):
        assert want in got, (want, got)
