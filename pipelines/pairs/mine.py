"""``curate pairs mine``: pairs of real images of one scene from the k-NN graph (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curation.runner import StageResult
from curation.store import Store
from pipelines.pairs.common import (
    PAIRS_SCHEMA,
    PairJobConfig,
    PairWorker,
    eligible_photos,
    existing_ids,
    open_out,
    resolve_out,
    run_job,
    table_path,
)

# --- mine: pairs of real images of one scene from the k-NN graph -------------------------------


class MineConfig(PairJobConfig):
    """What to mine (``curate pairs mine`` options). The band is calibrated for ``vec_desc``."""

    table: ClassVar[str] = "mined"

    column: str = Field("vec_desc", description="the embedding column whose `curate knn` graph gives the candidates")
    min_similarity: float = Field(0.9, ge=-1, le=1, description="less similar neighbours are unrelated photos")
    max_similarity: float = Field(0.9999, ge=-1, le=1.0001, description="this similar or more is a duplicate (exclusive)")
    max_per_image: int = Field(3, ge=1, description="an image takes part in at most this many pairs (as source or target)")
    max_per_group: int = Field(20, ge=1, description="a group (a community of neighbours in the band) yields at most this many pairs")
    groups: Literal["communities", "components"] = Field(
        "communities", description="groups for the cap: Leiden communities of the candidates, or their connected components"
    )
    unaligned: Literal["drop", "global"] = Field("drop", description="pairs no homography aligns: dropped, or kept as global changes")
    min_inliers: int = Field(20, ge=4, description="fewer RANSAC inliers: the pair cannot be aligned")
    diff_threshold: int = Field(32, ge=1, le=255, description="a pixel changed when a channel differs by more (after a 5x5 blur)")
    min_changed: float = Field(0.002, ge=0, lt=1, description="less changed area is a near duplicate: dropped (no_change)")
    global_fraction: float = Field(0.4, gt=0, le=1, description="this much changed area or more is a global change")
    instructor: str | None = Field(None, description="instruction plug-in `module:function` (a local captioning / VLM model)")
    instructor_model: str | None = Field(None, description="local model folder handed to the plug-in as `model=`")

    @field_validator("instructor_model")
    @classmethod
    def _model_folder(cls, v: str | None, info) -> str | None:
        if v is not None and not info.data.get("instructor"):
            raise ValueError("instructor_model is handed to an instruction plug-in: give --instructor too")
        if v is not None and "://" not in v and not Path(v).is_dir():
            raise ValueError(f"instructor_model {v!r} is not a folder (a local model saved with save_pretrained)")
        return v

    @field_validator("max_similarity")
    @classmethod
    def _band(cls, v: float, info) -> float:
        lo = info.data.get("min_similarity")
        if lo is not None and v <= lo:
            raise ValueError(f"max_similarity {v} must be larger than min_similarity {lo}")
        return v

    def params(self):
        from engines.pairs.mine import MineParams

        return MineParams(
            min_inliers=self.min_inliers, diff_threshold=self.diff_threshold,
            min_changed=self.min_changed, global_fraction=self.global_fraction,
        )  # fmt: skip


def default_mined_out(store: Store) -> str:
    return table_path(store, MineConfig.table)


def open_graph(store: Store, ds, column: str):
    """The ``curate knn`` graph of ``column``, refused (``ValueError``, one line with the fix) when
    there is none or it was built from other rows or values of the column than the dataset's now:
    mined pairs from a stale graph would miss new rows and name rows that changed."""
    from engines.vector.index import VectorError, column_fingerprint
    from pipelines.knn import open_knn

    fix = f"run `curate index build --dataset {store.uri} --column {column}` and `curate knn --dataset {store.uri} --column {column}`"
    summary = store.read_json(f"vector/knn-{column}.json")
    try:
        graph = open_knn(store, column) if summary else None
    except (ValueError, OSError, FileNotFoundError):
        graph = None
    if graph is None:
        raise ValueError(f"no k-NN graph of {column!r} for {store.uri} yet: {fix}")
    try:
        fp = column_fingerprint(ds, column)
    except VectorError as e:
        raise ValueError(f"{e}; make it first (`curate stage vec_visual` for vec_desc)") from None
    if summary.get("fingerprint") != fp:
        raise ValueError(
            f"the k-NN graph of {column!r} (dataset v{summary.get('dataset_version')}) is older than the dataset "
            f"(v{ds.version}: rows or {column!r} changed since): {fix}"
        )
    return graph


def _mine_pair_id(column: str, source_id: str, target_id: str) -> str:
    from engines.pairs.mine import MINE_VERSION

    return hashlib.sha1(f"{MINE_VERSION}:{column}:{source_id}:{target_id}".encode()).hexdigest()[:24]


def _candidates(graph, cfg: MineConfig) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The graph's edges in the band, each pair once (filtered in Lance: only those leave it)."""
    from engines.pairs.mine import canonical_pairs

    flt = f"similarity >= {float(cfg.min_similarity)!r} AND similarity < {float(cfg.max_similarity)!r}"
    t = graph.to_table(columns=["source_id", "neighbour_id", "similarity"], filter=flt)
    sim = t.column("similarity").to_numpy().astype(np.float64)
    return canonical_pairs(t.column("source_id").to_pylist(), t.column("neighbour_id").to_pylist(), sim)


def _dropped_key(store: Store, cfg: MineConfig, out_uri: str) -> str:
    """The pairs dropped before hold for this table and these scoring options only."""
    what = cfg.model_dump(mode="json", include={"column", "unaligned", "min_inliers", "diff_threshold", "min_changed", "max_side"})
    return hashlib.sha1(json.dumps({"out": out_uri, **what}, sort_keys=True).encode()).hexdigest()[:12]


def _load_dropped(store: Store, cfg: MineConfig, out_uri: str) -> dict[str, str]:
    got = store.read_json("pairs/mine-dropped.json") or {}
    return got.get("dropped", {}) if got.get("key") == _dropped_key(store, cfg, out_uri) else {}


def _save_dropped(store: Store, cfg: MineConfig, out_uri: str, new: list) -> None:
    dropped = _load_dropped(store, cfg, out_uri) | {pid: why for pid, why in new}
    (store.state_dir / "pairs").mkdir(parents=True, exist_ok=True)
    store.write_json("pairs/mine-dropped.json", {"key": _dropped_key(store, cfg, out_uri), "dropped": dropped})


def plan_mine(ds, graph, cfg: MineConfig, existing: set[str], dropped: dict[str, str]) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """(units of pairs to score, pairs already decided: in the table or dropped before, counts).
    Candidates: band, each pair once, rows with an image and no error, then the cap (by
    similarity: the likeliest shots of one scene first). The cap comes before scoring, so a pair
    dropped later is not replaced by another of its image or group."""
    from engines.pairs.mine import cap_pairs

    pairs, sim = _candidates(graph, cfg)
    ids, positions = eligible_photos(ds)
    pos = dict(zip(ids, positions, strict=True))
    ok = [i for i, (a, b) in enumerate(pairs) if a in pos and b in pos]
    pairs, sim = [pairs[i] for i in ok], sim[ok]
    keep = cap_pairs(pairs, sim, cfg.max_per_image, cfg.max_per_group, cfg.groups)
    info = {"candidates": len(pairs), "capped": len(pairs) - len(keep)}
    todo, decided = [], 0
    for i in keep:
        a, b = pairs[i]
        pid = _mine_pair_id(cfg.column, a, b)
        if pid in existing or pid in dropped:
            decided += 1
            continue
        todo.append({"pair_id": pid, "source_id": a, "target_id": b, "spos": pos[a], "tpos": pos[b], "sim": float(sim[i])})
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, decided, info


def pending_mine(store: Store, cfg: MineConfig) -> tuple[int, int, dict[str, Any]]:
    """(pairs to score, pairs already decided, counts): what ``mine_pairs`` would do, without Ray.
    Raises the one-line ``ValueError``s of ``open_graph``."""
    ds = store.open()
    out_uri = resolve_out(store, cfg)
    units, decided, info = plan_mine(
        ds, open_graph(store, ds, cfg.column), cfg, existing_ids(open_out(out_uri)), _load_dropped(store, cfg, out_uri)
    )
    return sum(len(json.loads(u["pairs"])) for u in units), decided, info


def mined_fields(text: str | None) -> dict[str, str]:
    """The ``key=value`` words of a mined pair's ``provenance`` or ``style`` (``target``, ``sim``,
    ``instruction_source``; ``align``, ``changed``, ``regions``, ``change``, ...)."""
    return dict(w.split("=", 1) for w in (text or "").split() if "=" in w)


def _first_caption(caps) -> str:
    return next((c["text"] for c in caps or [] if (c.get("text") or "").strip()), "")


class _MineWorker(PairWorker):
    """Aligns and scores candidate pairs (``engines.pairs.mine``); drops what is no edit."""

    config_cls = MineConfig

    def __init__(self, *args, **kw):
        from engines.pairs.mine import load_instructor

        super().__init__(*args, **kw)
        self.instructor = load_instructor(self.cfg.instructor, self.cfg.instructor_model) if self.cfg.instructor else None

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        counters: Counter = Counter()
        uniq = sorted({p[k] for p in pairs for k in ("spos", "tpos")})
        cols = ["id", "image", "image_uri"] + (["captions"] if "captions" in self.ds.schema.names else [])
        rows = dict(zip(uniq, self.ds.take(np.asarray(uniq, np.int64), columns=cols).to_pylist(), strict=True))
        photos = {pos: self._photo(r["image"], r["image_uri"]) for pos, r in rows.items()}
        out = []
        for p in pairs:
            if (rows[p["spos"]]["id"], rows[p["tpos"]]["id"]) != (p["source_id"], p["target_id"]):
                raise RuntimeError(f"rows {p['spos']}, {p['tpos']} are not the planned {p['source_id']}, {p['target_id']}")
            row, why = self._score(p, photos[p["spos"]], photos[p["tpos"]], rows[p["spos"]], rows[p["tpos"]])
            if row is None:
                counters[f"skipped_{why}"] += 1
                self.dropped.append([p["pair_id"], why])
                continue
            out.append(row)
            counters[f"change_{mined_fields(row['style'])['change']}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters

    def _score(self, p: dict, src, tgt, srow: dict, trow: dict) -> tuple[dict | None, str]:
        """One pair's row, or (None, why it is dropped)."""
        from engines.pairs.mine import DiffScore, align, caption_difference, diff_score, warp_to

        if isinstance(src, str) or isinstance(tgt, str):
            return None, "decode"
        al = align(src, tgt, self.cfg.params())
        if al is None and self.cfg.unaligned == "drop":
            return None, "unaligned"
        if al is None:
            import cv2

            warped = cv2.resize(tgt, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
            h, w = src.shape[:2]
            score = DiffScore(1.0, 0, (0, 0, w, h), 1.0, "global", np.ones((1, 1), bool))
        else:
            warped, valid = warp_to(tgt, al, src.shape)
            score = diff_score(src, warped, valid, self.cfg.params())
            if score.change == "none":
                return None, "no_change"
        caps = (_first_caption(srow.get("captions")), _first_caption(trow.get("captions")))
        return self._row(p, src, warped, al, score, caps, caption_difference(*caps)), ""

    def _row(self, p: dict, src, warped, al, score, caps: tuple[str, str], cap_diff: float | None) -> dict:
        from engines.pairs.render import encode_image

        en = zh = None
        source = "none"
        if self.instructor is not None:
            en, zh = self.instructor(src, warped, caps[0], caps[1], score)
            source = f"plugin:{self.cfg.instructor}" if (en or zh) else f"plugin-none:{self.cfg.instructor}"
        align_how = "none" if al is None else "identity" if al.identity else "homography"
        style = f"align={align_how} inliers={al.inliers if al else 0} overlap={score.overlap:.3f} changed={score.changed_fraction:.4f}"
        style += f" regions={score.regions} change={score.change}" + ("" if cap_diff is None else f" caption_diff={cap_diff:.3f}")
        if al is not None and not al.identity:
            style += " h=" + ",".join(f"{v:.6g}" for v in al.h.ravel()[:8])
        fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
        prov = f"{self.provenance} target={p['target_id']} sim={p['sim']:.5f} instruction_source={source}"
        return {
            "pair_id": p["pair_id"], "source_id": p["source_id"], "target_id": p["target_id"], "kind": "mined",
            "src_image": encode_image(src, fmt, q), "tgt_image": encode_image(warped, fmt, q),
            "instruction_en": en, "instruction_zh": zh, "src_text": caps[0], "tgt_text": caps[1],
            "box": list(score.box), "changed_fraction": score.changed_fraction, "lang": None, "style": style,
            "width": int(src.shape[1]), "height": int(src.shape[0]), "provenance": prov, "created_at": self.created_at,
        }  # fmt: skip


def mine_pairs(store: Store, cfg: MineConfig, *, show_progress: bool = True, concurrency: int | None = None) -> StageResult:
    """Mine candidate editing pairs from the ``curate knn`` graph of ``cfg.column`` into the mined
    pair table; one new version of it. ``ValueError`` (one line) with no graph, a stale one, or no
    candidate in the band. ``extra``: ``out``, pairs written, counts by change (local / global),
    ``candidates``, ``capped``, and pairs dropped by reason (``skipped_unaligned``, ...)."""
    from engines.vector.retrieval import check_random_weights

    t0 = time.perf_counter()
    check_random_weights(store, [cfg.column], consumer=f"pairs mine over {cfg.column!r}")
    out_uri = resolve_out(store, cfg)

    def plan(ds, existing):
        units, decided, info = plan_mine(ds, open_graph(store, ds, cfg.column), cfg, existing, _load_dropped(store, cfg, out_uri))
        if not units and not decided:
            raise ValueError(why_no_candidate(cfg, info))
        return units, decided, info, "no candidate pair"

    def tally(c: Counter) -> dict[str, Any]:
        return {
            "by_kind": {"mined": c.get("change_local", 0) + c.get("change_global", 0)},
            "by_change": {k: c.get(f"change_{k}", 0) for k in ("local", "global")},
        }

    from engines.pairs.mine import MINE_VERSION

    prov = f"{MINE_VERSION} column={cfg.column} band={cfg.min_similarity:g}-{cfg.max_similarity:g}"
    return run_job(
        store, cfg, "mine", plan, _MineWorker, {}, prov, tally, t0=t0, show_progress=show_progress, concurrency=concurrency,
        salt=_dropped_key(store, cfg, out_uri), on_dropped=lambda d: _save_dropped(store, cfg, out_uri, d),
    )  # fmt: skip


def why_no_candidate(cfg: MineConfig, info: dict[str, Any]) -> str:
    """The one-line error when the band holds no pair (``info`` from ``plan_mine``)."""
    if not info["candidates"]:
        return (
            f"no neighbour pair on the k-NN graph of {cfg.column!r} has a similarity in "
            f"[{cfg.min_similarity:g}, {cfg.max_similarity:g}): nothing to mine (widen the band, or add more shots per scene)"
        )
    return "no candidate pair left after the cap"
