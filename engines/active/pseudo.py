"""Pseudo-labels (what the machine proposes) and the AI verifier (an independent second check).

The report's active-curation loop: the current models assign pseudo-labels, a human verifier
and an AI verifier check them. Here:

- the **pseudo-label** applies the curation rules conjunctively (any failed rule -> drop, with
  the failed rules as reasons), proposes a caption fix when OCR text is missing from the caption,
  and proposes tags (the concept graph's direct tags, else caption keywords);
- the **verifier** decides by a different function so it can disagree: the reward head fitted on
  earlier human labels when there is one; else a vote of human-reviewed neighbours; else a
  compensatory score (mean signed margin over all rules: a small miss on one rule can be
  outweighed by clear passes on the others, where the conjunctive pseudo-label drops).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from engines.active.rules import Rule
from engines.profiling.captions import ocr_overlap

__all__ = ["pseudo_label", "verify", "caption_fix", "keyword_tags", "choose_caption"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{1,}|[\u4e00-\u9fff]")
_STOP = set(
    """a an the and or of in on at to for with by from is are was were be been this that these those it its
there here some two three four one several many very into onto over under near next top front back side his her
their our your while who which what where when has have having stands standing sitting sits""".split()
)


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def caption_fix(caption: str, ocr: str, lang: str = "en") -> str:
    """The caption with the image's text added (what text-rendering training needs)."""
    ocr = " ".join((ocr or "").split())
    if lang == "zh":
        return f"{caption.rstrip('。. ')}。图中文字：“{ocr}”"
    base = caption.rstrip(". ")
    return f'{base}. The text in the image reads "{ocr}".' if base else f'The text in the image reads "{ocr}".'


def keyword_tags(caption: str, k: int = 5) -> list[str]:
    out: list[str] = []
    for w in _tokens(caption):
        if len(w) >= 3 and w not in _STOP and w not in out:
            out.append(w)
    return out[:k]


def choose_caption(captions: list[dict] | None, reviewed: str | None = None) -> tuple[str, str]:
    """(caption text, lang) shown for editing: a previous reviewer's caption, else the longest
    descriptive caption (long/short/alt), else the longest of any kind. Not the caption a row is
    profiled by (``engines.profiling.captions.profiled_caption``)."""
    if reviewed:
        return reviewed, "und"
    caps = [c for c in (captions or []) if c and c.get("text")]
    desc = [c for c in caps if c.get("kind") in ("long", "short", "alt", "reviewed", None)]
    pool = desc or caps
    if not pool:
        return "", "und"
    best = max(pool, key=lambda c: len(c["text"]))
    return best["text"], best.get("lang") or "und"


def pseudo_label(
    values: dict[str, float],
    rules: list[Rule],
    *,
    caption: str = "",
    lang: str = "en",
    ocr_text: str = "",
    overlap: float | None = None,
    tags: list[str] | None = None,
    min_ocr_chars: int = 3,
) -> dict[str, Any]:
    """Proposed decision (keep/drop with failed rules as reasons), caption fix, tags."""
    reasons = []
    for r in rules:
        v = values.get(r.column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if (r.op == ">=" and v < r.threshold) or (r.op == "<=" and v > r.threshold):
            reasons.append(r.describe(v))
    fix = None
    ocr = (ocr_text or "").strip()
    if len(ocr) >= min_ocr_chars:
        ov = ocr_overlap(caption=caption, ocr_text=ocr) if overlap is None else overlap
        ov = 1.0 if ov is None else ov  # no word in the OCR text: nothing the caption could miss
        if ov < 0.5:
            fix = caption_fix(caption, ocr, lang)
    return {
        "decision": "drop" if reasons else "keep",
        "reasons": reasons,
        "caption_fix": fix,
        "tags": list(tags) if tags else keyword_tags(caption),
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, x))))


def verify(
    values: dict[str, float],
    rules: list[Rule],
    scales: dict[str, float],
    *,
    reward_p: float | None = None,
    neighbour_votes: list[str] | None = None,
) -> dict[str, Any]:
    """The AI verifier's verdict: keep/drop, P(keep), the method used and why."""
    if reward_p is not None and not math.isnan(reward_p):
        return {
            "verdict": "keep" if reward_p >= 0.5 else "drop",
            "p_keep": round(float(reward_p), 4),
            "method": "reward_head",
            "why": f"reward head trained on human reviews gives P(keep)={reward_p:.2f}",
        }
    votes = [v for v in (neighbour_votes or []) if v in ("keep", "drop")]
    if len(votes) >= 3:
        p = (votes.count("keep") + 1) / (len(votes) + 2)  # Laplace: 3 votes never give certainty
        return {
            "verdict": "keep" if p >= 0.5 else "drop",
            "p_keep": round(p, 4),
            "method": "neighbour_votes",
            "why": f"{votes.count('keep')} of {len(votes)} reviewed look-alikes were kept",
        }
    margins = []
    for r in rules:
        v = values.get(r.column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        m = (v - r.threshold) if r.op == ">=" else (r.threshold - v)
        margins.append(float(np.clip(m / max(scales.get(r.column, 1.0), 1e-9), -3, 3)))
    if not margins:
        return {"verdict": "unsure", "p_keep": None, "method": "none", "why": "no signals to check"}
    p = _sigmoid(2.0 * float(np.mean(margins)))
    return {
        "verdict": "keep" if p >= 0.5 else "drop",
        "p_keep": round(p, 4),
        "method": "signal_consensus",
        "why": f"mean margin over {len(margins)} signals is {np.mean(margins):+.2f} IQR",
    }
