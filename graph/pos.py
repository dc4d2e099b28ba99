"""Just enough part of speech to tag nouns and not adjectives or verbs, without a tagger model.

Captions are short, regular noun phrases ("a small white sink next to a toilet"). A word that
WordNet's tagged corpus mostly uses as a verb or adjective ("sink", "black", "standing", "bear")
tags its noun sense only where it heads a noun phrase: after a determiner, an adjective, a noun
or a preposition, and before a boundary (punctuation, a preposition or conjunction, a verb
form, the end). "a black dog" has no colour tag and "the dog wears a hat" no clothing, but
"a bathroom sink" and "in black" do. Multi-word terms whose last word is such a word ("small
white", a butterfly) get the same check, so "a small white dog" is a dog. Idioms ("on top of",
"in front of", "a couple of") tag nothing. No model, no download: WordNet's own lexicon files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["DETERMINERS", "IDIOMS", "PosLexicon"]

DETERMINERS = frozenset(
    """a an the this that these those my your his her its our their some several many few each every
    another no any one two three four five six seven eight nine ten dozen couple pair""".split()
)
# determiners of one thing: after "a cat", a word ending in -s is the verb ("a cat walks")
SINGULAR_DETERMINERS = frozenset("a an one this that each every another".split())
PREPOSITIONS = frozenset(
    """of in on at to for from by with without within into onto upon over under above below near next
    off out up down about around through across along against between among behind beside beyond
    during before after inside outside toward towards atop beneath underneath""".split()
)
BOUNDARY_WORDS = PREPOSITIONS | frozenset(
    "and or but while as is are was were be been being has have had that which who where when".split()
)
# (word before, lemma, word after): the lemma is part of a fixed expression, not a thing
IDIOMS = frozenset(
    {
        ("on", "top", "of"),
        ("in", "front", "of"),
        ("a", "couple", "of"),
        ("a", "lot", "of"),
        ("close", "up", "of"),
    }
)


@dataclass(frozen=True)
class PosLexicon:
    """Word classes from WordNet's index files (see module docstring)."""

    nouns: frozenset[str]
    adjectives: frozenset[str]
    np_only: frozenset[str]  # noun lemmas mostly used as another part of speech
    colours: frozenset[str] = frozenset()  # colour adjectives (satellites of chromatic/achromatic)

    @classmethod
    def load(cls, wordnet_dir: str | Path) -> PosLexicon:
        return _load(str(wordnet_dir))

    def is_idiom(self, prev: str, lemma: str, nxt: str) -> bool:
        return (prev, lemma, nxt) in IDIOMS or (lemma == "lot" and nxt == "of")

    def is_colour(self, surf: Sequence[str], lemmas: Sequence[str], i: int, brk: Sequence[bool]) -> bool:
        """Whether word ``i`` is a colour adjective before its noun: "an orange bus" is no fruit,
        "a silver parking meter" no metal. WordNet lists these words as colours (satellites of
        the adjectives chromatic/achromatic); the noun after them must be a plain noun."""
        j = i + 1
        if surf[i] not in self.colours or j >= len(surf) or brk[j]:
            return False
        nxt = surf[j]
        return nxt not in BOUNDARY_WORDS and nxt not in DETERMINERS and lemmas[j] in self.nouns and not nxt.endswith(("ing", "ed"))

    def is_verb(self, surf: Sequence[str], lemmas: Sequence[str], i: int, brk: Sequence[bool]) -> bool:
        """Whether word ``i`` is the verb of a singular subject: "a pitcher winds up", "a cat walks",
        "one bus stops". A plural noun cannot follow "a" + a singular noun, so a word in -s that
        lemmatises to a noun there is a verb in the third person (no wind, no catwalk)."""
        w = surf[i]
        if i < 2 or brk[i] or brk[i - 1] or not w.endswith("s") or lemmas[i] == w:
            return False
        return surf[i - 2] in SINGULAR_DETERMINERS and lemmas[i - 1] == surf[i - 1] and lemmas[i - 1] in self.nouns

    def heads_np(self, surf: Sequence[str], lemmas: Sequence[str], i: int, j: int, brk: Sequence[bool]) -> bool:
        """Whether words ``i..j-1`` (lower-case surface forms) head a noun phrase.

        ``brk[k]`` is True when punctuation stands before word ``k``."""
        last = surf[j - 1]
        if not self._after_ok(surf, lemmas, i, brk, last):
            return False
        return self._before_boundary(surf, lemmas, j, brk)

    def _after_ok(self, surf, lemmas, i: int, brk, last: str) -> bool:
        if i == 0 or brk[i]:
            return False
        prev = surf[i - 1]
        if prev in DETERMINERS or prev in PREPOSITIONS or prev.isdigit():
            return True
        if last.endswith(("ing", "ed")) or (last.endswith("s") and not lemmas[i - 1].endswith("s")):
            return prev in self.adjectives and prev not in self.nouns  # "a tall building", not "dog wearing"
        return prev in self.adjectives or lemmas[i - 1] in self.nouns

    def _before_boundary(self, surf, lemmas, j: int, brk) -> bool:
        if j >= len(surf) or brk[j]:
            return True
        nxt = surf[j]
        if nxt in BOUNDARY_WORDS:
            return True
        if nxt in DETERMINERS:  # "sink a boat", "wears a hat": a verb taking an object
            return False
        return nxt.endswith(("ing", "ed")) or lemmas[j] not in self.nouns


@lru_cache(maxsize=2)
def _load(wordnet_dir: str) -> PosLexicon:
    from graph.wordnet import _mostly_not_noun, _pos_counts, noun_senses

    d = Path(wordnet_dir)
    nouns = frozenset(w for w in noun_senses(d) if " " not in w)
    adjs = set()
    for name in ("index.adj", "index.adv"):
        p = d / name
        if p.exists():
            with open(p, encoding="utf-8", errors="replace") as f:
                adjs.update(line.split(" ", 1)[0].replace("_", " ") for line in f if not line.startswith(" "))
    counts = _pos_counts(d)
    np_only = frozenset(w for w in nouns if _mostly_not_noun(w, counts))
    return PosLexicon(nouns=nouns, adjectives=frozenset(adjs), np_only=np_only, colours=_colour_words(d))


def _colour_words(d: Path) -> frozenset[str]:
    """One-word adjectives in the satellite clusters of "chromatic" and "achromatic" (data.adj)."""
    p = d / "data.adj"
    if not p.exists():
        return frozenset()
    lines = [line.split() for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if not line.startswith(" ")]
    heads = {x[0] for x in lines if x[2] == "a" and x[4] in ("chromatic", "achromatic")}
    out = set()
    for x in lines:
        if x[2] == "s" and any(x[k] == "&" and x[k + 1] in heads for k in range(len(x) - 1)):
            out.update(x[4 + 2 * i].split("(")[0].lower() for i in range(int(x[3], 16)))
    return frozenset(w for w in out if "_" not in w and "-" not in w)
