"""BM25 relevance of concepts to captions: captions are documents, concept terms are queries.

Two parts:

- :class:`Tokenizer` turns a caption into tokens such that every concept term is exactly one
  token. English words are lower-cased and lemmatised against the term vocabulary ("giraffes"
  -> "giraffe", "mice" -> "mouse" from WordNet's exception list); multi-word terms ("hot dog",
  "fire hydrant") are found with an Aho-Corasick automaton over word ids, leftmost-longest, and
  replace their words (so a hot dog is not a dog). Chinese runs are segmented by jieba with the
  Chinese terms added to its dictionary (Chinese has no spaces to match whole words against).
  Markup, URLs, emoji and punctuation are dropped; very long captions are truncated.
- :class:`BM25Scorer` is BM25Okapi (rank-bm25's variant: idf floor ``epsilon * mean idf``) as
  sparse matrix algebra: a (captions x query tokens) tf-weight matrix times a (query tokens x
  concepts) count matrix gives every concept's score for every caption in one product, instead
  of one pass over the corpus per concept. Scores equal ``rank_bm25.BM25Okapi.get_scores`` for
  the same token lists (tests check to 1e-6). Corpus statistics (:class:`BM25Counts`) add up
  across fragments, so a cluster can count in parallel and score with global statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import scipy.sparse as sp

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graph.chinese import ZhSegmenter, has_cjk, mark_non_things, zh_tagging_term

__all__ = ["STOPWORDS", "normalise", "Tokenizer", "BM25Counts", "BM25Scorer"]

STOPWORDS = frozenset(
    """a an the and or but nor so yet of in on at to for from by with without within into onto upon
    over under above below near next off out up down about around through across along against
    between among behind beside besides beyond during before after while as than then there here
    this that these those it its it's is are was were be been being am do does did doing done have
    has had having i me my we us our you your he him his she her they them their who whom whose
    which what when where why how all any both each few more most other some such no not only own
    same very can will just should would could may might must shall one two three four five six
    seven eight nine ten many much also too s t d ll m o re ve y isn aren wasn weren don doesn""".split()
)

_TAG_RE = re.compile(r"<[^<>]{0,512}>")
_URL_RE = re.compile(r"(?:https?://|www\.)\S+")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
# a word never runs into Chinese: "T恤的男孩" is "t" and a Chinese run, not one word
_SEG_RE = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*)")
_PLURAL_RULES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("ves", "f"),
    ("ves", "fe"),
    ("s", ""),
)
_OTHER = "\x01"  # a word in no multi-word term
_BREAK = "\x02"  # punctuation between words: no multi-word term spans it
_SEG_P = re.compile(_SEG_RE.pattern + r"|(?P<punct>[.,;:!?()\[\]{}\"|/])")
_POSSESSIVE = 2  # a break flag that is truthy for the noun-phrase rules but not punctuation for phrases
_CHAR0 = 0xE000  # word ids as characters from the private use area upward (never surrogates)


def normalise(text: str, max_chars: int = 4096) -> str:
    """Unescape entities, strip tags and URLs, NFKC, lower case; truncate hostile lengths."""
    if not text:
        return ""
    text = text[: max_chars * 2]
    if "<" in text or "&" in text:
        text = _TAG_RE.sub(" ", html.unescape(text))
    if "://" in text or "www." in text:
        text = _URL_RE.sub(" ", text)
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")[:max_chars]


class Tokenizer:
    """Caption -> tokens in which each concept term is a single token (see module docstring)."""

    def __init__(
        self,
        terms: Iterable[str],
        exceptions: dict[str, str] | None = None,
        max_chars: int = 4096,
        pos=None,
        noun_counts: dict[str, int] | None = None,
    ):
        import ahocorasick

        self.max_chars = max_chars
        self.pos = pos  # graph.pos.PosLexicon: noun-phrase checks; None = every word may tag
        self.exceptions = dict(exceptions or {})
        # how often WordNet's tagged corpus uses a lemma as a noun: "vases" is a vase, not a vas
        self.noun_counts = dict(noun_counts or {})
        self.vocab: set[str] = set()
        self._single: set[str] = set()  # one-word lower-case terms: what two caption words may join into
        self._pairs: set[str] = set()  # two-word terms: "hot dog" stays the phrase, not the hotdog stuntman
        lower_seen: set[str] = set()  # words of some lower-case term (not only proper nouns)
        self._word_char: dict[str, str] = {}
        self._phrases = ahocorasick.Automaton()
        zh_words: list[str] = []
        multi: list[list[str]] = []
        for term in terms:
            norm = normalise(term, max_chars)
            if not norm.strip():
                continue
            if has_cjk(norm):
                zh_words.append("".join(norm.split()))
                continue
            words = [self._strip_possessive(m.group("word")) for m in _SEG_RE.finditer(norm) if m.group("word")]
            self.vocab.update(words)
            if term[:1].islower() or has_cjk(term):
                lower_seen.update(words)
                self._single.update(words if len(words) == 1 else ())
            if len(words) == 2:
                self._pairs.add(" ".join(words))
            if len(words) > 1:
                multi.append(words)
        # "gates" is Bill Gates' lemma, but in a caption it is the plural of gate
        self._proper_only = self.vocab - lower_seen
        # a multi-word term is keyed by its words' lemmas, as caption words are: "dogs" is the
        # dog in a caption, and "musical chairs" or "men's room" still join; terms that differ
        # only in number ("x chair", "x chairs") share one token (``_canon``)
        self._canon: dict[str, str] = {}
        for words in multi:
            phrase = " ".join(words)
            key = "".join(self._word_char.setdefault(w, chr(_CHAR0 + len(self._word_char))) for w in map(self.lemma, words))
            if key not in self._phrases:
                self._phrases.add_word(key, (len(words), phrase))
            self._canon[phrase] = self._phrases.get(key)[1]
        self._phrases.make_automaton() if multi else None
        self._zh = ZhSegmenter(zh_words)
        self._has_phrases = bool(multi)

    def cut_zh(self, text: str) -> list[str]:
        """A Chinese run in words, concept terms kept whole (as tagging cuts it)."""
        return self._zh.cut(text)

    @staticmethod
    def _strip_possessive(w: str) -> str:
        return w[:-2] if w.endswith("'s") else w

    def lemma(self, word: str) -> str:
        """Noun lemma of a lower-case word, accepted only if the term vocabulary knows it.

        Every plural rule is tried, not only the first that hits the vocabulary: "horses" gives
        "hors" (a word of *hors d'oeuvre*) and "horse". A candidate that is a one-word term wins
        over a word that only occurs inside multi-word terms; between one-word terms ("vas" and
        "vase", "lens" and "lense") the one WordNet's tagged corpus uses more as a noun wins, and
        the rule order breaks ties ("pinches" is a pinch, not a pinche). A word that is itself a
        one-word term stays ("glasses"); one that only occurs inside multi-word terms ("dogs",
        "chairs", "apples") is still reduced to a one-word singular: the multi-word terms are keyed
        by lemmas too, so they match as well. Stopwords stay as they are ("does" is no doe)."""
        if word in self.exceptions:
            return self.exceptions[word]
        if len(word) < 3 or word in STOPWORDS or word in self._single:
            return word
        in_terms = word in self.vocab and word not in self._proper_only
        known = [c for c in self._plural_candidates(word) if c in self.vocab]
        if in_terms and not any(c in self._single for c in known):
            return word
        if not known:
            return word
        single = [c for c in known if c in self._single]
        if not single:
            return known[0]
        return max(single, key=lambda c: (self.noun_counts.get(c, 0), -single.index(c)))

    @staticmethod
    def _plural_candidates(word: str) -> list[str]:
        """Possible singulars of ``word`` in rule order, without repeats."""
        out = [word[: -len(suffix)] + repl for suffix, repl in _PLURAL_RULES if word.endswith(suffix)]
        return list(dict.fromkeys(out))

    def term_token(self, term: str) -> str | None:
        """The single token a concept term becomes; None for stopwords, one-letter terms, noise,
        and Chinese function words (``graph.chinese.zh_tagging_term``: 的 is no target)."""
        norm = normalise(term, self.max_chars)
        if has_cjk(norm):
            word = "".join(norm.split())
            return word if word and zh_tagging_term(word) else None
        words = [self._strip_possessive(m.group("word")) for m in _SEG_RE.finditer(norm) if m.group("word")]
        if not words:
            return None
        if len(words) == 1:
            w = words[0]
            return None if (w in STOPWORDS or len(w) < 2 or w.isdigit()) else w
        phrase = " ".join(words)
        return self._canon.get(phrase, phrase)

    def _words(self, text: str) -> tuple[list[str], list[str], list[bool]]:
        """(tokens, lower-case surface forms, break-before flags: True after punctuation,
        ``_POSSESSIVE`` after "'s"); Chinese runs segmented."""
        toks: list[str] = []
        surf: list[str] = []
        brk: list[bool] = []
        pending = False
        for m in _SEG_P.finditer(text):
            kind = m.lastgroup
            if kind == "punct":
                pending = True
                continue
            if kind == "word":
                w = self._strip_possessive(m.group("word"))
                toks.append(self.lemma(w))
                surf.append(w)
                brk.append(pending)
                if w != m.group("word"):  # "a man's hands": no verb of man, no compound; phrases still span it
                    pending = _POSSESSIVE
                    continue
            else:
                cut = self._zh.cut(m.group("cjk"))
                toks.extend(mark_non_things(cut))
                surf.extend(cut)
                brk.extend([True] * len(cut))
            pending = False
        return toks, surf, brk

    def _merge_phrases(self, toks, surf, brk) -> list[tuple[int, int, str]]:
        """Leftmost-longest multi-word terms as (first word, end, phrase); never across punctuation."""
        chars: list[str] = []
        where: list[int] = []
        for k, t in enumerate(toks):
            if brk[k] is True and k:  # punctuation; a possessive ("bull's eye") is inside a term
                chars.append(_BREAK)
                where.append(-1)
            chars.append(self._word_char.get(t, _OTHER))
            where.append(k)
        spans = []
        for end, (n, phrase) in self._phrases.iter_long("".join(chars)):
            j = where[end] + 1
            spans.append((j - n, j, phrase))
        return spans

    def tokens(self, text: str | None) -> list[str]:
        """Caption -> tokens; a noun-only word used as a verb/adjective becomes ``~word`` (a token
        no concept matches, so the document length is unchanged; see ``graph.pos``)."""
        text = normalise(text or "", self.max_chars)
        if not text:
            return []
        toks, surf, brk = self._words(text)
        if self.pos is not None and len(toks) > 1:
            toks, surf, brk = self._join_compounds(toks, surf, brk)
        spans = self._merge_phrases(toks, surf, brk) if self._has_phrases and len(toks) > 1 else []
        out: list[str] = []
        i = 0
        for a, b, phrase in spans:
            out.extend(self._checked(toks, surf, brk, k, k + 1, toks[k]) for k in range(i, a))
            out.append(self._checked(toks, surf, brk, a, b, phrase))
            i = b
        out.extend(self._checked(toks, surf, brk, k, k + 1, toks[k]) for k in range(i, len(toks)))
        return out

    def _join_compounds(self, toks, surf, brk):
        """Two words written apart whose joined form is a one-word term become that term: "wine
        glasses" is a wineglass (not wine + spectacles), "sail boat" a sailboat. Not across
        punctuation, not with stopwords or short words, not when the second word is a verb ("a
        cat walks" is no catwalk; see ``graph.pos``)."""
        out_t, out_s, out_b = [], [], []
        k, n = 0, len(toks)
        while k < n:
            joined = self._compound(toks, surf, brk, k) if k + 1 < n else None
            out_t.append(joined or toks[k])
            out_s.append(surf[k] + surf[k + 1] if joined else surf[k])
            out_b.append(brk[k])
            k += 2 if joined else 1
        return out_t, out_s, out_b

    def _compound(self, toks, surf, brk, k: int) -> str | None:
        a, b = surf[k], surf[k + 1]
        if brk[k + 1] or len(a) < 3 or len(b) < 3 or a in STOPWORDS or b in STOPWORDS or not (a + b).isalpha():
            return None
        cand = self.lemma(a + b)
        if f"{toks[k]} {toks[k + 1]}" in self._pairs or f"{a} {b}" in self._pairs:
            return None
        if cand not in self._single or toks[k + 1] in self.pos.np_only or self.pos.is_verb(surf, toks, k + 1, brk):
            return None
        return cand

    def _checked(self, toks, surf, brk, i: int, j: int, token: str) -> str:
        pos = self.pos
        if pos is None:
            return token
        prev, nxt = (surf[i - 1] if i else ""), (surf[j] if j < len(surf) else "")
        if j - i == 1 and (pos.is_idiom(prev, token, nxt) or pos.is_verb(surf, toks, i, brk) or pos.is_colour(surf, toks, i, brk)):
            return "~" + token
        if toks[j - 1] in pos.np_only and not pos.heads_np(surf, toks, i, j, brk):
            return "~" + token
        return token


@dataclass
class BM25Counts:
    """Corpus statistics for BM25; summable (``+``) across fragments or workers."""

    n_docs: int = 0
    total_len: int = 0
    df: Counter = field(default_factory=Counter)

    @classmethod
    def from_tokens(cls, docs: Iterable[Sequence[str]]) -> BM25Counts:
        c = cls()
        for toks in docs:
            c.n_docs += 1
            c.total_len += len(toks)
            c.df.update(set(toks))
        return c

    def __add__(self, other: BM25Counts) -> BM25Counts:
        return BM25Counts(self.n_docs + other.n_docs, self.total_len + other.total_len, self.df + other.df)

    def idf(self, epsilon: float, words: Iterable[str] | None = None) -> dict[str, float]:
        """rank-bm25's idf of ``words`` (default: every corpus word): log((N - df + .5) / (df + .5)),
        a negative one floored at ``epsilon`` times the mean idf over the whole corpus vocabulary
        (so the floor needs every word's count, even when only the query words' idf is kept)."""
        if not self.df:
            return {}
        vocab = list(self.df)
        df = np.fromiter((self.df[w] for w in vocab), dtype=np.float64, count=len(vocab))
        idf = np.log(self.n_docs - df + 0.5) - np.log(df + 0.5)
        eps = epsilon * float(idf.mean())
        idf[idf < 0] = eps
        out = dict(zip(vocab, idf.tolist()))
        return out if words is None else {w: out[w] for w in words if w in out}


class BM25Scorer:
    """BM25Okapi for many queries at once (one query per concept), as sparse products."""

    def __init__(self, queries: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        import scipy.sparse as sp  # here, not at import: the CLI imports this module at start

        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.qcol: dict[str, int] = {}
        rows, cols = [], []
        for c, q in enumerate(queries):
            for t in q:
                rows.append(self.qcol.setdefault(t, len(self.qcol)))
                cols.append(c)
        self.n_queries = len(queries)
        # Q[token, concept] = how often the token occurs in the concept's query (rank-bm25 sums repeats)
        self.Q = sp.csr_matrix(
            (np.ones(len(rows)), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
            shape=(len(self.qcol), len(queries)),
        )
        self.Q.sum_duplicates()
        self.n_docs, self.avgdl = 0, 0.0
        self.idf = np.zeros(len(self.qcol))

    # --- corpus statistics ------------------------------------------------------------
    def set_counts(self, counts: BM25Counts) -> BM25Scorer:
        """idf for every query token from corpus counts, with rank-bm25's epsilon floor."""
        self.n_docs = counts.n_docs
        self.avgdl = counts.total_len / counts.n_docs if counts.n_docs else 0.0
        self._set_idf(counts.idf(self.epsilon))
        return self

    def _set_idf(self, idf_of: dict[str, float]) -> None:
        self.idf = np.zeros(len(self.qcol))
        for w, v in idf_of.items():
            j = self.qcol.get(w)
            if j is not None:
                self.idf[j] = v

    def fit(self, docs: Sequence[Sequence[str]]) -> BM25Scorer:
        return self.set_counts(BM25Counts.from_tokens(docs))

    def state(self) -> dict:
        """Small picklable statistics (what workers need; not the corpus vocabulary)."""
        return {"n_docs": self.n_docs, "avgdl": self.avgdl, "idf": self.idf, "n_query_tokens": len(self.qcol)}

    @staticmethod
    def state_of(counts: BM25Counts, query_tokens: Iterable[str], epsilon: float) -> dict:
        """:meth:`state` from corpus counts summed elsewhere (graph_tag's workers count their
        fragments): the idf of the query tokens only, by token."""
        avgdl = counts.total_len / counts.n_docs if counts.n_docs else 0.0
        return {"n_docs": counts.n_docs, "avgdl": avgdl, "idf_of": counts.idf(epsilon, query_tokens)}

    def load_state(self, state: dict) -> BM25Scorer:
        if "idf_of" in state:  # by token (``state_of``)
            self.n_docs, self.avgdl = state["n_docs"], state["avgdl"]
            self._set_idf(state["idf_of"])
            return self
        if state["n_query_tokens"] != len(self.qcol):
            raise ValueError("BM25 statistics were computed for another concept graph; re-run the fit")
        self.n_docs, self.avgdl, self.idf = state["n_docs"], state["avgdl"], np.asarray(state["idf"])
        return self

    # --- scoring ----------------------------------------------------------------------
    def tf_weights(self, docs: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """(docs x query tokens): idf * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))."""
        import scipy.sparse as sp

        qcol = self.qcol
        rows: list[int] = []
        cols: list[int] = []
        for i, toks in enumerate(docs):
            for t in toks:
                j = qcol.get(t)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        n = len(docs)
        tf = sp.csr_matrix(
            (np.ones(len(rows)), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
            shape=(n, len(qcol)),
        )
        tf.sum_duplicates()
        if tf.nnz == 0 or self.avgdl == 0:
            return sp.csr_matrix((n, len(qcol)))
        dl = np.fromiter((len(t) for t in docs), dtype=np.float64, count=n)
        r = np.repeat(np.arange(n), np.diff(tf.indptr))
        k1, b = self.k1, self.b
        f = tf.data
        tf.data = self.idf[tf.indices] * (f * (k1 + 1) / (f + k1 * (1 - b + b * dl[r] / self.avgdl)))
        return tf

    def scores(self, docs: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """(docs x concepts) BM25 scores; zero where a concept's query shares no token with the doc."""
        out = (self.tf_weights(docs) @ self.Q).tocsr()
        out.eliminate_zeros()
        return out
