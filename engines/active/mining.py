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
from pydantic import BaseModel, ConfigDict, Field

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

__all__ = ["MineConfig", "mine", "knn", "balanced_order", "quality_bins", "primary_concepts", "hardness"]


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
    """
    from engines.vector.retrieval import refuse_random_weights

    cfg = config or MineConfig()
    reviewed = reviewed or {}
    used = {c: s for c, s in (random_derived or {}).items() if c in table.column_names}
    refuse_random_weights(used, consumer="review mining", allow=cfg.allow_random_weights)
    summary: dict[str, Any] = {"rows": table.num_rows, "criteria": {}, "signals_used": [], "skipped_criteria": {}}
    if used:
        summary["random_derived"] = {c: f"{s['group']}: {s['why']}" for c, s in used.items()}
    if table.num_rows == 0:
        return [], summary
    rows = _read_rows(table, rules, reward)
    summary["signals_used"] = sorted(rows.vals)
    hard = _Hardness(rows.n, summary)
    _near_threshold(rows, cfg, hard)
    _signals_disagree(rows, hard)
    _low_similarity(rows, cfg, hard)
    _ocr_missing(rows, hard)
    _borderline_duplicate(rows, cfg, hard)
    _like_flagged(rows, cfg, list(flagged or []), hard)
    pseudo, verdict = _machine_opinions(rows, reviewed)
    _verifier_disagrees(pseudo, verdict, hard)

    h = hardness(hard.comps)
    concepts = primary_concepts(table)
    cand = _candidates(rows, cfg, h, reviewed)
    order, qbin, qsig, n_strata = _balanced(rows, cfg, h, cand, concepts)
    look = _look_alikes(rows, cfg, order)
    items = []
    for rank, i in enumerate(order):
        payload = _payload(
            rows,
            i,
            why=hard.why[i],
            h=float(h[i]),
            pseudo=pseudo[i],
            verdict=verdict[i],
            neighbours=look.get(i, []),
            concept=concepts[i],
            quality_bin=int(qbin[i]),
            random_derived=summary.get("random_derived"),
        )
        items.append(
            {
                "row_id": rows.ids[i],
                "priority": float(len(order) - rank),
                "payload": payload,
                "needed": 2 if _needs_two(rows.ids[i], cfg.double_share, cfg.seed) else 1,
            }
        )
    summary.update(
        {"candidates": int(len(cand)), "queued": len(items), "quality_signal": qsig, "embedding": rows.emb_col, "strata": n_strata}
    )
    return items, summary


@dataclass
class _Rows:
    """What the criteria read about the rows, read from the table once."""

    table: pa.Table
    ids: list[str]
    vals: dict[str, np.ndarray]  # signal columns (and the reward head's P(keep)) as float64, NaN where missing
    vrows: list[dict[str, float]]  # per row: its non-missing signals
    active: list[Rule]  # rules whose signal column has values
    scales: dict[str, float]  # robust scale (IQR) of each active rule's signal
    caps: list[Any]
    rev_caps: list[Any]
    chosen: list[tuple[str, str]]  # (caption, lang) shown for editing
    ocr: list[str | None] | None
    emb_col: str | None
    emb: tuple[np.ndarray, np.ndarray] | None  # (L2-normalised vectors, has-a-vector mask)

    @property
    def n(self) -> int:
        return len(self.ids)


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def _read_rows(table: pa.Table, rules: list[Rule], reward: np.ndarray | None) -> _Rows:
    """Signals, captions, OCR text and embeddings of the rows; absent columns stay absent."""
    n = table.num_rows
    vals = {c: v for c in set(DISPLAY_SIGNALS + [r.column for r in rules] + GOODNESS) if (v := column_values(table, c)) is not None}
    if reward is not None:
        vals["rev_reward"] = reward.astype(np.float64)
    active = [r for r in rules if r.column in vals and not np.isnan(vals[r.column]).all()]
    caps = _column(table, "captions") or [None] * n
    rev_caps = _column(table, "rev_caption") or [None] * n
    emb_col = next((c for c in EMBEDDING_COLUMNS if c in table.column_names), None)
    return _Rows(
        table=table,
        ids=table.column("id").to_pylist(),
        vals=vals,
        vrows=[{c: float(v[i]) for c, v in vals.items() if not np.isnan(v[i])} for i in range(n)],
        active=active,
        scales={r.column: robust_scale(vals[r.column]) for r in active},
        caps=caps,
        rev_caps=rev_caps,
        chosen=[choose_caption(c, r) for c, r in zip(caps, rev_caps)],
        ocr=_column(table, "prof_ocr_text"),
        emb_col=emb_col,
        emb=embedding_matrix(table, emb_col) if emb_col else None,
    )


class _Hardness:
    """Each criterion's score per row and each row's reasons; the summary counts the hits."""

    def __init__(self, n: int, summary: dict[str, Any]):
        self.comps: dict[str, np.ndarray] = {}
        self.why: list[list[str]] = [[] for _ in range(n)]
        self.summary = summary

    def add(self, name: str, score: np.ndarray, reason_of: Callable[[int], str]) -> None:
        score = np.nan_to_num(np.clip(score, 0, 1))
        self.comps[name] = score
        hits = np.nonzero(score > 0)[0]
        self.summary["criteria"][name] = int(len(hits))
        for i in hits:
            self.why[i].append(reason_of(int(i)))

    def skip(self, name: str, reason: str) -> None:
        self.summary["skipped_criteria"][name] = reason


def _near_threshold(rows: _Rows, cfg: MineConfig, hard: _Hardness) -> None:
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


def _signals_disagree(rows: _Rows, hard: _Hardness) -> None:
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


def _low_similarity(rows: _Rows, cfg: MineConfig, hard: _Hardness) -> None:
    """Image-text similarity in the dataset's bottom tail."""
    sim = rows.vals.get("prof_clip_sim")
    if sim is None or np.isnan(sim).all():
        return hard.skip("low_similarity", "prof_clip_sim absent")
    pr = _pct_rank(sim)
    score = np.where(pr <= cfg.low_sim_quantile, 1.0 - pr / cfg.low_sim_quantile * 0.5, 0.0)
    hard.add(
        "low_similarity", np.nan_to_num(score), lambda i: f"low image-text similarity ({sim[i]:.3f}, bottom {cfg.low_sim_quantile:.0%})"
    )


def _ocr_missing(rows: _Rows, hard: _Hardness) -> None:
    """Text in the image that the chosen caption does not mention."""
    ocr = rows.ocr
    if ocr is None:
        return hard.skip("ocr_missing", "prof_ocr_text absent")
    overlap = rows.vals.get("prof_cap_ocr_overlap")
    ov = np.array([_overlap(rows.chosen[i][0], o) if overlap is None or np.isnan(overlap[i]) else overlap[i] for i, o in enumerate(ocr)])
    has = np.array([len((o or "").strip()) >= 3 for o in ocr])
    score = np.where(has & (ov < 0.5), 1.0 - ov, 0.0)
    hard.add("ocr_missing", score, lambda i: f"OCR text missing from caption: {(ocr[i] or '')[:60]!r}")


def _borderline_duplicate(rows: _Rows, cfg: MineConfig, hard: _Hardness) -> None:
    """Nearest-neighbour similarity between "distinct" and "duplicate": from a dup_* column, else
    from the embeddings when the table is small enough for exact k-NN."""
    n, emb = rows.n, rows.emb
    nn_sim, nn_idx = None, None
    dup = next((v for c in DUP_SIM_COLUMNS if (v := column_values(rows.table, c)) is not None and not np.isnan(v).all()), None)
    if dup is not None:  # dedup's similarity to the kept row of the group (NaN outside groups)
        nn_sim = dup
    elif emb is not None and n <= cfg.knn_max_rows and n > 1:
        s, ix = knn(emb[0], emb[0], 1, exclude_self=np.arange(n))
        nn_sim, nn_idx = np.where(emb[1], s[:, 0], np.nan), ix[:, 0]
    if nn_sim is None:
        return hard.skip("borderline_duplicate", "no dup_* column and no embeddings (or too many rows)")
    lo, hi = cfg.dup_band
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    score = np.where((nn_sim >= lo) & (nn_sim <= hi), 1.0 - 0.5 * np.abs(nn_sim - mid) / half, 0.0)
    hard.add(
        "borderline_duplicate",
        np.nan_to_num(score),
        lambda i: f"borderline duplicate (nearest similarity {nn_sim[i]:.3f}{'' if nn_idx is None else ' to ' + rows.ids[nn_idx[i]]})",
    )


def _like_flagged(rows: _Rows, cfg: MineConfig, flagged: list[str], hard: _Hardness) -> None:
    """Retrieval neighbours of rows reviewers flagged as failures ("find more like this")."""
    emb, ids = rows.emb, rows.ids
    if not (emb is not None and flagged and cfg.like_flagged_k):
        return hard.skip("like_flagged", "no flagged failures yet" if not flagged else "no embedding column")
    pos_of = {r: i for i, r in enumerate(ids)}
    fi = np.array([pos_of[f] for f in flagged if f in pos_of and emb[1][pos_of[f]]], np.int64)
    score = np.zeros(rows.n)
    src = np.full(rows.n, -1)
    if len(fi):
        s, ix = knn(emb[0][fi], emb[0], cfg.like_flagged_k, exclude_self=fi)
        for q in range(len(fi)):
            for sim, j in zip(s[q], ix[q]):
                if j >= 0 and sim > score[j]:
                    score[j], src[j] = max(float(sim), 0.0), fi[q]
    hard.add("like_flagged", score, lambda i: f"looks like flagged failure {ids[src[i]]} (similarity {score[i]:.2f})")


def _machine_opinions(rows: _Rows, reviewed: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row's pseudo-label and verifier verdict (cheap): shown to the reviewer, and their
    disagreement is itself a hard case. Human-reviewed look-alikes vote where there are enough."""
    tags_all, tag_direct = _column(rows.table, "tag_concepts"), _column(rows.table, "tag_direct")
    pseudo, verdict = [], []
    for i in range(rows.n):
        tags = None
        if tags_all and tags_all[i]:
            d = tag_direct[i] if tag_direct else None
            tags = [t for j, t in enumerate(tags_all[i]) if not d or (j < len(d) and d[j])][:8]
        pseudo.append(
            pseudo_label(
                rows.vrows[i],
                rows.active,
                caption=rows.chosen[i][0],
                lang=rows.chosen[i][1],
                ocr_text=(rows.ocr[i] if rows.ocr else "") or "",
                tags=tags,
            )
        )
        verdict.append(verify(rows.vrows[i], rows.active, rows.scales, reward_p=rows.vrows[i].get("rev_reward")))
    if reviewed and rows.emb is not None:
        verdict = _neighbour_verdicts(rows.emb, rows.ids, reviewed, rows.vrows, rows.active, rows.scales, verdict)
    return pseudo, verdict


def _verifier_disagrees(pseudo: list[dict[str, Any]], verdict: list[dict[str, Any]], hard: _Hardness) -> None:
    dis = (
        np.array([1.0 if v["verdict"] in ("keep", "drop") and v["verdict"] != p["decision"] else 0.0 for p, v in zip(pseudo, verdict)])
        * 0.8
    )
    hard.add("verifier_disagrees", dis, lambda i: f"AI verifier says {verdict[i]['verdict']}, pseudo-label says {pseudo[i]['decision']}")


def _candidates(rows: _Rows, cfg: MineConfig, h: np.ndarray, reviewed: dict[str, str]) -> np.ndarray:
    """Indices of rows hard enough to queue: no ingest error, and not reviewed already (unless asked)."""
    table = rows.table
    eligible = h >= cfg.min_hardness
    if "error" in table.column_names:
        eligible &= np.asarray(table.column("error").is_null().to_numpy(zero_copy_only=False), bool)
    if not cfg.include_reviewed:
        eligible &= np.array([r not in reviewed for r in rows.ids])
        if "rev_decision" in table.column_names:
            eligible &= np.asarray(table.column("rev_decision").is_null().to_numpy(zero_copy_only=False), bool)
    return np.nonzero(eligible)[0]


def _balanced(
    rows: _Rows, cfg: MineConfig, h: np.ndarray, cand: np.ndarray, concepts: list[str]
) -> tuple[list[int], np.ndarray, str | None, int]:
    """(serving order, quality bin per row, quality signal used, number of strata): strata are
    (concept, quality bin), so a common concept cannot fill the batch."""
    qsig = next((c for c in ("rev_reward", "prof_quality", "prof_aesthetic") if c in rows.vals), None)
    qbin = quality_bins(rows.vals[qsig], cfg.quality_bins) if qsig else np.full(rows.n, -1)
    strata = [(concepts[i], int(qbin[i])) for i in cand]
    order = [int(cand[j]) for j in balanced_order(strata, h[cand], cfg.n)]
    return order, qbin, qsig, len(set(strata))


def _look_alikes(rows: _Rows, cfg: MineConfig, order: list[int]) -> dict[int, list[Neighbour]]:
    """The nearest rows shown next to each queued item (retrieval around the item)."""
    emb = rows.emb
    if emb is None or not cfg.neighbours or not order:
        return {}
    q = np.array(order, np.int64)
    s, ix = knn(emb[0][q], emb[0], cfg.neighbours, exclude_self=q)
    return {
        i: [
            Neighbour(
                row_id=rows.ids[j],
                pos=int(_pos(rows.table, j)),
                sim=round(float(sv), 4),
                caption=choose_caption(rows.caps[j], rows.rev_caps[j])[0][:300],
            )
            for sv, j in zip(s[a], ix[a])
            if j >= 0 and emb[1][j]
        ]
        for a, i in enumerate(order)
    }


def _payload(
    rows: _Rows,
    i: int,
    *,
    why: list[str],
    h: float,
    pseudo: dict[str, Any],
    verdict: dict[str, Any],
    neighbours: list[Neighbour],
    concept: str,
    quality_bin: int,
    random_derived: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Row ``i``'s stored review payload. No ``version``: the job that queues the items stamps it."""
    caption, lang = rows.chosen[i]
    return ReviewPayload(
        row_id=rows.ids[i],
        pos=int(_pos(rows.table, i)),
        caption=caption,
        lang=lang,
        other_captions=[c["text"] for c in (rows.caps[i] or []) if c and c.get("text") and c["text"] != caption][:6],
        signals={c: round(v, 4) for c, v in rows.vrows[i].items() if c in DISPLAY_SIGNALS},
        ocr_text=(rows.ocr[i] if rows.ocr else None) or None,
        hard_reasons=why,
        hardness=round(h, 4),
        pseudo=pseudo,
        verifier=verdict,
        neighbours=neighbours,
        concept=concept,
        quality_bin=quality_bin,
        random_derived=random_derived or {},
    ).model_dump(exclude={"version"})


def _pos(table: pa.Table, i: int) -> int:
    return int(table.column("_pos")[i].as_py()) if "_pos" in table.column_names else i


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


def _neighbour_verdicts(emb, ids, reviewed, vrows, rules, scales, verdict, k: int = 10, min_sim: float = 0.5):
    """Replace the verifier's consensus verdict by a vote of human-reviewed look-alikes where there are enough."""
    lab = np.array([i for i, r in enumerate(ids) if r in reviewed and emb[1][i]], np.int64)
    if len(lab) < 3:
        return verdict
    s, ix = knn(emb[0], emb[0][lab], min(k, len(lab)))
    out = []
    for i, v in enumerate(verdict):
        if v["method"] == "reward_head":
            out.append(v)
            continue
        votes = [reviewed[ids[lab[j]]] for sv, j in zip(s[i], ix[i]) if sv >= min_sim and ids[lab[j]] != ids[i]]
        out.append(verify(vrows[i], rules, scales, neighbour_votes=votes) if len(votes) >= 3 else v)
    return out


def _overlap(caption: str, ocr: str | None) -> float:
    """``prof_cap_ocr_overlap`` computed here when the column is absent; 1.0 when the OCR text
    has no word (nothing the caption could miss)."""
    ov = ocr_overlap(caption=caption, ocr_text=ocr or "")
    return 1.0 if ov is None else ov
