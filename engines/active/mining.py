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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curation.blocks import Blocks, LocalBlocks
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
    robust_scale,
    signed_margin,
)
from engines.profiling.captions import ocr_overlap

__all__ = [
    "MineConfig",
    "mine",
    "mine_blocks",
    "MineBlock",
    "Numbers",
    "Context",
    "signal_columns",
    "knn",
    "balanced_order",
    "quality_bins",
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
    return best_s, best_i


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


def quality_bins(q: np.ndarray | None, n_bins: int) -> np.ndarray:
    """Quantile bin of a quality signal (-1 where missing)."""
    if q is None:
        return np.full(0, -1)
    out = np.full(len(q), -1, np.int64)
    ok = ~np.isnan(q)
    if ok.sum() == 0 or n_bins == 1:
        out[ok] = 0
        return out
    edges = np.quantile(q[ok], np.linspace(0, 1, n_bins + 1)[1:-1])
    out[ok] = np.searchsorted(edges, q[ok], side="right")
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

    ``table``: light columns of the dataset plus ``_pos`` (row offset in the version mined);
    ``flagged``: row ids reviewers flagged as failures; ``reviewed``: row id -> human decision
    (excluded from mining, used for neighbour votes); ``reward``: the reward head's P(keep) per row;
    ``random_derived``: ``{column: {"group", "why"}}`` for columns of ``table`` made by random
    weights (``engines.vector.retrieval.random_weight_sources``): refused (``RandomWeightsError``)
    unless ``config.allow_random_weights``, then recorded in the summary and each payload.
    Each item's ``payload`` is a ``ReviewPayload`` dumped to a JSON-able dict.
    In memory: :func:`mine_blocks` over one block of the whole table.
    """
    return mine_blocks(
        Numbers.of(table, rules, reward),
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
class Numbers:
    """What the driver reads about every row: ids, numeric signals and the masks that decide who
    may be queued. Whole-dataset statistics (rule scales, percentile ranks, quality bins) need
    them; the text and vector columns stay with the blocks (:class:`MineBlock`)."""

    ids: pa.Array  # one Arrow string array: ~20 bytes a row, where a list of str was ~75 (``id``, ``positions``)
    vals: dict[str, np.ndarray]  # signal columns (and the reward head's P(keep)) as float64, NaN where missing
    active: list[Rule]  # rules whose signal column has values
    scales: dict[str, float]  # robust scale (IQR) of each active rule's signal
    ok: np.ndarray  # no ingest error: may be queued
    undecided: np.ndarray  # no review decision in the dataset
    pos: np.ndarray  # row offset in the version mined
    dup: np.ndarray | None  # dedup's similarity to the kept row (NaN outside groups)

    @property
    def n(self) -> int:
        return len(self.ids)

    def id(self, i: int) -> str:
        return self.ids[int(i)].as_py()

    def positions(self, ids) -> np.ndarray:
        """Row positions of ``ids`` (-1 where absent), without a dict of every row's id."""
        return (
            pc.index_in(pa.array(list(ids), self.ids.type), value_set=self.ids)
            .fill_null(-1)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        )

    def among(self, ids) -> np.ndarray:
        """Whether each row's id is one of ``ids`` (a bool a row)."""
        return np.asarray(pc.is_in(self.ids, value_set=pa.array(list(ids), self.ids.type)).to_numpy(zero_copy_only=False), bool)

    @classmethod
    def of(cls, table: pa.Table, rules: list[Rule], reward: np.ndarray | None = None) -> Numbers:
        """From ``table``: ``id``, the signal columns, ``error`` and ``rev_decision`` (their nulls,
        or boolean ``error_null`` / ``rev_decision_null``), ``_pos``, a ``dup_*`` similarity."""
        n = table.num_rows
        vals = _values(table, rules, reward)
        active = [r for r in rules if r.column in vals and not np.isnan(vals[r.column]).all()]

        def is_null(col: str) -> np.ndarray:
            if f"{col}_null" in table.column_names:
                return np.asarray(table.column(f"{col}_null").to_numpy(zero_copy_only=False), bool)
            if col in table.column_names:
                return np.asarray(table.column(col).is_null().to_numpy(zero_copy_only=False), bool)
            return np.ones(n, bool)

        dup = next((v for c in DUP_SIM_COLUMNS if (v := column_values(table, c)) is not None and not np.isnan(v).all()), None)
        pos = np.asarray(table.column("_pos").to_numpy(zero_copy_only=False), np.int64) if "_pos" in table.column_names else np.arange(n)
        return cls(
            ids=table.column("id").combine_chunks(),
            vals=vals,
            active=active,
            scales={r.column: robust_scale(vals[r.column]) for r in active},
            ok=is_null("error"),
            undecided=is_null("rev_decision"),
            pos=pos,
            dup=dup,
        )


@dataclass
class Context:
    """What every block needs for its rows' opinions: the rules in use and their scales, the
    reviewed look-alikes' vectors and decisions (neighbour votes), the flagged rows' vectors."""

    active: list[Rule]
    scales: dict[str, float]
    labelled: tuple[list[str], np.ndarray, list[str]] | None = None  # (ids, vectors, decisions), 3 or more
    flagged: tuple[np.ndarray, np.ndarray] | None = None  # (global positions, vectors)
    like_k: int = 0


class MineBlock:
    """Some rows of the mining (the job: one Lance fragment, kept by a worker) with the columns of
    text and vectors; its row ``i`` is row ``offset + i`` of the mining. Row-local work happens
    here (pseudo-labels, verdicts, OCR checks, concepts), and nearest-neighbour searches against
    its rows; the driver merges what the blocks return (:func:`mine_blocks`)."""

    def __init__(self, table: pa.Table, offset: int, rules: list[Rule], reward: np.ndarray | None = None):
        self.table, self.offset, self.n = table, offset, table.num_rows
        self.vals = _values(table, rules, None if reward is None else reward[offset : offset + table.num_rows])
        self.emb_col = next((c for c in EMBEDDING_COLUMNS if c in table.column_names), None)
        self.emb = embedding_matrix(table, self.emb_col) if self.emb_col else None
        self.ids = table.column("id").to_pylist()

    def rows(self) -> int:
        return self.n

    def embedding_column(self) -> str | None:
        return self.emb_col

    def _col(self, name: str, rows: list[int] | None) -> list[Any] | None:
        """Column ``name`` of ``rows`` (None: every row) as Python values; None when absent."""
        if name not in self.table.column_names:
            return None
        col = self.table.column(name)
        return (col if rows is None else col.take(pa.array(rows, pa.int64()))).to_pylist()

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

    def opinions(self, ctx: Context) -> dict[str, Any]:
        """Every row's row-local criteria: ``ocr`` (text in the image the caption misses; None
        without an OCR column), ``disagree`` (verifier vs pseudo-label), its main ``concepts``,
        and ``like``: each flagged row's nearest rows here (global positions)."""
        chosen, ocr = self._texts(None)
        ops = self._opinions_of(None, ctx, chosen, ocr)
        out: dict[str, Any] = {
            "ocr": self._ocr_scores(chosen, ocr),
            "disagree": np.array([0.8 if v["verdict"] in ("keep", "drop") and v["verdict"] != p["decision"] else 0.0 for p, v in ops]),
            "concepts": _encoded(primary_concepts(self.table)),
            "n": self.n,
            "like": None,
        }
        if ctx.flagged is not None and self.emb is not None:
            out["like"] = self.nearest(ctx.flagged[1], ctx.like_k, ctx.flagged[0])[:2]
        return out

    def _ocr_scores(self, chosen: list[tuple[str, str]], ocr: list[str | None] | None) -> np.ndarray | None:
        if ocr is None:
            return None
        overlap = self.vals.get("prof_cap_ocr_overlap")
        ov = np.array([_overlap(chosen[i][0], o) if overlap is None or np.isnan(overlap[i]) else overlap[i] for i, o in enumerate(ocr)])
        has = np.array([len((o or "").strip()) >= 3 for o in ocr], bool)
        return np.where(has & (ov < 0.5), 1.0 - ov, 0.0) if self.n else np.zeros(0)

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

    def details_at(self, positions: np.ndarray, ctx: Context) -> dict[int, dict[str, Any]]:
        """What a queued row's payload shows, for ``positions`` held here: its caption, the other
        captions, OCR text, pseudo-label and verdict, and its vector (neighbour votes, look-alikes)."""
        local = [int(p) - self.offset for p in positions if 0 <= int(p) - self.offset < self.n]
        chosen, ocr = self._texts(local)
        ops, caps = self._opinions_of(local, ctx, chosen, ocr), self._col("captions", local)
        return {
            i + self.offset: {
                "caption": chosen[k],
                "other_captions": [
                    c["text"] for c in ((caps[k] if caps else None) or []) if c and c.get("text") and c["text"] != chosen[k][0]
                ][:6],
                "ocr_text": (ocr[k] if ocr else None) or None,
                "pseudo": ops[k][0],
                "verdict": ops[k][1],
            }
            for k, i in enumerate(local)
        }

    def captions_at(self, positions: np.ndarray) -> dict[int, str]:
        local = [int(p) - self.offset for p in positions if 0 <= int(p) - self.offset < self.n]
        return {i + self.offset: c[0] for i, c in zip(local, self._texts(local)[0])}


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


def _encoded(values: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct values, code per row): a block's concepts travel as codes, not a string a row."""
    names: dict[str, int] = {}
    codes = np.array([names.setdefault(v, len(names)) for v in values], np.int32)
    return list(names), codes


class _Concepts:
    """Every row's main concept as a code into one list of names (the blocks' codes merged)."""

    def __init__(self, parts: list[tuple[list[str], np.ndarray]]):
        names: dict[str, int] = {}
        codes = []
        for local, c in parts:
            lut = np.array([names.setdefault(x, len(names)) for x in local], np.int32)
            codes.append(lut[c] if len(c) else np.zeros(0, np.int32))
        self.names, self.codes = list(names), (np.concatenate(codes) if codes else np.zeros(0, np.int32))

    def __getitem__(self, i: int) -> str:
        return self.names[self.codes[i]]


def _merge_nearest(parts: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """The blocks' nearest rows per query merged into the ``k`` nearest overall."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    rest = [np.concatenate([p[j] for p in parts], axis=1) for j in range(1, len(parts[0]))]
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(s, order, axis=1), *(np.take_along_axis(r, order, axis=1) for r in rest))


def mine_blocks(
    numbers: Numbers,
    blocks: Blocks,
    rules: list[Rule],
    config: MineConfig | None = None,
    *,
    columns: list[str],
    flagged: list[str] | None = None,
    reviewed: dict[str, str] | None = None,
    random_derived: dict[str, dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`mine` with the rows in ``blocks`` (:class:`MineBlock`, in row order) and their
    numbers on the driver (``columns``: the names of the columns mined, for the random-weights
    check). The driver holds numbers per row; the blocks answer for text and vectors."""
    from engines.vector.retrieval import refuse_random_weights

    cfg = config or MineConfig()
    reviewed = reviewed or {}
    used = {c: s for c, s in (random_derived or {}).items() if c in columns}
    refuse_random_weights(used, consumer="review mining", allow=cfg.allow_random_weights)
    summary: dict[str, Any] = {"rows": numbers.n, "criteria": {}, "signals_used": [], "skipped_criteria": {}}
    if used:
        summary["random_derived"] = {c: f"{s['group']}: {s['why']}" for c, s in used.items()}
    if numbers.n == 0:
        return [], summary
    summary["signals_used"] = sorted(numbers.vals)
    emb_col = next((c for c in blocks.map("embedding_column") if c), None)
    hard = _Hardness(numbers.n, summary)
    _near_threshold(numbers, cfg, hard)
    _signals_disagree(numbers, hard)
    _low_similarity(numbers, cfg, hard)
    ctx = _context(numbers, blocks, cfg, emb_col, flagged or [], reviewed)
    ops = blocks.map("opinions", ctx)
    details: dict[int, dict[str, Any]] = {}  # the queued rows' details, read once the queue is known
    _ocr_missing(ops, details, hard)
    _borderline_duplicate(numbers, blocks, cfg, emb_col, hard)
    _like_flagged(numbers, ops, ctx, cfg, flagged or [], emb_col, hard)
    _verifier_disagrees(ops, details, hard)

    h = hardness(hard.comps)
    concepts = _Concepts([o["concepts"] for o in ops])
    cand = _candidates(numbers, cfg, h, reviewed)
    order, qbin, qsig, n_strata = _balanced(numbers, cfg, h, cand, concepts)
    for part in blocks.map("details_at", np.array(order, np.int64), ctx):
        details.update(part)
    look = _look_alikes(numbers, blocks, cfg, order, emb_col)
    items = []
    for rank, i in enumerate(order):
        payload = _payload(
            numbers,
            i,
            details[i],
            why=hard.why(i),
            h=float(h[i]),
            neighbours=look.get(i, []),
            concept=concepts[i],
            quality_bin=int(qbin[i]),
            random_derived=summary.get("random_derived"),
        )
        items.append(
            {
                "row_id": numbers.id(i),
                "priority": float(len(order) - rank),
                "payload": payload,
                "needed": 2 if _needs_two(numbers.id(i), cfg.double_share, cfg.seed) else 1,
            }
        )
    summary.update({"candidates": int(len(cand)), "queued": len(items), "quality_signal": qsig, "embedding": emb_col, "strata": n_strata})
    return items, summary


def _context(
    numbers: Numbers, blocks: Blocks, cfg: MineConfig, emb_col: str | None, flagged: list[str], reviewed: dict[str, str]
) -> Context:
    """The rules and scales, and the vectors of the reviewed rows (3 or more: neighbour votes) and
    of the flagged ones, gathered from their blocks."""
    ctx = Context(active=numbers.active, scales=numbers.scales, like_k=cfg.like_flagged_k)
    if emb_col is None:
        return ctx
    lab = np.sort(numbers.positions(reviewed))
    lab = lab[lab >= 0]
    if len(lab):
        p, v, has = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", lab)))
        if has.sum() >= 3:
            ids = [numbers.id(i) for i in p[has]]
            ctx.labelled = (ids, v[has], [reviewed[r] for r in ids])
    if flagged and cfg.like_flagged_k:
        want = numbers.positions(flagged)
        want = want[want >= 0]
        p, v, has = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", want)))
        by = {int(a): (b, c) for a, b, c in zip(p, v, has)}
        keep = [int(f) for f in want if by[int(f)][1]]  # in the order flagged
        ctx.flagged = (np.array(keep, np.int64), np.stack([by[f][0] for f in keep]) if keep else np.zeros((0, v.shape[1]), np.float32))
    return ctx


class _Hardness:
    """Each criterion's score per row; a row's reasons are written when asked (the queued rows
    only: a list of reasons for every row was most of mining's memory)."""

    def __init__(self, n: int, summary: dict[str, Any]):
        self.comps: dict[str, np.ndarray] = {}
        self.reasons: list[tuple[np.ndarray, Callable[[int], str]]] = []
        self.summary = summary

    def add(self, name: str, score: np.ndarray, reason_of: Callable[[int], str]) -> None:
        score = np.nan_to_num(np.clip(score, 0, 1))
        self.comps[name] = score
        self.summary["criteria"][name] = int((score > 0).sum())
        self.reasons.append((score, reason_of))

    def why(self, i: int) -> list[str]:
        return [reason_of(i) for score, reason_of in self.reasons if score[i] > 0]

    def skip(self, name: str, reason: str) -> None:
        self.summary["skipped_criteria"][name] = reason


def _near_threshold(rows: Numbers, cfg: MineConfig, hard: _Hardness) -> None:
    """Closeness to a rule's threshold in IQR units; the closest rule names the reason."""
    active, vals = rows.active, rows.vals
    if not active:
        return hard.skip("near_threshold", "no rule's signal column is present")
    close = np.stack([np.exp(-np.square(signed_margin(r, vals[r.column], rows.scales[r.column]) / cfg.band)) for r in active])
    close = np.nan_to_num(close)
    near = np.where(close.max(axis=0) > math.exp(-1), close.max(axis=0), 0.0)
    which = close.argmax(axis=0)

    def reason(i: int) -> str:
        r = active[which[i]]
        return f"near threshold: {r.column}={vals[r.column][i]:.3g} vs {r.op} {r.threshold:.3g}"

    hard.add("near_threshold", near, reason)


def _signals_disagree(rows: Numbers, hard: _Hardness) -> None:
    """Goodness signals that rank the row very differently (ranks, so scales do not matter)."""
    vals = rows.vals
    good = [c for c in GOODNESS if c in vals and not np.isnan(vals[c]).all()]
    if len(good) < 2:
        return hard.skip("signals_disagree", f"needs two of {GOODNESS}")
    ranks = np.stack([_pct_rank(vals[c]) for c in good])
    spread = np.nanmax(ranks, axis=0) - np.nanmin(ranks, axis=0)
    hi, lo = np.nanargmax(np.nan_to_num(ranks, nan=-1), axis=0), np.nanargmin(np.nan_to_num(ranks, nan=2), axis=0)
    score = np.where(spread >= 0.6, (spread - 0.6) / 0.4 * 0.5 + 0.5, 0.0)
    hard.add(
        "signals_disagree",
        score,
        lambda i: f"signals disagree: {good[hi[i]]} ranks {ranks[hi[i], i]:.0%}, {good[lo[i]]} ranks {ranks[lo[i], i]:.0%}",
    )


def _low_similarity(rows: Numbers, cfg: MineConfig, hard: _Hardness) -> None:
    """Image-text similarity in the dataset's bottom tail."""
    sim = rows.vals.get("prof_clip_sim")
    if sim is None or np.isnan(sim).all():
        return hard.skip("low_similarity", "prof_clip_sim absent")
    pr = _pct_rank(sim)
    score = np.where(pr <= cfg.low_sim_quantile, 1.0 - pr / cfg.low_sim_quantile * 0.5, 0.0)
    hard.add(
        "low_similarity", np.nan_to_num(score), lambda i: f"low image-text similarity ({sim[i]:.3f}, bottom {cfg.low_sim_quantile:.0%})"
    )


def _ocr_missing(ops: list[dict[str, Any]], details: dict[int, dict[str, Any]], hard: _Hardness) -> None:
    """Text in the image that the chosen caption does not mention (scored by the blocks)."""
    if all(o["ocr"] is None for o in ops):
        return hard.skip("ocr_missing", "prof_ocr_text absent")
    score = np.concatenate([o["ocr"] if o["ocr"] is not None else np.zeros(o["n"]) for o in ops])
    hard.add("ocr_missing", score, lambda i: f"OCR text missing from caption: {(details[i]['ocr_text'] or '')[:60]!r}")


def _borderline_duplicate(rows: Numbers, blocks: Blocks, cfg: MineConfig, emb_col: str | None, hard: _Hardness) -> None:
    """Nearest-neighbour similarity between "distinct" and "duplicate": from a dup_* column, else
    from the embeddings when the table is small enough for exact k-NN (the vectors of at most
    ``knn_max_rows`` rows are gathered for it)."""
    n = rows.n
    nn_sim, nn_idx = rows.dup, None
    if nn_sim is None and emb_col is not None and 1 < n <= cfg.knn_max_rows:
        _, v, has = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", None)))
        s, ix = knn(v, v, 1, exclude_self=np.arange(n))
        nn_sim, nn_idx = np.where(has, s[:, 0], np.nan), ix[:, 0]
    if nn_sim is None:
        return hard.skip("borderline_duplicate", "no dup_* column and no embeddings (or too many rows)")
    lo, hi = cfg.dup_band
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    score = np.where((nn_sim >= lo) & (nn_sim <= hi), 1.0 - 0.5 * np.abs(nn_sim - mid) / half, 0.0)
    hard.add(
        "borderline_duplicate",
        np.nan_to_num(score),
        lambda i: f"borderline duplicate (nearest similarity {nn_sim[i]:.3f}{'' if nn_idx is None else ' to ' + rows.id(nn_idx[i])})",
    )


def _like_flagged(rows: Numbers, ops, ctx: Context, cfg: MineConfig, flagged: list[str], emb_col: str | None, hard: _Hardness) -> None:
    """Retrieval neighbours of rows reviewers flagged as failures ("find more like this")."""
    if not (emb_col is not None and flagged and cfg.like_flagged_k):
        return hard.skip("like_flagged", "no flagged failures yet" if not flagged else "no embedding column")
    score = np.zeros(rows.n)
    src = np.full(rows.n, -1)
    fi = ctx.flagged[0]
    if len(fi):
        s, ix = _merge_nearest([o["like"] for o in ops if o["like"] is not None], min(cfg.like_flagged_k, rows.n - 1))
        for q in range(len(fi)):
            for sim, j in zip(s[q], ix[q]):
                if j >= 0 and sim > score[j]:
                    score[j], src[j] = max(float(sim), 0.0), fi[q]
    hard.add("like_flagged", score, lambda i: f"looks like flagged failure {rows.id(src[i])} (similarity {score[i]:.2f})")


def _verifier_disagrees(ops, details: dict[int, dict[str, Any]], hard: _Hardness) -> None:
    def reason(i: int) -> str:
        return f"AI verifier says {details[i]['verdict']['verdict']}, pseudo-label says {details[i]['pseudo']['decision']}"

    hard.add("verifier_disagrees", np.concatenate([o["disagree"] for o in ops]), reason)


def _candidates(rows: Numbers, cfg: MineConfig, h: np.ndarray, reviewed: dict[str, str]) -> np.ndarray:
    """Indices of rows hard enough to queue: no ingest error, and not reviewed already (unless asked)."""
    eligible = (h >= cfg.min_hardness) & rows.ok
    if not cfg.include_reviewed:
        eligible &= ~rows.among(reviewed) & rows.undecided
    return np.nonzero(eligible)[0]


def _balanced(
    rows: Numbers, cfg: MineConfig, h: np.ndarray, cand: np.ndarray, concepts: _Concepts
) -> tuple[list[int], np.ndarray, str | None, int]:
    """(serving order, quality bin per row, quality signal used, number of strata): strata are
    (concept, quality bin), so a common concept cannot fill the batch."""
    qsig = next((c for c in ("rev_reward", "prof_quality", "prof_aesthetic") if c in rows.vals), None)
    qbin = quality_bins(rows.vals[qsig], cfg.quality_bins) if qsig else np.full(rows.n, -1)
    strata = [(int(concepts.codes[i]), int(qbin[i])) for i in cand]
    order = [int(cand[j]) for j in balanced_order(strata, h[cand], cfg.n)]
    return order, qbin, qsig, len(set(strata))


def _look_alikes(rows: Numbers, blocks: Blocks, cfg: MineConfig, order: list[int], emb_col: str | None) -> dict[int, list[Neighbour]]:
    """The nearest rows shown next to each queued item (retrieval around the item)."""
    if emb_col is None or not cfg.neighbours or not order:
        return {}
    q = np.array(order, np.int64)
    p, v, _ = (np.concatenate(x) for x in zip(*blocks.map("vectors_at", q)))
    where = {int(x): k for k, x in enumerate(p)}
    v = v[[where[int(x)] for x in q]]  # the blocks answer block by block: back in serving order
    s, ix, has = _merge_nearest(blocks.map("nearest", v, cfg.neighbours, q), min(cfg.neighbours, rows.n - 1))
    shown = np.unique(ix[(ix >= 0) & has])
    caps: dict[int, str] = {}
    for part in blocks.map("captions_at", shown):
        caps.update(part)
    return {
        i: [
            Neighbour(row_id=rows.id(j), pos=int(rows.pos[j]), sim=round(float(sv), 4), caption=caps[j][:300])
            for sv, j, hv in zip(s[a], ix[a], has[a])
            if j >= 0 and hv
        ]
        for a, i in enumerate(order)
    }


def _payload(
    rows: Numbers,
    i: int,
    detail: dict[str, Any],
    *,
    why: list[str],
    h: float,
    neighbours: list[Neighbour],
    concept: str,
    quality_bin: int,
    random_derived: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Row ``i``'s stored review payload. No ``version``: the job that queues the items stamps it."""
    caption, lang = detail["caption"]
    return ReviewPayload(
        row_id=rows.id(i),
        pos=int(rows.pos[i]),
        caption=caption,
        lang=lang,
        other_captions=detail["other_captions"],
        signals={c: round(v, 4) for c, v in _vrow(rows.vals, i).items() if c in DISPLAY_SIGNALS},
        ocr_text=detail["ocr_text"],
        hard_reasons=why,
        hardness=round(h, 4),
        pseudo=detail["pseudo"],
        verifier=detail["verdict"],
        neighbours=neighbours,
        concept=concept,
        quality_bin=quality_bin,
        random_derived=random_derived or {},
    ).model_dump(exclude={"version"})


def _pct_rank(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] of each non-null value; NaN stays NaN."""
    out = np.full(len(x), np.nan)
    ok = ~np.isnan(x)
    k = int(ok.sum())
    if k == 0:
        return out
    order = np.argsort(x[ok], kind="stable")
    r = np.empty(k)
    r[order] = np.arange(k) / max(k - 1, 1)
    out[ok] = r
    return out


def _overlap(caption: str, ocr: str | None) -> float:
    """``prof_cap_ocr_overlap`` computed here when the column is absent; 1.0 when the OCR text
    has no word (nothing the caption could miss)."""
    ov = ocr_overlap(caption=caption, ocr_text=ocr or "")
    return 1.0 if ov is None else ov
