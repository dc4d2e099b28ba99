"""Tagged resampling: per-row sampling weights that move the concept marginal toward a prior.

Each row carries concept tags with BM25 scores (direct and inherited from the hierarchy). Two
methods:

``balance`` (default): find row weights ``w`` so that the weighted concept frequencies
``f_c = sum_i w_i [c in tags_i]`` approach the target prior ``pi`` (uniform over the concepts
seen, times each concept's graph weight, or a user file). Multiplicative updates, in the
spirit of iterative proportional fitting: ``w_i *= exp(step * sum_c p_ic log(pi_c / m_c))``,
where ``p_ic`` is the row's BM25 score share of concept ``c`` and ``m`` the current marginal.
A row of rare concepts goes up, a row of common ones down; the BM25 shares decide which of a
row's concepts speak for it. Concepts tagged on more than ``max_concept_share`` of the rows
("entity", "object") cannot be balanced and are left out of the marginal.

``cap`` (MetaCLIP's balancing, a special case): a row is kept with probability
``1 - prod_c (1 - min(1, t / n_c))`` over its direct tags, ``n_c`` the concept's row count.
MetaCLIP fixes ``t`` (20k) and gets whatever size results; here ``t`` is solved by bisection
so the expected size is the requested ``target_size``.

Both end the same way: expected copies ``e_i`` scaled to ``target_size`` (default: the current
number of rows), at most ``max_upsample`` copies of any row (bounded up-sampling of rare rows;
the excess goes to the other rows), then systematic sampling turns ``e`` into integer copies
that add up to exactly ``target_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import scipy.sparse as sp

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.errors import UserError

__all__ = ["ResampleConfig", "ResampleResult", "resample", "marginal_metrics", "read_prior", "check_prior_concepts", "ResampleError"]


class ResampleError(UserError, ValueError):
    """A resampling request that cannot be met; the message says which option to change."""


class ResampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["balance", "cap"] = Field("balance", description="balance toward the prior, or MetaCLIP's cap-t")
    target_size: int | None = Field(None, ge=1, description="rows in the resampled set (default: as many as now)")
    prior: str = Field("uniform", description="'uniform' or a CSV/JSON file of concept,weight (id or label); unlisted concepts weigh 1")
    cap_t: float | None = Field(None, gt=0, description="cap method: fixed t; default solves t for target_size")
    max_upsample: float = Field(5.0, ge=1, description="at most this many copies of one row")
    iterations: int = Field(60, ge=1, le=10000)
    step: float = Field(0.5, gt=0, le=1, description="update damping for the balance method")
    max_concept_share: float = Field(0.5, gt=0, le=1, description="concepts on more rows than this share are not balanced")
    inherited: bool = Field(True, description="balance on inherited (ancestor) tags as well as direct ones")
    min_depth: int = Field(
        4, ge=0, description="concepts nearer the root than this (entity, abstraction, object, whole...) are not balanced nor reported"
    )
    untagged_weight: float = Field(1.0, ge=0, description="relative weight of rows without tags (MetaCLIP: 0)")
    seed: int = Field(0, ge=0, description="seed of the systematic sampling (NumPy needs a non-negative integer)")


@dataclass
class ResampleResult:
    expected: np.ndarray  # expected copies per row, sums to target_size
    copies: np.ndarray  # realised integer copies, sums to target_size
    concepts: list[str]  # balanced concepts (columns of the incidence matrix)
    incidence: sp.csr_matrix  # rows x concepts, 1 where the row carries the concept
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    cap_t: float | None = None


def read_prior(path: str | Path) -> dict[str, float]:
    """A prior file: CSV with columns concept,weight, or a JSON object {concept: weight}."""
    p = Path(path)
    out = {}
    for k, v, _ in _prior_items(p):
        try:
            w = float(v)
        except (TypeError, ValueError):
            raise ResampleError(f"{p}: weight of {k!r} is not a number: {v!r}") from None
        if w < 0:
            raise ResampleError(f"{p}: weight of {k!r} is negative")
        out[str(k).strip()] = w
    return out


def _prior_items(p: Path) -> list[tuple[str, object, int | None]]:
    """(concept, weight as written, line) for each entry of a prior file; the line lets errors
    point at the entry (None where a JSON key cannot be found as written)."""
    if not p.exists():
        raise ResampleError(f"prior file not found: {p} (use --prior uniform or a CSV/JSON of concept,weight)")
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ResampleError(f"{p}: expected a JSON object mapping concept -> weight")
        lines = text.splitlines()
        where = {k: next((i + 1 for i, ln in enumerate(lines) if json.dumps(k) in ln or f'"{k}"' in ln), None) for k in data}
        return [(str(k), v, where[k]) for k, v in data.items()]
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"concept", "weight"} <= set(reader.fieldnames):
        raise ResampleError(f"{p}: CSV needs a header with columns concept,weight")
    return [(r["concept"] or "", r["weight"], reader.line_num) for r in reader]


def check_prior_concepts(path: str | Path, matches: Callable[[str], bool], what: str = "no node of the graph (id, label or term)") -> None:
    """Refuse a prior whose concepts ``matches`` does not know, naming file, line and concept.
    Why: an unknown concept ("giraffee") weighs nothing, and the run looks as if the prior was
    applied while it was the uniform one."""
    bad = [(line, k.strip()) for k, _, line in _prior_items(Path(path)) if not matches(k.strip())]
    if not bad:
        return
    where = "; ".join(f"{path}:{line}: {k!r}" if line else f"{path}: {k!r}" for line, k in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise ResampleError(f"prior concept matches {what}: {where}{more}")


def _incidence(
    tags: Sequence[Sequence[str] | None],
    scores: Sequence[Sequence[float] | None],
    direct: Sequence[Sequence[bool] | None] | None,
    inherited: bool,
):
    import scipy.sparse as sp

    col: dict[str, int] = {}
    r, c, v = [], [], []
    for i, ts in enumerate(tags):
        ss = scores[i] or []
        ds = (direct[i] or []) if direct is not None else [True] * len(ts or [])
        for j, t in enumerate(ts or []):
            if inherited or ds[j]:
                r.append(i)
                c.append(col.setdefault(t, len(col)))
                v.append(float(ss[j]) if j < len(ss) else 1.0)
    n = len(tags)
    S = sp.csr_matrix((v, (r, c)), shape=(n, len(col)))
    S.sum_duplicates()
    return list(col), S


def _count(x: float, digits: int = 2) -> int | float:
    """A row count as an integer when it is one (``np.ones`` copies, integral targets), else rounded."""
    return int(round(x)) if abs(x - round(x)) < 1e-6 else round(x, digits)


def marginal_metrics(expected: np.ndarray, B: sp.csr_matrix, concepts: list[str], top: int = 10) -> dict:
    """Concept frequencies under ``expected`` copies: entropy, max/median, coverage, head/tail.
    With ``expected`` all ones these are the dataset's own counts ("before"); rows and counts
    that are whole numbers are integers."""
    f = np.asarray(B.T @ expected).ravel()
    present = f > 0
    k = int(present.sum())
    q = f[present] / f[present].sum() if k else np.zeros(0)
    h = float(-(q * np.log(q)).sum()) if k else 0.0
    order = np.argsort(-f)
    return {
        "concepts": int(B.shape[1]),
        "concepts_present": k,
        "coverage": round(float((f >= 1).sum()) / max(B.shape[1], 1), 4),
        "entropy": round(h, 4),
        "entropy_normalised": round(h / np.log(k), 4) if k > 1 else 0.0,
        "max_over_median": round(float(f.max() / np.median(f[present])), 3) if k else 0.0,
        "rows": _count(float(expected.sum()), 3),
        "head": [(concepts[i], _count(float(f[i]))) for i in order[:top]],
        "tail": [(concepts[i], _count(float(f[i]))) for i in order[::-1][:top] if f[i] > 0][::-1],
        "frequencies": f.round(4).tolist(),
    }


def _cap_bounded(e: np.ndarray, total: float, cap: float) -> np.ndarray:
    """Scale ``e`` to sum ``total`` with no entry above ``cap``, moving the excess to the rest."""
    e = e.astype(np.float64).copy()
    if e.sum() <= 0:
        raise ResampleError("every row has weight 0: no row can be sampled (check untagged_weight and the prior)")
    if total > cap * np.count_nonzero(e) + 1e-9:
        raise ResampleError(
            f"target size {total:g} needs more than max_upsample={cap:g} copies of each of the "
            f"{np.count_nonzero(e)} rows with weight > 0: raise --max-upsample or lower --target-size"
        )
    fixed = np.zeros(len(e), bool)
    for _ in range(len(e) + 1):
        free = total - cap * fixed.sum()
        scale = free / e[~fixed].sum()
        trial = np.where(fixed, cap, e * scale)
        over = (trial > cap) & ~fixed
        if not over.any():
            return trial
        fixed |= over
    return np.where(fixed, cap, e * (total - cap * fixed.sum()) / e[~fixed].sum())


def systematic_copies(e: np.ndarray, seed: int = 0) -> np.ndarray:
    """Integer copies with E[copies] = e and sum exactly round(sum(e)): each row gets floor or ceil."""
    n = int(round(e.sum()))
    if n == 0:
        return np.zeros(len(e), np.int64)
    rng = np.random.default_rng(seed)
    edges = np.concatenate([[0.0], np.cumsum(e)]) * (n / e.sum())
    points = rng.random() + np.arange(n)
    hits = np.searchsorted(edges, points, side="right") - 1
    return np.bincount(np.clip(hits, 0, len(e) - 1), minlength=len(e)).astype(np.int64)


def resample(
    tags: Sequence[Sequence[str] | None],
    scores: Sequence[Sequence[float] | None],
    direct: Sequence[Sequence[bool] | None] | None = None,
    config: ResampleConfig | None = None,
    *,
    concept_weight: dict[str, float] | None = None,
    prior: dict[str, float] | None = None,
    aliases: dict[str, list[str]] | None = None,
    concept_depth: dict[str, int] | None = None,
) -> ResampleResult:
    """Weights and copies for every row (see the module docstring).

    ``concept_weight`` (graph node weights) multiplies the prior; ``prior`` maps concept ids (or
    any key ``aliases`` maps to ids, e.g. labels) to target shares. ``concept_depth`` (graph
    depths) removes concepts above ``min_depth``: "entity" or "causal agent" say nothing a
    balance could use, and at the head of the report they hide the concrete concepts."""
    cfg = config or ResampleConfig()
    n = len(tags)
    if n == 0:
        raise ResampleError("no rows to resample")
    target = float(cfg.target_size or n)
    use_inherited = cfg.inherited and cfg.method == "balance"
    concepts, S = _incidence(tags, scores, direct, use_inherited)
    if concept_depth and cfg.min_depth:
        keep = [j for j, c in enumerate(concepts) if concept_depth.get(c, cfg.min_depth) >= cfg.min_depth]
        concepts, S = [concepts[j] for j in keep], S[:, keep].tocsr()
    B = S.copy()
    B.data = np.ones_like(B.data)
    tagged = np.asarray(B.sum(axis=1)).ravel() > 0
    if not tagged.any():
        raise ResampleError(_no_tags_message(tags, n, cfg.min_depth))
    if cfg.method == "cap":
        return _resample_cap(B, concepts, tagged, target, cfg)
    return _resample_balance(S, B, concepts, tagged, target, cfg, concept_weight, prior, aliases)


def _no_tags_message(tags, n: int, min_depth: int) -> str:
    """Why nothing can be balanced: no row has a tag at all (an empty graph, or a graph whose
    terms the captions never name), or only tags too near the root."""
    if any(tags):
        return f"none of the {n} rows has a concept tag at depth >= min_depth ({min_depth}): nothing to balance"
    return (
        f"none of the {n} rows has a concept tag: re-tag with a graph whose concepts the captions name "
        "(`curate graph tag --graph ... --overwrite`)"
    )


def _resample_cap(B, concepts: list[str], tagged: np.ndarray, target: float, cfg: ResampleConfig) -> ResampleResult:
    """Each row kept at most once, with probability 1 - prod over its concepts (1 - min(1, t / n_c)):
    the cap ``t`` found by bisection so the expected size is the target."""
    n = B.shape[0]
    n_c = np.asarray(B.sum(axis=0)).ravel()

    def probs(t: float) -> np.ndarray:
        keep_c = np.minimum(1.0, t / np.maximum(n_c, 1))
        p = 1.0 - np.exp(B @ np.log(np.maximum(1.0 - keep_c, 1e-300)))  # 1 - prod (1 - keep_c)
        p[~tagged] = min(cfg.untagged_weight, 1.0)
        return p

    t = cfg.cap_t
    if t is None:
        hi = float(n_c.max()) if len(n_c) else 1.0
        if probs(hi).sum() < target - 1e-6:
            raise ResampleError(
                f"the cap method keeps each row at most once: at most {probs(hi).sum():.0f} rows, "
                f"fewer than target size {target:g}; use --method balance to up-sample"
            )
        lo = 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if probs(mid).sum() < target:
                lo = mid
            else:
                hi = mid
        t = hi
    e = probs(t)
    if cfg.target_size and abs(e.sum() - target) > 0.5:
        e = _cap_bounded(e, target, 1.0)
    before = marginal_metrics(np.ones(n), B, concepts)  # the dataset as it is: one copy of each row
    copies = systematic_copies(e, cfg.seed)
    return ResampleResult(e, copies, concepts, B, before, marginal_metrics(e, B, concepts), cap_t=float(t))


def _concept_prior(concepts, balanced, prior, aliases, concept_weight) -> np.ndarray:
    """Target share per concept: the prior file's (through aliases; unlisted concepts weigh 1)
    times the graph's node weights, zero for over-represented concepts, normalised."""
    pi = np.ones(len(concepts))
    if prior is not None:
        ids = {}
        for k, v in prior.items():
            for cid in (aliases or {}).get(k, [k]):
                ids[cid] = v
        pi = np.array([ids.get(c, 1.0) for c in concepts], dtype=np.float64)
    if concept_weight:
        pi *= np.array([concept_weight.get(c, 1.0) for c in concepts])
    pi = np.where(balanced, pi, 0.0)
    if pi.sum() <= 0:
        raise ResampleError("the prior gives weight 0 to every concept in the data")
    return pi / pi.sum()


def _resample_balance(S, B, concepts, tagged, target: float, cfg: ResampleConfig, concept_weight, prior, aliases):
    """Multiplicative weights toward the concept prior (rows' concept shares from BM25 scores),
    bounded by ``max_upsample``, then scaled to the target size."""
    import scipy.sparse as sp

    n = B.shape[0]
    n_rows_c = np.asarray(B.sum(axis=0)).ravel()
    balanced = n_rows_c <= cfg.max_concept_share * max(tagged.sum(), 1)
    if balanced.sum() < 2:
        balanced[:] = True
    pi = _concept_prior(concepts, balanced, prior, aliases, concept_weight)
    P = S[:, balanced] if balanced.any() else S  # row shares of balanced concepts, from BM25 scores
    rs = np.asarray(P.sum(axis=1)).ravel()
    P = sp.diags(np.divide(1.0, rs, out=np.zeros_like(rs), where=rs > 0)) @ P
    Bb = B[:, balanced]
    log_pi = np.log(np.maximum(pi[balanced], 1e-300))
    has = rs > 0
    w = np.ones(n)
    w[~tagged] = cfg.untagged_weight
    lo, hi = 1.0 / cfg.max_upsample**2, cfg.max_upsample
    for _ in range(cfg.iterations):
        f = np.asarray(Bb.T @ w).ravel()
        m = f / max(f.sum(), 1e-300)
        g = np.where(m > 0, log_pi - np.log(np.maximum(m, 1e-300)), 0.0)
        upd = np.asarray(P @ g).ravel()
        w[has] *= np.exp(cfg.step * upd[has])
        w[has] = np.clip(w[has] / np.mean(w[has]), lo, hi)
    e = _cap_bounded(w, target, cfg.max_upsample)
    copies = systematic_copies(e, cfg.seed)
    kept = [c for c, b in zip(concepts, balanced) if b]
    before = marginal_metrics(np.ones(n), Bb, kept)  # the dataset as it is: one copy of each row
    after = marginal_metrics(e, Bb, kept)
    return ResampleResult(e, copies, kept, Bb.tocsr(), before, after)
