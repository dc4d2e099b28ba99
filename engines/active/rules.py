"""Curation rules (signal, direction, threshold) and the signals the review engine reads.

A rule says "keep a row when ``column op threshold``". The review engine mines rows close to a
rule's threshold (where the rule is least sure), proposes keep/drop from the rules, and after
human review recalibrates the thresholds (``engines.active.loop.recalibrate``). The current
thresholds live in ``<dataset>/_curation/review/thresholds.json`` so the next ``mine`` uses them.

Columns come from other engines as they land; every function here uses what is present and
skips rules whose column is absent (graceful degradation, no fake values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Rule",
    "DEFAULT_RULES",
    "GOODNESS",
    "DISPLAY_SIGNALS",
    "load_rules",
    "save_rules",
    "column_values",
    "embedding_matrix",
    "passes",
    "signed_margin",
    "robust_scale",
    "EMBEDDING_COLUMNS",
    "DUP_SIM_COLUMNS",
]


class Rule(BaseModel):
    """Keep a row when ``column op threshold`` holds (``>=``: higher is better; ``<=``: lower is better)."""

    model_config = ConfigDict(extra="forbid")

    column: str
    op: Literal[">=", "<="]
    threshold: float
    why: str = Field("", description="what failing the rule means, shown to annotators as a reason")

    def describe(self, value: float | None = None) -> str:
        v = "" if value is None else f" (value {value:.3g})"
        return f"{self.why or self.column}: {self.column} {'<' if self.op == '>=' else '>'} {self.threshold:.3g}{v}"


DEFAULT_RULES: list[Rule] = [
    Rule(column="prof_quality", op=">=", threshold=0.45, why="low overall quality"),
    Rule(column="prof_aesthetic", op=">=", threshold=4.5, why="low aesthetics"),
    Rule(column="prof_clip_sim", op=">=", threshold=0.20, why="caption does not match the image"),
    Rule(column="prof_sharpness", op=">=", threshold=1.3, why="blurry"),
    Rule(column="prof_watermark", op="<=", threshold=0.5, why="watermark or overlay"),
    Rule(column="prof_nsfw", op="<=", threshold=0.5, why="NSFW"),
    Rule(column="rev_reward", op=">=", threshold=0.5, why="the reward model trained on reviews predicts drop"),
]

# signals where higher is better (disagreement between them is a hard case); nsfw/watermark are risks
GOODNESS = ["prof_quality", "prof_aesthetic", "prof_clip_sim", "rev_reward"]

# what the annotator page shows next to the image, when present
DISPLAY_SIGNALS = [
    "prof_quality",
    "prof_aesthetic",
    "prof_clip_sim",
    "prof_sharpness",
    "prof_brisque",
    "prof_watermark",
    "prof_nsfw",
    "prof_complexity",
    "prof_cap_ocr_overlap",
    "rev_reward",
    "width",
    "height",
]

# image embedding first (retrieval of visually similar rows), caption embedding as a fallback
EMBEDDING_COLUMNS = ["prof_clip_image", "vec_embedding", "prof_caption_emb"]

# a nearest-neighbour similarity written by the vector engine, when it has run (first present wins)
DUP_SIM_COLUMNS = ["dup_nn_sim", "dup_max_sim", "dup_sim", "vec_nn_sim"]


def load_rules(path: Path) -> list[Rule]:
    """The thresholds the last ``review apply`` wrote, else the defaults."""
    if path.is_file():
        data = json.loads(path.read_text())
        return [Rule.model_validate(r) for r in data.get("rules", [])]
    return [r.model_copy() for r in DEFAULT_RULES]


def save_rules(path: Path, rules: list[Rule], history: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {}
    payload = {"rules": [r.model_dump() for r in rules], "history": (old.get("history", []) + (history or []))[-50:]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def column_values(table: pa.Table, column: str) -> np.ndarray | None:
    """A numeric column as float64 with NaN for nulls; None when the column is absent or not numeric."""
    if column not in table.column_names:
        return None
    col = table.column(column)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        return None
    col = pc.cast(col, pa.float64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def embedding_matrix(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(float32 (n, d) L2-normalised, mask of rows that have one); None when the column is absent."""
    if column not in table.column_names:
        return None
    arr = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type):
        return None
    d = arr.type.list_size
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    vals = arr.values.to_numpy(zero_copy_only=False)[arr.offset * d : (arr.offset + len(arr)) * d]
    emb = np.nan_to_num(np.asarray(vals, np.float32).reshape(len(arr), d))
    emb[~valid] = 0.0
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.maximum(norm, 1e-12)
    return emb, valid & (norm[:, 0] > 0)


def robust_scale(x: np.ndarray) -> float:
    """Interquartile range of the non-null values (std or 1.0 when degenerate): the unit in
    which "near a threshold" is measured, so one band works for every signal's scale."""
    v = x[~np.isnan(x)]
    if len(v) < 2:
        return 1.0
    q1, q3 = np.percentile(v, [25, 75])
    s = float(q3 - q1)
    if s <= 1e-12:
        s = float(np.std(v))
    return s if s > 1e-12 else 1.0


def signed_margin(rule: Rule, x: np.ndarray, scale: float) -> np.ndarray:
    """How far each value is on the keep side of the threshold, in IQR units (negative = fails)."""
    m = (x - rule.threshold) if rule.op == ">=" else (rule.threshold - x)
    return m / scale


def passes(rule: Rule, x: np.ndarray) -> np.ndarray:
    """True where the rule keeps the row; rows without the signal pass (no evidence, no drop)."""
    with np.errstate(invalid="ignore"):
        ok = x >= rule.threshold if rule.op == ">=" else x <= rule.threshold
    return ok | np.isnan(x)
