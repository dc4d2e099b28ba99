"""Hard-case mining and balanced batches: what humans should look at next.

``mine(table, ...)`` takes the dataset's light columns (whatever engines have run) and returns
review items. A row is a hard case when a machine decision about it is least trustworthy:

- ``near_threshold``: a signal within a band of a rule's threshold (band in IQR units of that signal);
- ``signals_disagree``: goodness signals (quality, aesthetics, image-text similarity, reward) rank
  the row very differently;
- ``low_similarity``: image-text similarity in the dataset's bottom tail;
- ``ocr_missing``: text in the image that the caption does not mention;
- ``borderline_duplicate``: nearest-neighbour similarity between "distinct" and "duplicate";
- ``like_flagged``: a retrieval neighbour of a row a reviewer flagged as a failure ("find more like this");
- ``verifier_disagrees``: the AI verifier and the pseudo-label disagree.

Selection is balanced the way the report samples: strata are (concept, quality bin), concept
from the graph's tags and quality from the reward model (or the profile's quality); strata are
served round-robin, hardest first within each, so a common concept cannot fill the batch.
Absent columns switch their criteria off; nothing is invented.

Random weights: embeddings (and the similarities and scores computed from them) made by randomly
initialised weights are noise. The caller names them (``random_derived``, from
``engines.vector.retrieval.random_weight_sources``); ``mine`` refuses them unless
``allow_random_weights``, and then marks the summary and every payload as random-derived.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curation.blocks import Blocks, LocalBlocks
from curation.quantiles import Quantiles
from engines.active.payload import Neighbour, ReviewPayload
from engines.active.pseudo import choose_caption, pseudo_label, verify
from engines.active.rules import (
    DISPLAY_SIGNALS,
    DUP_SIM_COLUMNS,
    EMBEDDING_COLUMNS,
    GOODNESS,
    Rule,
    column_values,
    embedding_matrix,
    signed_margin,
)
from engines.profiling.captions import ocr_overlap

__all__ = [
    "MineConfig",
    "mine",
    "mine_blocks",
    "MineBlock",
    "Stats",
    "Context",
    "signal_columns",
    "knn",
    "balanced_order",
    "primary_concepts",
    "hardness",
]


class MineConfig(BaseModel):
    """How many items to mine and how hard a row must be."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1000, ge=1, le=10_000_000, description="items to queue")
    band: float = Field(0.25, gt=0, le=5, description="'near a threshold' = within this many IQRs of it")
    min_hardness: float = Field(0.3, ge=0, le=1, description="rows below this hardness are not queued")
    double_share: float = Field(0.1, ge=0, le=1, description="share of items given to two annotators (agreement)")
    low_sim_quantile: float = Field(0.1, gt=0, lt=1, description="bottom share of image-text similarity that is hard")
    dup_band: tuple[float, float] = Field((0.90, 0.97), description="borderline duplicate similarity range")
    neighbours: int = Field(4, ge=0, le=20, description="look-alikes shown per item")
    like_flagged_k: int = Field(20, ge=0, le=1000, description="neighbours mined per flagged failure")
    quality_bins: int = Field(4, ge=1, le=20)
    knn_max_rows: int = Field(200_000, ge=0, description="compute nearest-neighbour similarity only up to this many rows")
    include_reviewed: bool = Field(False, description="re-mine rows that already have a review decision")
    allow_random_weights: bool = Field(
        False,
        description="mine even when embeddings or scores came from randomly initialised weights (noise); "
        "the summary and every item's payload are then marked random_derived",
    )
    seed: int = 0


def knn(
    query: np.ndarray, base: np.ndarray, k: int, *, chunk: int = 65536, exclude_self: np.ndarray | None = None, max_cells: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of L2-normalised vectors by chunked matrix products: (sims, indices), (q, k).

    ``exclude_self[i]`` is the base index of query i (its own row) to skip. Exact and dependency
    free; the vector engine's FAISS index is the tool for billions, this serves a batch of queries.
    Queries go in blocks too, so one product holds at most ``max_cells`` similarities (16 MiB, and
    its partition's indices): every row against every row at 15,000 rows took 3.8 GB in one product."""
    q = len(query)
    per = max(1, max_cells // max(min(chunk, len(base)), 1))
    if q > per:
        parts = [
            knn(
                query[a : a + per],
                base,
                k,
                chunk=chunk,
                exclude_self=None if exclude_self is None else exclude_self[a : a + per],
                max_cells=max_cells,
            )
            for a in range(0, q, per)
        ]
        return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
    k = min(k, len(base) - (1 if exclude_self is not None else 0))
    if q == 0 or k <= 0:
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
    best_s = np.full((q, k), -np.inf, np.float32)
    best_i = np.full((q, k), -1, np.int64)
    for start in range(0, len(base), chunk):
        s = query @ base[start : start + chunk].T
        if exclude_self is not None:
            rows = np.nonzero((exclude_self >= start) & (exclude_self < start + chunk))[0]
            s[rows, exclude_self[rows] - start] = -np.inf
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, axis=1)
        cs = np.concatenate([best_s, ps], axis=1)
        ci = np.concatenate([best_i, part + start], axis=1)
        top = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, axis=1), np.take_along_axis(ci, top, axis=1)
    return _exact(query, base, best_s, best_i)


def _exact(query: np.ndarray, base: np.ndarray, s: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chosen neighbours' similarities again, each pair's dot product summed in float64, and
    the neighbours re-sorted by them. Why: BLAS sums a product in an order that depends on its
    shape (OpenBLAS's small-matrix kernels on AVX-512 machines: 7 queries against 128 rows gave
    0.88589025 where 300 queries gave 0.8858902), so the same pair's similarity depended on how
    the queries were cut into blocks, and so did what mining showed and which tie won. A pair's
    float64 sum rounded to float32 is the same whatever the cut; it costs k dot products a query."""
    s = s.copy()
    q64 = query.astype(np.float64)
    for j in range(s.shape[1]):
        ok = np.isfinite(s[:, j])
        s[ok, j] = np.einsum("ij,ij->i", q64[ok], base[ix[ok, j]].astype(np.float64))
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(ix, order, axis=1)


def primary_concepts(table: pa.Table) -> list[str]:
    """Each row's main concept: its best-scoring direct tag from the graph engine, else 'untagged'."""
    n = table.num_rows
    if "tag_concepts" not in table.column_names:
        return ["untagged"] * n
    concepts = table.column("tag_concepts").to_pylist()
    scores = table.column("tag_scores").to_pylist() if "tag_scores" in table.column_names else [None] * n
    direct = table.column("tag_direct").to_pylist() if "tag_direct" in table.column_names else [None] * n
    out = []
    for c, s, d in zip(concepts, scores, direct):
        c = c or []
        idx = [i for i in range(len(c)) if not d or (i < len(d) and d[i])] or list(range(len(c)))
        if not idx:
            out.append("untagged")
            continue
        best = max(idx, key=lambda i: s[i] if s and i < len(s) and s[i] is not None else 0.0)
        out.append(str(c[best]))
    return out


def balanced_order(strata: list[Any], hardness: np.ndarray, n: int) -> list[int]:
    """Indices in serving order: round-robin over strata (hardest stratum first), hardest first within."""
    groups: dict[Any, list[int]] = {}
    for i in np.argsort(-hardness, kind="stable"):
        groups.setdefault(strata[i], []).append(int(i))
    queues = sorted(groups.values(), key=lambda g: -hardness[g[0]])
    out: list[int] = []
    depth = 0
    while len(out) < n and queues:
        alive = []
        for g in queues:
            if depth < len(g):
                out.append(g[depth])
                if len(out) >= n:
                    break
                alive.append(g)
        queues, depth = alive, depth + 1
    return out


def hardness(components: dict[str, np.ndarray]) -> np.ndarray:
    """Hardest criterion plus a little for each further one (several reasons beat one)."""
    if not components:
        return np.zeros(0)
    m = np.stack(list(components.values()))
    return np.clip(m.max(axis=0) + 0.1 * (m.sum(axis=0) - m.max(axis=0)), 0, 1.5)


def _needs_two(row_id: str, share: float, seed: int) -> bool:
    h = int(hashlib.sha1(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < share


def mine(
    table: pa.Table,
    rules: list[Rule],
    config: MineConfig | None = None,
    *,
    flagged: list[str] | None = None,
    reviewed: dict[str, str] | None = None,
    reward: np.ndarray | None = None,
    random_derived: dict[str, dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Review items for the hardest rows, in balanced serving order, and a summary of the mining.

    ``table``: light columns of the dataset, optionally with ``_pos`` (row offset in the version
    mined, shown in payloads); ``flagged``: row ids reviewers flagged as failures; ``reviewed``:
    row id -> human decision (excluded from mining, used for neighbour votes); ``reward``: the
    reward head's P(keep) per row; ``random_derived``: ``{column: {"group", "why"}}`` for columns
    of ``table`` made by random weights (``engines.vector.retrieval.random_weight_sources``):
    refused (``RandomWeightsError``) unless ``config.allow_random_weights``, then recorded in the
    summary and each payload. Each item's ``payload`` is a ``ReviewPayload`` dumped to a
    JSON-able dict. In memory: :func:`mine_blocks` over one block of the whole table.
    """
    return mine_blocks(
        LocalBlocks([MineBlock(table, 0, rules, reward)]),
        rules,
        config,
        columns=table.column_names,
        flagged=flagged,
        reviewed=reviewed,
        random_derived=random_derived,
    )


def signal_columns(rules: list[Rule]) -> list[str]:
    """The numeric columns mining reads (in a fixed order, the same in every process)."""
    return list(dict.fromkeys(DISPLAY_SIGNALS + [r.column for r in rules] + GOODNESS))


def _values(table: pa.Table, rules: list[Rule], reward: np.ndarray | None) -> dict[str, np.ndarray]:
    vals = {c: v for c in signal_columns(rules) if (v := column_values(table, c)) is not None}
    if reward is not None:
        vals["rev_reward"] = reward.astype(np.float64)
    return vals


def _vrow(vals: dict[str, np.ndarray], i: int) -> dict[str, float]:
    return {c: float(v[i]) for c, v in vals.items() if not np.isnan(v[i])}


@dataclass
class Stats:
    """What mining knows of the whole dataset, merged from the blocks' summaries (block order):
    the row count and a :class:`Quantiles` of each signal column and dedup similarity present
    (empty where the column has no value). The driver holds this, not a value a row."""

    rows: int
    signals: dict[str, Quantiles]
    dups: dict[str, Quantiles]

    def merge(self, other: Stats) -> Stats:
        def both(a: dict[str, Quantiles], b: dict[str, Quantiles]) -> dict[str, Quantiles]:
            return {**a, **{c: a[c].merge(q) if c in a else q for c, q in b.items()}}

        return Stats(self.rows + other.rows, both(self.signals, other.signals), both(self.dups, other.dups))

    def has(self, column: str) -> bool:
        return column in self.signals and self.signals[column].count > 0


@dataclass
class Context:
    """What every block needs to score its rows as the whole dataset would: the rules in use and
    their scales, the percentile ranks and quality bins' edges (from :class:`Stats`), the
    reviewed look-alikes' vectors (neighbour votes), the rows found near flagged failures, and
    who may be queued. Its size does not grow with the dataset (``nn``: at most ``knn_max_rows``)."""

    cfg: MineConfig
    active: list[Rule]
    scales: dict[str, float]
    good: list[str]  # goodness signals with values: their ranks disagreeing is a criterion
    ranks: dict[str, Quantiles]  # the goodness signals' and prof_clip_sim's summaries
    quality: tuple[str, np.ndarray] | None = None  # (signal, bin edges) of the strata's quality bins
    ocr: bool = False  # an OCR text column is mined
    dup_col: str | None = None  # dedup's similarity column, when it has values
    nn: tuple[np.ndarray, pa.Array] | None = None  # no dup column, small data: each row's nearest similarity and its id
    labelled: tuple[list[str], np.ndarray, list[str]] | None = None  # (ids, vectors, decisions), 3 or more
    flagged: tuple[np.ndarray, np.ndarray, list[str]] | None = None  # (global positions, vectors, ids)
    like: tuple[np.ndarray, np.ndarray, list[str]] | None = None  # (positions ascending, similarity, flagged id)
    reviewed: pa.Array | None = None  # ids with a review decision: not queued unless cfg.include_reviewed
    only: pa.Array | None = None  # when set, only these ids may be queued (gold rows)


class MineBlock:
    """Some rows of the mining (the job: one Lance fragment, read by a worker) with all their
    columns; its row ``i`` is row ``offset + i`` of the mining. Everything about a row happens
    here (criteria, hardness, pseudo-labels, verdicts, strata, payload details) against the
    dataset-wide :class:`Context`; the driver merges summaries and the few rows it queues
    (:func:`mine_blocks`)."""

    def __init__(self, table: pa.Table, offset: int, rules: list[Rule], reward: np.ndarray | None = None):
        self.table, self.offset, self.n = table, offset, table.num_rows
        self.vals = _values(table, rules, None if reward is None else reward[offset : offset + table.num_rows])
        self.emb_col = next((c for c in EMBEDDING_COLUMNS if c in table.column_names), None)
        self.emb = embedding_matrix(table, self.emb_col) if self.emb_col else None
        self.id_array = table.column("id").combine_chunks()
        self.ids = self.id_array.to_pylist()
        self.pos = np.asarray(table.column("_pos").to_numpy(zero_copy_only=False), np.int64) if "_pos" in table.column_names else None

    def rows(self) -> int:
        return self.n

    def embedding_column(self) -> str | None:
        return self.emb_col

    def stats(self) -> Stats:
        """This block's summaries (:class:`Stats`)."""
        dups = {c: Quantiles.of(v) for c in DUP_SIM_COLUMNS if (v := column_values(self.table, c)) is not None}
        return Stats(self.n, {c: Quantiles.of(v) for c, v in self.vals.items()}, dups)

    def _col(self, name: str, rows: list[int] | None) -> list[Any] | None:
        """Column ``name`` of ``rows`` (None: every row) as Python values; None when absent."""
        if name not in self.table.column_names:
            return None
        col = self.table.column(name)
        return (col if rows is None else col.take(pa.array(rows, pa.int64()))).to_pylist()

    def _is_null(self, name: str) -> np.ndarray:
        if name not in self.table.column_names:
            return np.ones(self.n, bool)
        return np.asarray(self.table.column(name).is_null().to_numpy(zero_copy_only=False), bool)

    def _among(self, ids: pa.Array | None) -> np.ndarray:
        if ids is None or len(ids) == 0:
            return np.zeros(self.n, bool)
        return np.asarray(pc.is_in(self.id_array, value_set=ids.cast(self.id_array.type)).to_numpy(zero_copy_only=False), bool)

    def _texts(self, rows: list[int] | None) -> tuple[list[tuple[str, str]], list[str | None] | None]:
        """(the caption shown for editing, OCR text or None without the column) of ``rows``."""
        n = self.n if rows is None else len(rows)
        caps, rev = self._col("captions", rows) or [None] * n, self._col("rev_caption", rows) or [None] * n
        return [choose_caption(c, r) for c, r in zip(caps, rev)], self._col("prof_ocr_text", rows)

    def _opinions_of(self, rows: list[int] | None, ctx: Context, chosen, ocr) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(pseudo-label, verdict) of each of ``rows`` (None: every row; ``chosen`` and ``ocr``
        their texts): the rules, the caption, OCR text and direct tags; human-reviewed look-alikes
        vote where there are enough."""
        tags_all, direct = self._col("tag_concepts", rows), self._col("tag_direct", rows)
        idx = list(range(self.n)) if rows is None else rows
        out = []
        for k, i in enumerate(idx):
            tags = None
            if tags_all and tags_all[k]:
                d = direct[k] if direct else None
                tags = [t for j, t in enumerate(tags_all[k]) if not d or (j < len(d) and d[j])][:8]
            v = _vrow(self.vals, i)
            pseudo = pseudo_label(v, ctx.active, caption=chosen[k][0], lang=chosen[k][1], ocr_text=(ocr[k] if ocr else "") or "", tags=tags)
            out.append((pseudo, verify(v, ctx.active, ctx.scales, reward_p=v.get("rev_reward"))))
        if ctx.labelled and self.emb is not None:
            out = _neighbour_verdicts(self, idx, ctx, out)
        return out

    def _judged(self, rows: list[int] | None, ctx: Context) -> tuple[_Hardness, list, list, list | None]:
        """(the criteria, opinions, chosen captions, OCR texts) of ``rows`` (None: every row)."""
        chosen, ocr = self._texts(rows)
        ops = self._opinions_of(rows, ctx, chosen, ocr)
        idx = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        return _criteria(self, idx, ctx, ops, chosen, ocr), ops, chosen, ocr

    def _strata(self, rows: np.ndarray, ctx: Context) -> tuple[list[str], np.ndarray]:
        """(main concept, quality bin) of ``rows``."""
        tags = [c for c in ("tag_concepts", "tag_scores", "tag_direct") if c in self.table.column_names]
        concepts = primary_concepts(self.table.select(tags).take(pa.array(rows, pa.int64()))) if tags else ["untagged"] * len(rows)
        if ctx.quality is None:
            return concepts, np.full(len(rows), -1)
        q = self.vals[ctx.quality[0]][rows]
        bins = np.where(np.isnan(q), -1, np.searchsorted(ctx.quality[1], q, side="right"))
        return concepts, bins

    def score(self, ctx: Context) -> dict[str, Any]:
        """Every row's criteria and hardness; of the rows that may be queued, the hardest
        ``cfg.n`` of each stratum (what the serving order can reach) and each stratum's count."""
        hard = self._judged(None, ctx)[0]
        h = hard.hardness(self.n)
        cfg = ctx.cfg
        if ctx.only is not None:
            ok = self._among(ctx.only)
        else:
            ok = self._is_null("error")
            if not cfg.include_reviewed:
                ok &= ~self._among(ctx.reviewed) & self._is_null("rev_decision")
        cand = np.nonzero((h >= cfg.min_hardness) & ok)[0]
        concepts, bins = self._strata(cand, ctx)
        groups: dict[tuple[str, int], list[int]] = {}
        for j, key in enumerate(zip(concepts, bins.tolist())):
            groups.setdefault(key, []).append(j)
        strata = {}
        for key, js in groups.items():
            r = cand[js]
            top = np.lexsort((r, -h[r]))[: cfg.n]
            strata[key] = (h[r][top], r[top] + self.offset)
        return {"criteria": hard.counts(), "strata": strata, "counts": {k: len(v) for k, v in groups.items()}}

    def _ocr_scores(self, rows: np.ndarray, chosen: list[tuple[str, str]], ocr: list[str | None]) -> np.ndarray:
        overlap = self.vals.get("prof_cap_ocr_overlap")
        ov = np.array(
            [
                _overlap(chosen[k][0], o) if overlap is None or np.isnan(overlap[i]) else overlap[i]
                for k, (i, o) in enumerate(zip(rows, ocr))
            ]
        )
        has = np.array([len((o or "").strip()) >= 3 for o in ocr], bool)
        return np.where(has & (ov < 0.5), 1.0 - ov, 0.0) if len(rows) else np.zeros(0)

    def id_column(self) -> pa.Array:
        return self.id_array

    def which(self, ids: pa.Array) -> list[str]:
        """Those of ``ids`` held here."""
        return [i for i, hit in zip(self.ids, self._among(ids)) if hit]

    def vectors_of(self, ids: pa.Array) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(ids, global positions, vectors, has-a-vector) of the rows here whose id is one of ``ids``."""
        local = np.nonzero(self._among(ids))[0]
        return [self.ids[i] for i in local], local + self.offset, self.emb[0][local], self.emb[1][local]

    def vectors_at(self, positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global positions, vectors, has-a-vector) of ``positions`` held here (None: all rows)."""
        local = np.arange(self.n) if positions is None else np.asarray(positions, np.int64) - self.offset
        local = local[(local >= 0) & (local < self.n)]
        return local + self.offset, self.emb[0][local], self.emb[1][local]

    def nearest(self, queries: np.ndarray, k: int, own: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's ``k`` nearest rows here, skipping the query's own row (``own``: global
        positions): (similarities, global positions, has-a-vector), -1 where fewer."""
        q = len(queries)
        if q == 0 or k <= 0 or self.n == 0:
            return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64), np.zeros((q, 0), bool)
        s, ix = knn(queries, self.emb[0], min(k + 1, self.n))
        ix = np.where(ix >= 0, ix + self.offset, -1)
        self_hit = ix == np.asarray(own, np.int64)[:, None]
        s = np.where(self_hit, -np.inf, s)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s, ix = np.take_along_axis(s, order, axis=1), np.take_along_axis(ix, order, axis=1)
        ix = np.where(np.isfinite(s), ix, -1)
        has = np.where(ix >= 0, self.emb[1][np.clip(ix - self.offset, 0, self.n - 1)], False)
        return s, ix, has

    def _shown_pos(self, i: int) -> int:
        return int(self.pos[i]) if self.pos is not None else i + self.offset

    def details_at(self, positions: np.ndarray, ctx: Context) -> dict[int, dict[str, Any]]:
        """What a queued row's payload shows, for ``positions`` held here: its id and position,
        caption, other captions, OCR text, signals, pseudo-label and verdict, the reasons it is
        hard and its hardness, concept and quality bin (the same as :meth:`score` computed)."""
        local = [int(p) - self.offset for p in positions if 0 <= int(p) - self.offset < self.n]
        hard, ops, chosen, ocr = self._judged(local, ctx)
        h = hard.hardness(len(local))
        concepts, bins = self._strata(np.asarray(local, np.int64), ctx)
        caps = self._col("captions", local)
        return {
            i + self.offset: {
                "id": self.ids[i],
                "pos": self._shown_pos(i),
                "caption": chosen[k],
                "other_captions": [
                    c["text"] for c in ((caps[k] if caps else None) or []) if c and c.get("text") and c["text"] != chosen[k][0]
                ][:6],
                "ocr_text": (ocr[k] if ocr else None) or None,
                "signals": {c: round(v, 4) for c, v in _vrow(self.vals, i).items() if c in DISPLAY_SIGNALS},
                "pseudo": ops[k][0],
                "verdict": ops[k][1],
                "why": hard.why(k),
                "hardness": float(h[k]),
                "concept": concepts[k],
                "quality_bin": int(bins[k]),
            }
            for k, i in enumerate(local)
        }

    def captions_at(self, positions: np.ndarray) -> dict[int, tuple[str, int, str]]:
        """(id, shown position, caption) of ``positions`` held here."""
        local = [int(p) - self.offset for p in positions if 0 <= int(p) - self.offset < self.n]
        return {i + self.offset: (self.ids[i], self._shown_pos(i), c[0]) for i, c in zip(local, self._texts(local)[0])}


def _neighbour_verdicts(block: MineBlock, rows: list[int], ctx: Context, ops, k: int = 10, min_sim: float = 0.5):
    """Replace the verifier's consensus verdict by a vote of human-reviewed look-alikes where there are enough."""
    lab_ids, lab_emb, lab_dec = ctx.labelled
    s, ix = knn(block.emb[0][rows], lab_emb, min(k, len(lab_ids)))
    out = []
    for r, (i, (p, v)) in enumerate(zip(rows, ops)):
        if v["method"] == "reward_head":
            out.append((p, v))
            continue
        votes = [lab_dec[j] for sv, j in zip(s[r], ix[r]) if sv >= min_sim and lab_ids[j] != block.ids[i]]
        out.append((p, verify(_vrow(block.vals, i), ctx.active, ctx.scales, neighbour_votes=votes) if len(votes) >= 3 else v))
    return out


def _merge_nearest(parts: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """The blocks' nearest rows per query merged into the ``k`` nearest overall."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    rest = [np.concatenate([p[j] for p in parts], axis=1) for j in range(1, len(parts[0]))]
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(s, order, axis=1), *(np.take_along_axis(r, order, axis=1) for r in rest))


def _nearest_of_all(blocks: Blocks, queries: np.ndarray, k: int, own: np.ndarray, keep: int) -> tuple[np.ndarray, ...]:
    """Each query's ``keep`` nearest rows over every block (:meth:`MineBlock.nearest`), merged as
    the blocks answer, in block order: the driver holds one running answer, not one a block (the
    same as merging them all at once; ties go to the earlier block either way)."""
    acc: list = []

    def merge(part: tuple[np.ndarray, ...]) -> None:
        acc[:] = [_merge_nearest([acc[0], part] if acc else [part], keep)]

    blocks.map("nearest", queries, k, own, into=merge)
    return acc[0]


class _Strata:
    """The rows that can still be served, by stratum, merged block by block: each stratum's
    hardest rows down to the depth round-robin serving can reach (the first depth at which every
    stratum's rows down to it make ``n`` items; later blocks only push rows deeper), and each
    stratum's count. So the driver holds about ``n`` + strata entries, not one a candidate."""

    def __init__(self, n: int):
        self.n = n
        self.rows: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # (hardness, position) by (-h, position)
        self.counts: dict[tuple[str, int], int] = {}

    def add(self, part: dict[str, Any]) -> None:
        for key, (h, pos) in part["strata"].items():
            if key in self.rows:
                h, pos = np.concatenate([self.rows[key][0], h]), np.concatenate([self.rows[key][1], pos])
            order = np.lexsort((pos, -h))
            self.rows[key] = (h[order], pos[order])
            self.counts[key] = self.counts.get(key, 0) + part["counts"][key]
        keep = self._depth() + 1
        self.rows = {k: (h[:keep], p[:keep]) for k, (h, p) in self.rows.items()}

    def _depth(self) -> int:
        c = np.array(list(self.counts.values()) or [0])
        lo, hi = 0, max(int(c.max()) - 1, 0)
        while lo < hi:  # the least depth d whose rows down to it make n items
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if np.minimum(c, mid + 1).sum() >= self.n else (mid + 1, hi)
        return lo

    def order(self) -> list[int]:
        """The positions in serving order (:func:`balanced_order` over what is kept)."""
        if not self.rows:
            return []
        keys = list(self.rows)
        h = np.concatenate([self.rows[k][0] for k in keys])
        pos = np.concatenate([self.rows[k][1] for k in keys])
        which = np.repeat(np.arange(len(keys)), [len(self.rows[k][0]) for k in keys])
        o = np.lexsort((pos, -h))
        return [int(pos[o][j]) for j in balanced_order(which[o].tolist(), h[o], self.n)]


def mine_blocks(
    blocks: Blocks,
    rules: list[Rule],
    config: MineConfig | None = None,
    *,
    columns: list[str],
    flagged: list[str] | None = None,
    reviewed: dict[str, str] | None = None,
    random_derived: dict[str, dict[str, str]] | None = None,
    only: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`mine` with the rows in ``blocks`` (:class:`MineBlock`, in row order; ``columns``:
    the names of the columns mined, for the random-weights check). The driver merges the blocks'
    summaries (:class:`Stats`), their strata's hardest rows (:class:`_Strata`) and the queued
    rows' details: what it holds does not grow with the rows. ``only``: the ids that may be
    queued (gold rows), whatever their hardness, errors or reviews allow."""
    from engines.vector.retrieval import refuse_random_weights

    cfg = config or MineConfig()
    reviewed = reviewed or {}
    used = {c: s for c, s in (random_derived or {}).items() if c in columns}
    refuse_random_weights(used, consumer="review mining", allow=cfg.allow_random_weights)
    stats = _fold(blocks, "stats") or Stats(0, {}, {})  # no block at all: a dataset of no fragment
    summary: dict[str, Any] = {"rows": stats.rows, "criteria": {}, "signals_used": [], "skipped_criteria": {}}
    if used:
        summary["random_derived"] = {c: f"{s['group']}: {s['why']}" for c, s in used.items()}
    if stats.rows == 0:
        return [], summary
    summary["signals_used"] = sorted(stats.signals)
    emb_col = next((c for c in blocks.map("embedding_column") if c), None)
    ctx = _context(stats, blocks, rules, cfg, emb_col, columns, flagged or [], reviewed, only)
    summary["skipped_criteria"] = _skipped(ctx, emb_col, flagged or [])
    strata = _Strata(cfg.n)

    def add(part: dict[str, Any]) -> None:
        for name, c in part["criteria"].items():
            summary["criteria"][name] = summary["criteria"].get(name, 0) + c
        strata.add(part)

    blocks.map("score", ctx, into=add)
    order = strata.order()
    details: dict[int, dict[str, Any]] = {}
    for part in blocks.map("details_at", np.array(order, np.int64), ctx):
        details.update(part)
    look = _look_alikes(blocks, cfg, order, emb_col, stats.rows)
    items = []
    for rank, i in enumerate(order):
        d = details[i]
        items.append(
            {
                "row_id": d["id"],
                "priority": float(len(order) - rank),
                "payload": _payload(d, neighbours=look.get(i, []), random_derived=summary.get("random_derived")),
                "needed": 2 if _needs_two(d["id"], cfg.double_share, cfg.seed) else 1,
            }
        )
    summary.update(
        {
            "candidates": int(sum(strata.counts.values())),
            "queued": len(items),
            "quality_signal": ctx.quality[0] if ctx.quality else None,
            "embedding": emb_col,
            "strata": len(strata.counts),
        }
    )
    return items, summary


def _fold(blocks: Blocks, method: str, *args) -> Any:
    """The blocks' answers merged in block order (``answer.merge``); None without a block."""
    acc: list = []

    def merge(part: Any) -> None:
        acc[:] = [acc[0].merge(part) if acc else part]

    blocks.map(method, *args, into=merge)
    return acc[0] if acc else None


def _scale(q: Quantiles) -> float:
    """Interquartile range (std or 1.0 when degenerate): the unit in which "near a threshold" is
    measured, so one band works for every signal's scale."""
    if q.count < 2:
        return 1.0
    q1, q3 = q.quantile([0.25, 0.75])
    s = float(q3 - q1)
    if s <= 1e-12:
        s = q.std
    return s if s > 1e-12 else 1.0


def _context(
    stats: Stats,
    blocks: Blocks,
    rules: list[Rule],
    cfg: MineConfig,
    emb_col: str | None,
    columns: list[str],
    flagged: list[str],
    reviewed: dict[str, str],
    only: list[str] | None,
) -> Context:
    """The dataset-wide context of the blocks' scoring: rules and scales, ranks and quality
    edges from ``stats``; the reviewed rows' vectors (3 or more: neighbour votes), the flagged
    rows' and their nearest rows; each row's nearest similarity when no dup column says it."""
    active = [r for r in rules if stats.has(r.column)]
    ctx = Context(
        cfg=cfg,
        active=active,
        scales={r.column: _scale(stats.signals[r.column]) for r in active},
        good=[c for c in GOODNESS if stats.has(c)],
        ranks={c: stats.signals[c] for c in [*GOODNESS, "prof_clip_sim"] if stats.has(c)},
        ocr="prof_ocr_text" in columns,
        dup_col=next((c for c in DUP_SIM_COLUMNS if c in stats.dups and stats.dups[c].count), None),
        reviewed=pa.array(list(reviewed), pa.string()),
        only=None if only is None else pa.array(list(only), pa.string()),
    )
    qsig = next((c for c in ("rev_reward", "prof_quality", "prof_aesthetic") if c in stats.signals), None)
    if qsig:
        q = stats.signals[qsig]
        edges = q.quantile(np.linspace(0, 1, cfg.quality_bins + 1)[1:-1]) if q.count and cfg.quality_bins > 1 else np.zeros(0)
        ctx.quality = (qsig, edges)
    if emb_col is None:
        return ctx
    if reviewed:
        ids, _, v, has = _gather(blocks, "vectors_of", ctx.reviewed)
        if has.sum() >= 3:
            kept = [i for i, h in zip(ids, has) if h]
            ctx.labelled = (kept, v[has], [reviewed[r] for r in kept])
    if flagged and cfg.like_flagged_k:
        ids, p, v, has = _gather(blocks, "vectors_of", pa.array(list(dict.fromkeys(flagged)), pa.string()))
        by = {i: k for k, i in enumerate(ids) if has[k]}
        keep = [by[f] for f in flagged if f in by]  # in the order flagged
        ctx.flagged = (p[keep], v[keep], [ids[k] for k in keep])
        ctx.like = _like(blocks, ctx, stats.rows)
    if ctx.dup_col is None and 1 < stats.rows <= cfg.knn_max_rows:
        _, v, has = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", None)))
        s, ix = knn(v, v, 1, exclude_self=np.arange(len(v)))
        ids = pa.concat_arrays([a.cast(pa.string()) for a in blocks.map("id_column")])
        ctx.nn = (np.where(has, s[:, 0], np.nan), ids.take(pa.array(ix[:, 0])))
    return ctx


def _gather(blocks: Blocks, method: str, *args) -> tuple:
    """The blocks' tuples of per-row answers joined in block order."""
    parts = blocks.map(method, *args)
    return tuple(
        [x for p in parts for x in p[j]] if isinstance(parts[0][j], list) else np.concatenate([p[j] for p in parts])
        for j in range(len(parts[0]))
    )


def _like(blocks: Blocks, ctx: Context, rows: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The rows among each flagged row's ``like_k`` nearest (ascending positions), with the
    highest similarity to a flagged row and that row's id (the first flagged wins a tie)."""
    fpos, fvec, fids = ctx.flagged
    best: dict[int, tuple[float, int]] = {}
    if len(fpos):
        s, ix, _ = _nearest_of_all(blocks, fvec, ctx.cfg.like_flagged_k, fpos, min(ctx.cfg.like_flagged_k, rows - 1))
        for q in range(len(fpos)):
            for sim, j in zip(s[q], ix[q]):
                if j >= 0 and max(float(sim), 0.0) > best.get(int(j), (0.0, -1))[0]:
                    best[int(j)] = (max(float(sim), 0.0), q)
    at = sorted(best)
    return np.array(at, np.int64), np.array([best[j][0] for j in at]), [fids[best[j][1]] for j in at]


def _skipped(ctx: Context, emb_col: str | None, flagged: list[str]) -> dict[str, str]:
    """The criteria the context switches off, and why (what :func:`_criteria` leaves out)."""
    out = {}
    if not ctx.active:
        out["near_threshold"] = "no rule's signal column is present"
    if len(ctx.good) < 2:
        out["signals_disagree"] = f"needs two of {GOODNESS}"
    if "prof_clip_sim" not in ctx.ranks:
        out["low_similarity"] = "prof_clip_sim absent"
    if not ctx.ocr:
        out["ocr_missing"] = "prof_ocr_text absent"
    if ctx.dup_col is None and ctx.nn is None:
        out["borderline_duplicate"] = "no dup_* column and no embeddings (or too many rows)"
    if ctx.flagged is None:
        out["like_flagged"] = "no flagged failures yet" if not flagged else "no embedding column"
    return out


class _Hardness:
    """Each criterion's score for some rows of a block; a row's reasons are written when asked
    (the queued rows only)."""

    def __init__(self) -> None:
        self.comps: dict[str, np.ndarray] = {}
        self.reasons: list[tuple[np.ndarray, Callable[[int], str]]] = []

    def add(self, name: str, score: np.ndarray, reason_of: Callable[[int], str]) -> None:
        score = np.nan_to_num(np.clip(score, 0, 1))
        self.comps[name] = score
        self.reasons.append((score, reason_of))

    def hardness(self, n: int) -> np.ndarray:
        return hardness(self.comps) if self.comps else np.zeros(n)

    def counts(self) -> dict[str, int]:
        return {name: int((s > 0).sum()) for name, s in self.comps.items()}

    def why(self, k: int) -> list[str]:
        return [reason_of(k) for score, reason_of in self.reasons if score[k] > 0]


def _criteria(block: MineBlock, rows: np.ndarray, ctx: Context, ops: list, chosen: list, ocr: list | None) -> _Hardness:
    """The criteria of ``rows`` of ``block`` (those :func:`_skipped` does not switch off), in
    the order their reasons are shown; a reason takes the row's index in ``rows``."""
    hard = _Hardness()
    vals = {c: v[rows] for c, v in block.vals.items()}
    _near_threshold(vals, ctx, hard)
    _signals_disagree(vals, ctx, hard)
    _low_similarity(vals, ctx, hard)
    if ctx.ocr:
        score = block._ocr_scores(rows, chosen, ocr) if ocr is not None else np.zeros(len(rows))
        hard.add("ocr_missing", score, lambda k: f"OCR text missing from caption: {((ocr[k] if ocr else '') or '')[:60]!r}")
    _borderline_duplicate(block, rows, ctx, hard)
    _like_flagged(rows + block.offset, ctx, hard)
    disagree = np.array([0.8 if v["verdict"] in ("keep", "drop") and v["verdict"] != p["decision"] else 0.0 for p, v in ops])
    hard.add(
        "verifier_disagrees",
        disagree.reshape(len(rows)),
        lambda k: f"AI verifier says {ops[k][1]['verdict']}, pseudo-label says {ops[k][0]['decision']}",
    )
    return hard


def _near_threshold(vals: dict[str, np.ndarray], ctx: Context, hard: _Hardness) -> None:
    """Closeness to a rule's threshold in IQR units; the closest rule names the reason."""
    if not ctx.active:
        return
    close = np.stack([np.exp(-np.square(signed_margin(r, vals[r.column], ctx.scales[r.column]) / ctx.cfg.band)) for r in ctx.active])
    close = np.nan_to_num(close)
    near = np.where(close.max(axis=0) > math.exp(-1), close.max(axis=0), 0.0)
    which = close.argmax(axis=0)

    def reason(k: int) -> str:
        r = ctx.active[which[k]]
        return f"near threshold: {r.column}={vals[r.column][k]:.3g} vs {r.op} {r.threshold:.3g}"

    hard.add("near_threshold", near, reason)


def _signals_disagree(vals: dict[str, np.ndarray], ctx: Context, hard: _Hardness) -> None:
    """Goodness signals that rank the row very differently (ranks, so scales do not matter)."""
    good = ctx.good
    if len(good) < 2:
        return
    ranks = np.stack([ctx.ranks[c].rank(vals[c]) for c in good])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with none of the signals: NaN, no disagreement
        spread = np.nanmax(ranks, axis=0) - np.nanmin(ranks, axis=0)
    hi, lo = np.nanargmax(np.nan_to_num(ranks, nan=-1), axis=0), np.nanargmin(np.nan_to_num(ranks, nan=2), axis=0)
    score = np.where(spread >= 0.6, (spread - 0.6) / 0.4 * 0.5 + 0.5, 0.0)
    hard.add(
        "signals_disagree",
        score,
        lambda k: f"signals disagree: {good[hi[k]]} ranks {ranks[hi[k], k]:.0%}, {good[lo[k]]} ranks {ranks[lo[k], k]:.0%}",
    )


def _low_similarity(vals: dict[str, np.ndarray], ctx: Context, hard: _Hardness) -> None:
    """Image-text similarity in the dataset's bottom tail."""
    if "prof_clip_sim" not in ctx.ranks:
        return
    sim, tail = vals["prof_clip_sim"], ctx.cfg.low_sim_quantile
    pr = ctx.ranks["prof_clip_sim"].rank(sim)
    with np.errstate(invalid="ignore"):
        score = np.where(pr <= tail, 1.0 - pr / tail * 0.5, 0.0)
    hard.add("low_similarity", np.nan_to_num(score), lambda k: f"low image-text similarity ({sim[k]:.3f}, bottom {tail:.0%})")


def _borderline_duplicate(block: MineBlock, rows: np.ndarray, ctx: Context, hard: _Hardness) -> None:
    """Nearest-neighbour similarity between "distinct" and "duplicate": from dedup's column, else
    from the embeddings when the dataset is small enough for exact k-NN (``Context.nn``)."""
    if ctx.dup_col is not None:
        nn_sim, nn_id = column_values(block.table, ctx.dup_col)[rows], None
    elif ctx.nn is not None:
        nn_sim, nn_id = ctx.nn[0][rows + block.offset], ctx.nn[1].take(pa.array(rows + block.offset, pa.int64()))
    else:
        return
    lo, hi = ctx.cfg.dup_band
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    with np.errstate(invalid="ignore"):
        score = np.where((nn_sim >= lo) & (nn_sim <= hi), 1.0 - 0.5 * np.abs(nn_sim - mid) / half, 0.0)
    hard.add(
        "borderline_duplicate",
        np.nan_to_num(score),
        lambda k: f"borderline duplicate (nearest similarity {nn_sim[k]:.3f}{'' if nn_id is None else ' to ' + nn_id[k].as_py()})",
    )


def _like_flagged(positions: np.ndarray, ctx: Context, hard: _Hardness) -> None:
    """Retrieval neighbours of rows reviewers flagged as failures ("find more like this")."""
    if ctx.flagged is None:
        return
    at, sim, src = ctx.like
    j = np.clip(np.searchsorted(at, positions), 0, max(len(at) - 1, 0))
    hit = (at[j] == positions) if len(at) else np.zeros(len(positions), bool)
    score = np.where(hit, sim[j] if len(at) else 0.0, 0.0)
    hard.add("like_flagged", score, lambda k: f"looks like flagged failure {src[j[k]]} (similarity {score[k]:.2f})")


def _look_alikes(blocks: Blocks, cfg: MineConfig, order: list[int], emb_col: str | None, rows: int) -> dict[int, list[Neighbour]]:
    """The nearest rows shown next to each queued item (retrieval around the item)."""
    if emb_col is None or not cfg.neighbours or not order:
        return {}
    q = np.array(order, np.int64)
    p, v, _ = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", q)))
    where = {int(x): k for k, x in enumerate(p)}
    v = v[[where[int(x)] for x in q]]  # the blocks answer block by block: back in serving order
    s, ix, has = _nearest_of_all(blocks, v, cfg.neighbours, q, min(cfg.neighbours, rows - 1))
    shown = np.unique(ix[(ix >= 0) & has])
    caps: dict[int, tuple[str, int, str]] = {}
    for part in blocks.map("captions_at", shown):
        caps.update(part)
    return {
        i: [
            Neighbour(row_id=caps[j][0], pos=caps[j][1], sim=round(float(sv), 4), caption=caps[j][2][:300])
            for sv, j, hv in zip(s[a], ix[a], has[a])
            if j >= 0 and hv
        ]
        for a, i in enumerate(order)
    }


def _payload(detail: dict[str, Any], *, neighbours: list[Neighbour], random_derived: dict[str, str] | None = None) -> dict[str, Any]:
    """A queued row's stored review payload. No ``version``: the job that queues the items stamps it."""
    caption, lang = detail["caption"]
    return ReviewPayload(
        row_id=detail["id"],
        pos=detail["pos"],
        caption=caption,
        lang=lang,
        other_captions=detail["other_captions"],
        signals=detail["signals"],
        ocr_text=detail["ocr_text"],
        hard_reasons=detail["why"],
        hardness=round(detail["hardness"], 4),
        pseudo=detail["pseudo"],
        verifier=detail["verdict"],
        neighbours=neighbours,
        concept=detail["concept"],
        quality_bin=detail["quality_bin"],
        random_derived=random_derived or {},
    ).model_dump(exclude={"version"})


def _overlap(caption: str, ocr: str | None) -> float:
    """``prof_cap_ocr_overlap`` computed here when the column is absent; 1.0 when the OCR text
    has no word (nothing the caption could miss)."""
    ov = ocr_overlap(caption=caption, ocr_text=ocr or "")
    return 1.0 if ov is None else ov
