"""Curation rules (signal, direction, threshold) and the signals the review engine reads.

A rule says "keep a row when ``column op threshold``". The review engine mines rows close to a
rule's threshold (where the rule is least sure), proposes keep/drop from the rules, and after
human review recalibrates the thresholds (``engines.active.loop.recalibrate``). The current
thresholds live in ``<dataset>/_curation/review/thresholds.json`` so the next ``mine`` uses them.

Every default rule stands on a signal whose ranking power was measured: ``Rule.auc`` and
``Rule.evidence`` say how well the column separates what the rule drops from what it keeps, and on
what data (docs/review.md shows the same table). A signal without a measured AUC is no default
rule: it can order the review queue (``GOODNESS``, ``DISPLAY_SIGNALS``) but not propose drops.

A rule whose column the dataset lacks is an error unless the rule is ``optional``, as for the
export's rules (``pipelines.export.check_rules``): a misspelt or never computed column would
otherwise leave the rule silently unused. ``check_rules`` says which column, which stage or
command writes it, and the fixes. The default rules are optional (no dataset needs every stage);
the mining summary lists those it did not apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curation.errors import UserError

__all__ = [
    "Rule",
    "DEFAULT_RULES",
    "GOODNESS",
    "DISPLAY_SIGNALS",
    "FITTED_AUC",
    "MissingRuleColumn",
    "check_rules",
    "load_rules",
    "save_rules",
    "column_values",
    "embedding_matrix",
    "passes",
    "signed_margin",
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
    auc: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="ranking AUC of the column for what `why` names (0.5 = chance, 1 = perfect), as measured in `evidence`",
    )
    evidence: str = Field("", description="what the AUC was measured on: data, where the figure and its test are")
    optional: bool = Field(
        False, description="when the dataset lacks the column, skip the rule (listed in the mining summary) instead of failing"
    )

    def describe(self, value: float | None = None) -> str:
        v = "" if value is None else f" (value {value:.3g})"
        return f"{self.why or self.column}: {self.column} {'<' if self.op == '>=' else '>'} {self.threshold:.3g}{v}"


# AUC: ranking AUC of the column, the rule's direction, on the data `evidence` names
DEFAULT_RULES: list[Rule] = [
    Rule(
        column="prof_quality",
        op=">=",
        threshold=0.45,
        why="low overall quality",
        auc=0.93,
        evidence="80 coco-mini photos clean vs one degraded copy each (blur, noise, JPEG q5-12, exposure, low contrast, "
        "watermark; 512 px, no aesthetic head): AUC 0.93, per kind 0.86-1.00. At 0.45 it drops 0/80 clean and only 1/80 "
        "degraded: a cautious start that review apply recalibrates",
        optional=True,
    ),
    Rule(
        column="prof_sharpness",
        op=">=",
        threshold=1.3,
        why="blurry",
        auc=0.996,
        evidence="80 coco-mini photos vs Gaussian-blurred copies (sigma 1.5-4 px at 640 px, decoded as prof_degradation "
        "does): AUC 0.996. At 1.3 it drops 0/80 clean and 34/80 blurred (28/39 of sigma >= 3)",
        optional=True,
    ),
    Rule(
        column="prof_watermark_score",
        op="<=",
        threshold=0.5,
        why="watermark or overlay text",
        auc=0.98,
        evidence="tests/engines/profiling/test_watermark.py set, docs/profiling.md: 156 rendered semi-transparent marks on 78 "
        "coco-mini photos vs the 78 clean ones, with prof_ocr: AUC 0.98 (0.95 against the 26 with scene text; held-out "
        "photos 0.98 / 0.94). At 0.5 it catches 96% of marks and drops 8/78 clean photos, all with scene text. Without "
        "prof_ocr the score is the pixel overlay cue: AUC 0.76 (0.70), catches 52%, drops 15%",
        optional=True,
    ),
    Rule(
        column="rev_reward",
        op=">=",
        threshold=0.5,
        why="the reward model trained on reviews predicts drop",
        auc=None,  # measured per fit: FITTED_AUC
        evidence="cross-validated on this dataset's own review labels at each `review apply` (reward_head.json meta.cv_auc); "
        "load_rules fills it in",
        optional=True,  # no rev_reward before the first review apply
    ),
]
"""Rules on signals with a measured AUC only. Not default rules, no AUC measured here: ``prof_clip_sim``
(no CLIP weights offline), ``prof_aesthetic`` (no head ships), ``prof_nsfw`` (the export's
``prof_nsfw >= 0.8`` rule still excludes), and the stroke heuristic ``prof_watermark`` (AUC 0.61-0.65:
review ordering at most). Add any of them as your own rule in thresholds.json when you have measured it."""

FITTED_AUC = {"rev_reward": "reward_head.json"}
"""Columns whose AUC is measured at each fit (cross-validated), in this file of the review folder."""

# signals where higher is better (disagreement between them is a hard case; ordering only, no drops)
GOODNESS = ["prof_quality", "prof_aesthetic", "prof_clip_sim", "rev_reward"]

# what the annotator page shows next to the image, when present
DISPLAY_SIGNALS = [
    "prof_quality",
    "prof_aesthetic",
    "prof_clip_sim",
    "prof_sharpness",
    "prof_brisque",
    "prof_watermark_score",
    "prof_nsfw",
    "prof_complexity",
    "prof_cap_ocr_overlap",
    "rev_reward",
    "width",
    "height",
]

# image embedding first (retrieval of visually similar rows), caption embedding as a fallback; both
# written by profiling stages (prof_clip, prof_text_emb). tests/engines/active/test_rules.py checks
# that every column named in this module is one a registered stage or command writes.
EMBEDDING_COLUMNS = ["prof_clip_image", "prof_caption_emb"]

# a duplicate similarity written by `curate dedup` (similarity to the kept row of the group), when it has run
DUP_SIM_COLUMNS = ["dup_sim"]


class MissingRuleColumn(UserError, ValueError):
    """A rule names a column the dataset does not have (and the rule is not optional)."""


def _writer(column: str) -> str | None:
    """The stage or command that writes ``column`` (from the stage registry and the column groups),
    None when nothing of this project declares it."""
    from curation.registry import STAGES
    from curation.schema import COLUMN_GROUPS, SAMPLES_SCHEMA

    if column in SAMPLES_SCHEMA.names:
        return "curate ingest"
    for name, cls in sorted(STAGES.items()):
        if column in cls.output_schema.names:
            return f"stage {name}"
    for g in COLUMN_GROUPS.values():
        if column in g.columns:
            if g.name in STAGES:
                return f"stage {g.name}"
            return {"dup": "curate dedup", "rev": "curate review apply"}.get(g.name, f"the job that writes column group {g.name}")
    return None


def check_rules(rules: list[Rule], columns: list[str], source: str = "the review rules") -> list[str]:
    """Notes on the optional rules that will not apply (their column is absent); raises
    ``MissingRuleColumn`` naming the column, what writes it and the fixes for a rule that is not
    optional. ``source`` names where the rules came from (the thresholds file) in the message."""
    import difflib

    notes = []
    have = set(columns)
    for r in rules:
        if r.column in have:
            continue
        writer = _writer(r.column)
        if r.optional:
            made = f"; {writer} writes it" if writer else ""
            notes.append(f"rule {r.column} {r.op} {r.threshold:.3g}: not applied (column {r.column} absent{made})")
            continue
        close = difflib.get_close_matches(r.column, sorted(have), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        made = f"compute it first ({writer}), " if writer else "no stage or command of this project writes it; "
        raise MissingRuleColumn(
            f"review rule {r.column} {r.op} {r.threshold:.3g} ({source}) needs column {r.column}, which this dataset does not have: "
            f'{hint}{made}fix or remove the rule, or mark it optional ("optional": true) to mine without it'
        )
    return notes


def load_rules(path: Path, columns: list[str] | None = None) -> list[Rule]:
    """The thresholds the last ``review apply`` wrote, else the defaults. With ``columns`` (the
    dataset's), a rule on an absent column that is not optional raises ``MissingRuleColumn``
    (``check_rules``). A fitted signal's rule (``FITTED_AUC``) gets the AUC of the last fit."""
    if path.is_file():
        data = json.loads(path.read_text())
        try:
            # a file from before rules had `optional` holds recalibrated defaults, which skipped absent columns then
            rules = [Rule.model_validate({"optional": True, **r} if "optional" not in r else r) for r in data.get("rules", [])]
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    else:
        rules = [r.model_copy() for r in DEFAULT_RULES]
    for i, r in enumerate(rules):
        head = path.parent / FITTED_AUC[r.column] if r.column in FITTED_AUC else None
        if head is not None and head.is_file():
            meta = json.loads(head.read_text()).get("meta") or {}
            if meta.get("cv_auc") is not None:
                rules[i] = r.model_copy(
                    update={
                        "auc": float(meta["cv_auc"]),
                        "evidence": f"cross-validated on {meta.get('n')} review labels ({meta.get('keep')} keep, "
                        f"{meta.get('drop')} drop) at the last review apply ({head.name})",
                    }
                )
    if columns is not None:
        check_rules(rules, columns, source=str(path) if path.is_file() else "the default rules")
    return rules


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


def signed_margin(rule: Rule, x: np.ndarray, scale: float) -> np.ndarray:
    """How far each value is on the keep side of the threshold, in IQR units (negative = fails)."""
    m = (x - rule.threshold) if rule.op == ">=" else (rule.threshold - x)
    return m / scale


def passes(rule: Rule, x: np.ndarray) -> np.ndarray:
    """True where the rule keeps the row; rows without the signal pass (no evidence, no drop)."""
    with np.errstate(invalid="ignore"):
        ok = x >= rule.threshold if rule.op == ">=" else x <= rule.threshold
    return ok | np.isnan(x)
