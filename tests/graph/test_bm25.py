"""Vectorised BM25 equals rank-bm25 on real COCO captions; the tokenizer survives hostile text."""

from __future__ import annotations

import numpy as np
from rank_bm25 import BM25Okapi

from graph.bm25 import BM25Counts, BM25Scorer, Tokenizer


def test_scores_equal_rank_bm25_on_coco_captions(coco_tagger, coco_captions):
    _, rows, _ = coco_captions
    texts = [c for r in rows for c in r]
    tok = coco_tagger.tokenizer
    docs = [tok.tokens(t) for t in texts]
    ours = coco_tagger.scorer.scores(docs).toarray()
    ref = BM25Okapi(docs)
    hit = np.flatnonzero(ours.any(axis=0))
    rng = np.random.default_rng(0)
    misses = rng.choice(np.flatnonzero(~ours.any(axis=0)), 200, replace=False)
    assert len(hit) > 300  # a few hundred concepts occur in 400 captions
    multi = [c for c in hit if len(coco_tagger.queries[c]) > 1]
    assert multi  # concepts whose query has several terms (synonyms): scores add up
    for c in [*hit, *misses]:
        np.testing.assert_allclose(ours[:, c], ref.get_scores(coco_tagger.queries[c]), rtol=0, atol=1e-6)


def test_repeated_query_tokens_and_unknown_tokens_match_rank_bm25():
    docs = [["a", "dog", "dog"], ["a", "cat"], ["the", "hot dog"], [], ["dog", "cat", "cat", "a"]]
    queries = [["dog", "dog"], ["cat", "unknown"], ["hot dog"], ["a"]]
    s = BM25Scorer(queries).fit(docs).scores(docs).toarray()
    ref = BM25Okapi(docs)
    for c, q in enumerate(queries):
        np.testing.assert_allclose(s[:, c], ref.get_scores(q), atol=1e-12)


def test_counts_add_up_across_fragments(coco_tagger, coco_captions):
    _, rows, _ = coco_captions
    docs = [coco_tagger.tokenizer.tokens(c) for r in rows for c in r]
    whole = BM25Counts.from_tokens(docs)
    parts = BM25Counts.from_tokens(docs[:150]) + BM25Counts.from_tokens(docs[150:])
    assert (parts.n_docs, parts.total_len, parts.df) == (whole.n_docs, whole.total_len, whole.df)
    a = BM25Scorer(coco_tagger.queries[:5000]).set_counts(whole)
    b = BM25Scorer(coco_tagger.queries[:5000]).load_state(a.state())
    assert np.array_equal(a.scores(docs).toarray(), b.scores(docs).toarray())


def test_tokenizer_multiword_plurals_and_hostile_text():
    tok = Tokenizer(
        ["hot dog", "dog", "fire hydrant", "mouse", "giraffe", "gate", "Gates", "长颈鹿", "man"],
        exceptions={"mice": "mouse", "men": "man"},
        max_chars=200,
    )
    assert tok.tokens("Two giraffes & hot dogs near a fire-hydrant") == ["two", "giraffe", "hot dog", "near", "a", "fire hydrant"]
    assert tok.tokens("mice and men's gates") == ["mouse", "and", "man", "gate"]
    assert tok.tokens("<b>dog</b> &amp; <script>x</script> https://x.example/dog.jpg 🐶🔥") == ["dog", "x"]
    assert tok.tokens("") == [] and tok.tokens(None) == [] and tok.tokens("  \n\t ") == []
    assert tok.tokens("🐶🐱😀") == []
    long = tok.tokens("dog " * 10_000)
    assert 0 < len(long) <= 51  # truncated to max_chars, not a 10k-token document
    assert tok.tokens("一只长颈鹿 and a dog") == ["一只", "长颈鹿", "and", "a", "dog"]
    assert tok.term_token("the") is None and tok.term_token("x") is None and tok.term_token("Hot  Dog") == "hot dog"
