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

Where the work runs: the rows' tags are :class:`TagBlock` s (the job keeps one per Lance
fragment on a worker; :func:`resample` has one, in memory) and :func:`solve` drives them through
:class:`Blocks`: each step the blocks return vectors of concept length (their part of the
marginal) and the driver sends one back, so the driver holds no tag and, at the end, one
weight per row.
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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.blocks import Blocks, LocalBlocks
from curation.errors import UserError

__all__ = [
    "ResampleConfig",
    "ResampleResult",
    "resample",
    "solve",
    "TagBlock",
    "Blocks",
    "LocalBlocks",
    "marginal_metrics",
    "metrics_of",
    "read_prior",
    "check_prior_concepts",
    "ResampleError",
]


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

    @model_validator(mode="after")
    def _cap_t_for_cap(self) -> ResampleConfig:
        """``cap_t`` under ``method: balance`` was ignored without a word: the user meant the cap method."""
        if self.cap_t is not None and self.method != "cap":
            raise ValueError("cap_t (--cap-t) is the cap method's t: add method: cap (--method cap), or leave cap_t out")
        return self


@dataclass
class ResampleResult:
    expected: np.ndarray  # expected copies per row, sums to target_size
    copies: np.ndarray  # realised integer copies, sums to target_size
    concepts: list[str]  # balanced concepts (columns of the incidence matrix)
    incidence: sp.csr_matrix | None  # rows x concepts, 1 where the row carries the concept (in memory only)
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


def _list_array(values, item_type):
    """``values`` (Python lists, an Arrow list array or chunked array) as one Arrow list array."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.list_(item_type))
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.list_(item_type))
    return values


class TagBlock:
    """Some rows' concept tags (the job: one Lance fragment's, kept by a worker) and their part of
    a solve. Why blocks: the solve's per-row work (sparse products over the rows' tags) runs where
    the rows are, and the driver only adds up what the blocks return, vectors of concept length,
    so its memory does not grow with the rows (``solve``). One block is the in-memory path."""

    def __init__(self, tags, scores, direct=None):
        import pyarrow as pa

        self.tags = _list_array(tags, pa.string())
        self.scores = _list_array(scores, pa.float64())
        self.direct = None if direct is None else _list_array(direct, pa.bool_())
        self.n = len(self.tags)

    def rows(self) -> int:
        return self.n

    def _flat(self, inherited: bool):
        """(row, concept, score) of every tag used: inherited ones too, or direct ones only."""
        import pyarrow as pa
        import pyarrow.compute as pc

        lengths = pc.fill_null(pc.list_value_length(self.tags), 0).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(self.n, dtype=np.int32), lengths)
        concepts = pc.list_flatten(self.tags)
        vals = self._aligned(self.scores, lengths, pa.float64(), 1.0).astype(np.float64)
        keep = concepts.is_valid().to_numpy(zero_copy_only=False)
        if not inherited and self.direct is not None:
            keep &= self._aligned(self.direct, lengths, pa.bool_(), True).astype(bool)
        if keep.all():
            return rows, concepts, vals
        return rows[keep], concepts.filter(pa.array(keep)), vals[keep]

    def _aligned(self, values, lengths: np.ndarray, item_type, default) -> np.ndarray:
        """``values`` flattened to one entry per tag: a row's list shorter than its tags (or null)
        is filled with ``default``, as the per-row lists were read before."""
        import pyarrow.compute as pc

        got = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
        flat = pc.fill_null(pc.list_flatten(values), default).to_numpy(zero_copy_only=False)
        if np.array_equal(got, lengths):
            return flat
        out = np.full(int(lengths.sum()), default, dtype=flat.dtype if len(flat) else type(default))
        starts, vstarts = np.r_[0, np.cumsum(lengths)[:-1]], np.r_[0, np.cumsum(got)[:-1]]
        for s, vs, k in zip(starts, vstarts, np.minimum(lengths, got)):
            out[s : s + k] = flat[vs : vs + k]
        return out

    def concept_rows(self, inherited: bool) -> tuple[list[str], np.ndarray, bool]:
        """These rows' concepts in order of first appearance, the rows carrying each, and whether
        any row has a tag at all (used or not). Keeps the rows' tags as a sparse matrix over
        these concepts for :meth:`index`."""
        names, L = self._local(inherited)
        return names, np.bincount(L.indices, minlength=len(names)), bool(self.any_tag)

    def _local(self, inherited: bool):
        """(concepts in order of first appearance, rows x those concepts score matrix), built once
        per ``inherited`` from the Arrow lists (a row's repeated concept summed)."""
        import pyarrow.compute as pc
        import scipy.sparse as sp

        got = self.__dict__.setdefault("_locals", {})
        if inherited not in got:
            rows, concepts, vals = self._flat(inherited)
            enc = pc.dictionary_encode(concepts)
            names = enc.dictionary.to_pylist()
            indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=self.n))]  # tags are in row order: CSR as is
            L = sp.csr_matrix((vals, enc.indices.to_numpy(zero_copy_only=False).astype(np.int32), indptr), shape=(self.n, len(names)))
            L.sum_duplicates()
            self.any_tag = len(pc.list_flatten(self.tags)) > 0
            got[inherited] = (names, L)
        return got[inherited]

    def index(self, index: dict[str, int], inherited: bool) -> int:
        """Build the rows x concepts score matrix ``S`` over the solve's concept columns, concepts
        not in ``index`` left out; returns how many rows have a concept left."""
        import scipy.sparse as sp

        names, L = self._local(inherited)
        lut = np.array([index.get(c, -1) for c in names], np.int64)
        cols = lut[L.indices] if len(lut) else np.zeros(0, np.int64)
        ok = cols >= 0
        rows = np.repeat(np.arange(self.n, dtype=np.int32), np.diff(L.indptr))
        indptr = np.r_[0, np.cumsum(np.bincount(rows[ok], minlength=self.n))]
        S = sp.csr_matrix((L.data[ok], cols[ok].astype(np.int32), indptr), shape=(self.n, len(index)))
        S.sort_indices()
        self.S, self.tagged = S, np.diff(S.indptr) > 0
        self.tags = self.scores = self.direct = self._locals = None  # the matrix holds what the solve needs
        return int(self.tagged.sum())

    def start(self, cols: np.ndarray | None, untagged_weight: float) -> None:
        """Begin a solve: ``Bb`` the 0/1 matrix of the concept columns it balances (all: None), the
        rows' BM25 shares of them ``P`` (the balance method), every row's weight 1 (untagged:
        ``untagged_weight``). ``P`` and ``Bb`` share one index array and ``S`` is dropped: about
        20 bytes a tag while the solve runs."""
        import scipy.sparse as sp

        S = self.S if cols is None else self.S[:, cols]
        if cols is not None:
            rs = np.asarray(S.sum(axis=1)).ravel()
            share = np.divide(1.0, rs, out=np.zeros_like(rs), where=rs > 0)
            self.P = sp.csr_matrix((S.data * np.repeat(share, np.diff(S.indptr)), S.indices, S.indptr), shape=S.shape)
            self.has = rs > 0
        self.Bb = sp.csr_matrix((np.ones(S.nnz), S.indices, S.indptr), shape=S.shape)
        self.S = None
        self.w = np.ones(self.n)
        self.w[~self.tagged] = untagged_weight

    def frequencies(self, e: np.ndarray | None = None) -> np.ndarray:
        """Concept frequencies of these rows under the current weights (or ``e``)."""
        return np.asarray(self.Bb.T @ (self.w if e is None else e)).ravel()

    def update(self, g: np.ndarray, step: float) -> tuple[float, int]:
        """One multiplicative step toward the prior (``g``: log prior over marginal per concept);
        returns the sum and count of the updated weights, for the mean that normalises them."""
        upd = np.asarray(self.P @ g).ravel()
        self.w[self.has] *= np.exp(step * upd[self.has])
        return float(self.w[self.has].sum()), int(self.has.sum())

    def normalise(self, mean: float, lo: float, hi: float) -> None:
        self.w[self.has] = np.clip(self.w[self.has] / mean, lo, hi)

    def weights(self) -> np.ndarray:
        return self.w

    def cap_probs(self, log_free: np.ndarray, untagged: float) -> np.ndarray:
        """The cap method's keep probability of each row, 1 - prod over its concepts of
        (1 - keep_c), given ``log_free`` = log(1 - keep_c)."""
        p = 1.0 - np.exp(self.Bb @ log_free)
        p[~self.tagged] = untagged
        return p

    def cap_total(self, log_free: np.ndarray, untagged: float) -> float:
        return float(self.cap_probs(log_free, untagged).sum())


def _count(x: float, digits: int = 2) -> int | float:
    """A row count as an integer when it is one (``np.ones`` copies, integral targets), else rounded."""
    return int(round(x)) if abs(x - round(x)) < 1e-6 else round(x, digits)


def marginal_metrics(expected: np.ndarray, B: sp.csr_matrix, concepts: list[str], top: int = 10) -> dict:
    """:func:`metrics_of` the rows x concepts 0/1 matrix ``B`` under ``expected`` copies."""
    return metrics_of(np.asarray(B.T @ expected).ravel(), float(np.sum(expected)), concepts, top)


def metrics_of(f: np.ndarray, rows: float, concepts: list[str], top: int = 10) -> dict:
    """Concept frequencies ``f`` (expected rows carrying each concept, of ``rows`` in all):
    entropy, max/median, coverage, head/tail. With one copy of every row these are the
    dataset's own counts ("before"); rows and counts that are whole numbers are integers."""
    f = np.asarray(f, np.float64)
    present = f > 0
    k = int(present.sum())
    q = f[present] / f[present].sum() if k else np.zeros(0)
    h = float(-(q * np.log(q)).sum()) if k else 0.0
    order = np.argsort(-f)
    return {
        "concepts": len(f),
        "concepts_present": k,
        "coverage": round(float((f >= 1).sum()) / max(len(f), 1), 4),
        "entropy": round(h, 4),
        "entropy_normalised": round(h / np.log(k), 4) if k > 1 else 0.0,
        "max_over_median": round(float(f.max() / np.median(f[present])), 3) if k else 0.0,
        "rows": _count(float(rows), 3),
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
    **kwargs,
) -> ResampleResult:
    """Weights and copies for every row, in memory (see the module docstring; keyword arguments
    as :func:`solve`). ``incidence``: the rows x concepts 0/1 matrix of the concepts balanced."""
    block = TagBlock(tags, scores, direct)
    res = solve(LocalBlocks([block]), config, **kwargs)
    res.incidence = block.Bb.tocsr()
    return res


def solve(
    blocks: Blocks,
    config: ResampleConfig | None = None,
    *,
    concept_weight: dict[str, float] | None = None,
    prior: dict[str, float] | None = None,
    aliases: dict[str, list[str]] | None = None,
    concept_depth: dict[str, int] | None = None,
) -> ResampleResult:
    """Weights and copies for the rows of ``blocks``, in block order. The driver's share is of
    concept length (counts, the prior, the marginal) plus one weight per row at the end.

    ``concept_weight`` (graph node weights) multiplies the prior; ``prior`` maps concept ids (or
    any key ``aliases`` maps to ids, e.g. labels) to target shares. ``concept_depth`` (graph
    depths) removes concepts above ``min_depth``: "entity" or "causal agent" say nothing a
    balance could use, and at the head of the report they hide the concrete concepts."""
    cfg = config or ResampleConfig()
    sizes = np.asarray(blocks.map("rows"), np.int64)
    n = int(sizes.sum())
    if n == 0:
        raise ResampleError("no rows to resample")
    target = float(cfg.target_size or n)
    use_inherited = cfg.inherited and cfg.method == "balance"
    concepts, counts, any_tag = _merge_counts(blocks.map("concept_rows", use_inherited))
    if concept_depth and cfg.min_depth:
        keep = [j for j, c in enumerate(concepts) if concept_depth.get(c, cfg.min_depth) >= cfg.min_depth]
        concepts, counts = [concepts[j] for j in keep], counts[keep]
    n_tagged = sum(blocks.map("index", {c: j for j, c in enumerate(concepts)}, use_inherited))
    if not n_tagged:
        raise ResampleError(_no_tags_message(any_tag, n, cfg.min_depth))
    if cfg.method == "cap":
        return _solve_cap(blocks, sizes, counts, concepts, target, cfg)
    return _solve_balance(blocks, sizes, counts, concepts, n_tagged, target, cfg, _concept_prior_of(prior, aliases, concept_weight))


def _merge_counts(parts: list[tuple[list[str], np.ndarray, bool]]) -> tuple[list[str], np.ndarray, bool]:
    """The blocks' concept counts added up, concepts in order of first appearance over the rows."""
    total: dict[str, int] = {}
    for names, counts, _ in parts:
        for c, k in zip(names, counts.tolist()):
            total[c] = total.get(c, 0) + k
    return list(total), np.fromiter(total.values(), np.int64, len(total)), any(a for _, _, a in parts)


def _no_tags_message(any_tag: bool, n: int, min_depth: int) -> str:
    """Why nothing can be balanced: no row has a tag at all (an empty graph, or a graph whose
    terms the captions never name), or only tags too near the root."""
    if any_tag:
        return f"none of the {n} rows has a concept tag at depth >= min_depth ({min_depth}): nothing to balance"
    return (
        f"none of the {n} rows has a concept tag: re-tag with a graph whose concepts the captions name "
        "(`curate graph tag --graph ... --overwrite`)"
    )


def _split(e: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(e, np.cumsum(sizes)[:-1])


def _summed(parts: list[np.ndarray], k: int) -> np.ndarray:
    return np.sum(parts, axis=0) if parts else np.zeros(k)


def _solve_cap(blocks: Blocks, sizes, n_c: np.ndarray, concepts: list[str], target: float, cfg: ResampleConfig) -> ResampleResult:
    """Each row kept at most once, with probability 1 - prod over its concepts (1 - min(1, t / n_c)):
    the cap ``t`` found by bisection so the expected size is the target."""
    blocks.map("start", None, cfg.untagged_weight)
    untagged = min(cfg.untagged_weight, 1.0)

    def log_free(t: float) -> np.ndarray:
        return np.log(np.maximum(1.0 - np.minimum(1.0, t / np.maximum(n_c, 1)), 1e-300))

    def total(t: float) -> float:
        return sum(blocks.map("cap_total", log_free(t), untagged))

    t = cfg.cap_t
    if t is None:
        hi = float(n_c.max()) if len(n_c) else 1.0
        most = total(hi)
        if most < target - 1e-6:
            raise ResampleError(
                f"the cap method keeps each row at most once: at most {most:.0f} rows, "
                f"fewer than target size {target:g}; use --method balance to up-sample"
            )
        lo = 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if total(mid) < target:
                lo = mid
            else:
                hi = mid
        t = hi
    e = np.concatenate(blocks.map("cap_probs", log_free(t), untagged))
    if cfg.target_size and abs(e.sum() - target) > 0.5:
        e = _cap_bounded(e, target, 1.0)
    before = metrics_of(n_c.astype(np.float64), sizes.sum(), concepts)  # the dataset as it is: one copy of each row
    after = metrics_of(_summed(blocks.map("frequencies", each=_split(e, sizes)), len(concepts)), e.sum(), concepts)
    return ResampleResult(e, systematic_copies(e, cfg.seed), concepts, None, before, after, cap_t=float(t))


def _concept_prior_of(prior, aliases, concept_weight):
    return lambda concepts, balanced: _concept_prior(concepts, balanced, prior, aliases, concept_weight)


def _solve_balance(blocks: Blocks, sizes, n_rows_c, concepts, n_tagged: int, target: float, cfg: ResampleConfig, prior_of):
    """Multiplicative weights toward the concept prior (rows' concept shares from BM25 scores),
    bounded by ``max_upsample``, then scaled to the target size. Per iteration the blocks send
    the marginal's parts and the weights' sum, the driver sends the step and the mean."""
    balanced = n_rows_c <= cfg.max_concept_share * max(n_tagged, 1)
    if balanced.sum() < 2:
        balanced[:] = True
    pi = prior_of(concepts, balanced)
    cols = np.flatnonzero(balanced)
    blocks.map("start", cols, cfg.untagged_weight)
    log_pi = np.log(np.maximum(pi[balanced], 1e-300))
    lo, hi = 1.0 / cfg.max_upsample**2, cfg.max_upsample
    for _ in range(cfg.iterations):
        f = _summed(blocks.map("frequencies"), len(cols))
        m = f / max(f.sum(), 1e-300)
        g = np.where(m > 0, log_pi - np.log(np.maximum(m, 1e-300)), 0.0)
        sums = blocks.map("update", g, cfg.step)
        count = sum(c for _, c in sums)
        if count:
            blocks.map("normalise", sum(s for s, _ in sums) / count, lo, hi)
    e = _cap_bounded(np.concatenate(blocks.map("weights")), target, cfg.max_upsample)
    kept = [concepts[j] for j in cols]
    before = metrics_of(n_rows_c[cols].astype(np.float64), sizes.sum(), kept)  # the dataset as it is: one copy of each row
    after = metrics_of(_summed(blocks.map("frequencies", each=_split(e, sizes)), len(cols)), e.sum(), kept)
    return ResampleResult(e, systematic_copies(e, cfg.seed), kept, None, before, after)


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
