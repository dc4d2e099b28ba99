"""Tags mined from real captions, embedded with MiniLM, clustered into a named hierarchy."""

from __future__ import annotations

import networkx as nx
import numpy as np


def test_mined_tags_form_a_named_hierarchy(coco_captions, wordnet_graph):
    from graph.bm25 import Tokenizer
    from graph.concepts import ConceptGraph
    from graph.mined import cluster_hierarchy, embed_texts, merge_mined, mine_tags
    from graph.wordnet import noun_exceptions, noun_lemmas

    _, rows, _ = coco_captions
    texts = [c for r in rows for c in r]
    nouns = noun_lemmas()
    tags = mine_tags(texts, Tokenizer(nouns, exceptions=noun_exceptions()), nouns, min_count=3)
    words = [t for t, _ in tags]
    assert {"giraffe", "pizza", "dog", "table"} <= set(words) and "the" not in words and "sitting" not in words
    emb = embed_texts(words)
    assert emb.shape == (len(words), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)

    clusters = cluster_hierarchy(emb, branching=4, leaf_size=6)
    leaves = [c for c in clusters if not c[2]]
    assert len(clusters) > 10 and max(len(c[1]) for c in leaves) <= 6
    # k-means groups similar tags: members of a leaf are closer to each other than random pairs
    within = np.mean([np.mean(emb[m] @ emb[m].T) for _, m, _ in leaves if len(m) > 1])
    assert within > float(np.mean(emb @ emb.T)) + 0.1

    g = ConceptGraph(wordnet_graph.g.copy())
    r = merge_mined(g, tags, emb, branching=4, leaf_size=6)
    assert r["reused_nodes"] > 0.8 * len(tags)  # mined "dog" is WordNet's dog, not a second one
    assert g.find_cycle() is None
    for c, (central, members, _) in enumerate(clusters[1:], 1):
        assert g.label(f"mined:c{c}") == words[central] and central in members  # named after a member
    (giraffe,) = g.resolve("giraffe")
    assert nx.has_path(g.g, "mined:root", giraffe) and len(g.parents(giraffe)) == 2
    depth = nx.shortest_path_length(g.g, "mined:root", giraffe)
    assert depth >= 2
