"""Caption statistics: which caption a row is judged by, its length in tokens, its language,
and how much of the text visible in the image (OCR) the caption mentions."""

from __future__ import annotations

import logging
import re

from curation.text import detect_lang

__all__ = ["profiled_caption", "tokenize", "ocr_overlap", "caption_columns"]

_WORD = re.compile(r"[\w']+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def profiled_caption(captions: list[dict] | None, pick: str = "first") -> str | None:
    """The caption a row is profiled by (embedded by the model stages, counted by
    ``caption_columns``): the first non-empty one (ingest order puts the main caption first) or
    the longest. Not the caption offered for review (``engines.active.pseudo.choose_caption``)."""
    texts = [c["text"] for c in (captions or []) if c and c.get("text") and c["text"].strip()]
    if not texts:
        return None
    return max(texts, key=len) if pick == "longest" else texts[0]


def tokenize(text: str) -> list[str]:
    """Words for Latin text, jieba words for Chinese (mixed text: jieba handles both)."""
    if _CJK.search(text):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return [t for t in jieba.lcut(text) if t.strip() and _WORD.search(t)]
    return _WORD.findall(text)


def ocr_overlap(caption: str, ocr_text: str) -> float | None:
    """How much of the text visible in the image the caption mentions: the share of OCR tokens
    (``tokenize``; >= 2 chars, or any CJK word) found, case-insensitively, as substrings of the
    caption. None when the OCR text has no such token. Captions of text-rich images should
    transcribe the visible text. This is the ``prof_cap_ocr_overlap`` column."""
    toks = [t.lower() for t in tokenize(ocr_text or "") if len(t) >= 2 or _CJK.search(t)]
    if not toks:
        return None
    cap = (caption or "").lower()
    return sum(t in cap for t in toks) / len(toks)


def caption_columns(captions_col: list, ocr_texts: list | None, pick: str = "first") -> dict[str, list]:
    tokens, langs, overlap = [], [], []
    for i, caps in enumerate(captions_col):
        text = profiled_caption(caps, pick)
        tokens.append(len(tokenize(text)) if text else 0)
        langs.append(detect_lang(text) if text else None)
        ocr = ocr_texts[i] if ocr_texts is not None else None
        overlap.append(ocr_overlap(text or "", ocr) if ocr else None)
    return {"prof_cap_tokens": tokens, "prof_cap_lang": langs, "prof_cap_ocr_overlap": overlap}
