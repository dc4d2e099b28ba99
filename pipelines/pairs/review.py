"""``curate pairs review``: editing pairs into the human review queue, and their decisions back.

Why the same queue as the hard cases (``curate review mine``): one database, one web app, one
set of annotators, leases, undo and history, and one ``curate review apply`` that merges every
decision. A pair is one item whose ``row_id`` is ``pair:<pair_id>`` (``PAIR_PREFIX``): dataset
row ids never start with it, so a pair cannot collide with a row, and ``is_pair_row`` tells the
two apart wherever decisions are read.

The payload carries what the page shows (``kind: "pair"``, the instruction to edit as
``caption``, scores as ``signals``) and where the two images are: the pair table, its version
and the pair id (the bytes are read from there; a row without bytes falls back to the dataset
rows ``source_id`` / ``target_id``). ``apply_pair_reviews`` writes the decisions to each pair
table as one new Lance version: ``review`` (keep / drop / null), the edited instruction in
place, the original in ``instruction_en_orig`` / ``instruction_zh_orig``. ``curate pairs
export`` leaves out pairs reviewed ``drop``.
"""

from __future__ import annotations

import re
import time
from typing import Any, Optional

import pyarrow as pa
from pydantic import Field, field_validator

from curation.reviewdb import PAIR_PREFIX, is_pair_row, pair_id_of
from curation.stage import StageConfig
from curation.store import Store, is_remote, storage_options_from_env
from pipelines.pairs.common import PAIR_REVIEW_COLUMNS

__all__ = [
    "PAIR_PREFIX",
    "REVIEW_COLUMNS",
    "PairReviewConfig",
    "pair_row_id",
    "pair_id_of",
    "is_pair_row",
    "pair_priority",
    "pair_payload",
    "review_tables",
    "review_pairs",
    "apply_pair_reviews",
]

REVIEW_COLUMNS = PAIR_REVIEW_COLUMNS
"""Columns ``apply_pair_reviews`` adds to a pair table (after ``PAIRS_SCHEMA``'s)."""

# priorities on the hardness scale of hard cases (0..1), so pairs and rows share one queue fairly
_TIER = {"no_instruction": 0.9, "mined": 0.6, "generated": 0.3}
_LIGHT = ["pair_id", "source_id", "target_id", "kind", "instruction_en", "instruction_zh", "changed_fraction", "lang", "style"]
_LIGHT += ["width", "height", "box", "provenance"]


class PairReviewConfig(StageConfig):
    """What ``curate pairs review`` queues: which pair tables, which kinds, how many."""

    pairs: list[str] = Field(
        default_factory=list, description="pair tables (default: the dataset's pairs, synth and mined tables that exist)"
    )
    kinds: list[str] = Field(default_factory=list, description="only pairs of these kinds (default: all)")
    limit: Optional[int] = Field(None, ge=1, description="queue at most this many pairs, highest priority first")
    db: Optional[str] = Field(None, description="review database (SQLite path or postgresql:// URL); default next to the dataset")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(k.strip() for k in v if k.strip()))


def pair_row_id(pair_id: str) -> str:
    """The review queue's ``row_id`` of a pair."""
    return PAIR_PREFIX + pair_id


def _has_instruction(row: dict[str, Any]) -> bool:
    return bool((row.get("instruction_en") or "").strip() or (row.get("instruction_zh") or "").strip())


def pair_priority(row: dict[str, Any]) -> tuple[float, str]:
    """(priority, why) of a pair. Why this order: a pair without instruction is unusable for
    training until someone writes one (first); a mined pair has no ground truth, so whether it
    is an edit at all needs a human (next); a rendered or synthetic pair is exact by
    construction and only its template instruction is checked (last). Within a tier, the
    smaller the change, the earlier: a subtle edit is the one most likely not to match its
    instruction, or to be invisible."""
    tier = _tier_of(row)
    why = {
        "no_instruction": "pair without instruction: write one, or drop the pair",
        "mined": "mined pair (no ground truth): is it the edit the instruction says?",
        "generated": f"{row.get('kind')} pair: does the instruction describe the edit?",
    }[tier]
    cf = row.get("changed_fraction")
    cf = min(max(float(cf), 0.0), 1.0) if cf is not None and cf == cf else 0.0  # null or NaN: as no change
    return round(_TIER[tier] + 0.09 * (1.0 - cf), 6), why


def _tier_of(row: dict[str, Any]) -> str:
    """Which of ``_TIER`` a pair falls in (see ``pair_priority``)."""
    if not _has_instruction(row):
        return "no_instruction"
    return "mined" if row.get("kind") == "mined" else "generated"


def _edit_lang(row: dict[str, Any]) -> str:
    """The language of the instruction the annotator edits: English when there is one, else
    Chinese; a pair with neither is written in English (the page says so)."""
    if (row.get("instruction_en") or "").strip():
        return "en"
    return "zh" if (row.get("instruction_zh") or "").strip() else "en"


def pair_payload(row: dict[str, Any], table: str, version: int) -> dict[str, Any]:
    """The review item of one pair-table row (light columns): what the page shows and where its
    images are. ``caption`` is the instruction being edited, so the caption editor, its
    invisible-character checks and ``aggregate``'s "edited" test work unchanged."""
    lang = _edit_lang(row)
    priority, why = pair_priority(row)
    signals = {"changed_fraction": round(float(row["changed_fraction"]), 5)} if row.get("changed_fraction") is not None else {}
    sim = re.search(r"(?:^| )sim=([0-9.]+)", row.get("provenance") or "")
    if sim:
        signals["similarity"] = float(sim.group(1))
    return {
        "kind": "pair",
        "row_id": pair_row_id(row["pair_id"]),
        "caption": row.get(f"instruction_{lang}") or "",
        "lang": lang,
        "signals": signals,
        "hard_reasons": [why],
        "hardness": priority,
        "pair": {
            "pair_id": row["pair_id"],
            "table": table,
            "table_version": int(version),
            "kind": row.get("kind"),
            "source_id": row.get("source_id"),
            "target_id": row.get("target_id"),  # null when the target was made here (render, synth)
            "instruction_en": row.get("instruction_en"),
            "instruction_zh": row.get("instruction_zh"),
            "edit_lang": lang,
            "style": row.get("style"),
            "width": row.get("width"),
            "height": row.get("height"),
            "box": row.get("box"),
        },
    }


def _abs(uri: str) -> str:
    if is_remote(uri):
        return uri
    from pathlib import Path

    return str(Path(uri).expanduser().resolve())


def _open(uri: str, version: int | None = None):
    import lance

    return lance.dataset(uri, version=version, storage_options=storage_options_from_env(uri) or None)


def review_tables(store: Store, cfg: PairReviewConfig) -> list[str]:
    """The pair tables to queue from: ``cfg.pairs``, else the dataset's default tables that exist.
    ``ValueError`` (one line) when there is none or one is not a pair table."""
    from pipelines.pairs.common import check_pair_tables, open_out, table_path

    uris = [_abs(u) for u in cfg.pairs] or [u for n in ("pairs", "synth", "mined") if open_out(u := table_path(store, n)) is not None]
    if not uris:
        raise ValueError(
            f"no pair table next to {store.uri} (looked for pairs.lance, synth.lance and mined.lance under _curation/pairs); "
            "make one with `curate pairs render|synth|mine`, or name one with --pairs"
        )
    check_pair_tables(uris, "--pairs", "curate pairs render|synth|mine")
    return list(dict.fromkeys(uris))


def _candidates(uri: str, cfg: PairReviewConfig) -> tuple[list[dict[str, Any]], int, int]:
    """(items, already reviewed in the table, pairs of other kinds or with an unusable id) of one
    pair table; light columns only (never the image bytes)."""
    ds = _open(uri)
    cols = _LIGHT + (["review"] if "review" in ds.schema.names else [])
    rows = ds.to_table(columns=cols).to_pylist()
    items, reviewed, other = [], 0, 0
    for row in rows:
        if pair_id_of(pair_row_id(row["pair_id"] or "")) is None:  # not an id the page could address
            other += 1
            continue
        if cfg.kinds and row.get("kind") not in cfg.kinds:
            other += 1
            continue
        if row.get("review") is not None:
            reviewed += 1
            continue
        payload = pair_payload(row, uri, ds.version)
        items.append({"row_id": payload["row_id"], "priority": payload["hardness"], "payload": payload, "tier": _tier_of(row)})
    return items, reviewed, other


def _default_db_url(store: Store) -> str:
    """The dataset's review database, where ``curate review mine`` queues: the path of
    ``pipelines.review.default_db_url``, which cannot be imported here (``pipelines.review``
    imports this module to apply pair decisions); the tests check that both agree."""
    d = store.state_dir / "review"
    d.mkdir(parents=True, exist_ok=True)
    return str(d / "review.sqlite")


def _open_db(url: str):
    """The review database, or ``ValueError`` (one line) when it cannot be opened: a directory, an
    unwritable path, a PostgreSQL server that does not answer."""
    import sqlite3

    from curation.reviewdb import ReviewDB

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    try:
        import psycopg

        errors += (psycopg.Error,)
    except ImportError:
        pass
    try:
        return ReviewDB(url)
    except errors as e:
        raise ValueError(f"cannot open the review database {url}: {' '.join(str(e).split()) or type(e).__name__}") from None


def review_pairs(store: Store, cfg: PairReviewConfig) -> dict[str, Any]:
    """Queue the pairs of the pair tables for review, one item each, in the dataset's review
    database (``pipelines.review.default_db_url``) unless ``cfg.db``. Pairs already reviewed in
    the table are left out; re-running updates open items (``ReviewDB.enqueue`` upserts by
    ``row_id``) and never duplicates one. Returns the summary (counts, tables, database)."""
    t0 = time.perf_counter()
    tables = review_tables(store, cfg)
    items: list[dict[str, Any]] = []
    reviewed = other = 0
    for uri in tables:
        got, r, o = _candidates(uri, cfg)
        items += got
        reviewed, other = reviewed + r, other + o
    items.sort(key=lambda it: (-it["priority"], it["row_id"]))
    picked = items[: cfg.limit] if cfg.limit else items
    db = _open_db(cfg.db or _default_db_url(store))
    try:
        if db.get_meta("dataset") is None:
            db.set_meta("dataset", store.uri)
        batch = f"pairs-{time.strftime('%Y%m%dT%H%M%S')}"
        counts = db.enqueue(picked, batch, user="curate pairs review") if picked else {"added": 0, "updated": 0, "unchanged": 0}
        url = db.url
    finally:
        db.close()
    by_tier: dict[str, int] = {}
    for it in picked:
        by_tier[it["tier"]] = by_tier.get(it["tier"], 0) + 1
    return {
        "tables": tables,
        "db": url,
        "candidates": len(items),
        "queued": len(picked),
        "already_reviewed": reviewed,
        "other_kinds": other,
        "by_priority": by_tier,
        **counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# --- apply -----------------------------------------------------------------------------------------


def _lang_of(text: str) -> str:
    """``zh`` when the text has more CJK ideographs than Latin letters, else ``en``: where an
    instruction written for a pair that had none goes (an instruction may quote the other script's
    sign text, so one ideograph does not make it Chinese)."""
    cjk = len(re.findall(r"[\u3400-\u9fff\uf900-\ufaff]", text))
    return "zh" if cjk > len(re.findall(r"[A-Za-z]", text)) else "en"


def _decided(agg: dict[str, Any]) -> dict[str, Any] | None:
    """What one pair's aggregated decision writes: review (keep / drop; None when disputed) and
    the instructions after the edit. An edit replaces the instruction of the language it was made
    in and clears the other one (a translation of the old instruction would now disagree); the
    originals go to ``instruction_*_orig``."""
    p = agg["payload"].get("pair") or {}
    review = agg["decision"] if agg["decision"] in ("keep", "drop") else None
    en, zh = p.get("instruction_en"), p.get("instruction_zh")
    out = {"pair_id": p.get("pair_id"), "review": review, "instruction_en": en, "instruction_zh": zh}
    out |= {"instruction_en_orig": None, "instruction_zh_orig": None}
    edited = agg.get("caption")
    if edited is not None and edited.strip():
        lang = p.get("edit_lang") or "en"
        if not ((en or "").strip() or (zh or "").strip()):
            lang = _lang_of(edited)
        out |= {"instruction_en_orig": en, "instruction_zh_orig": zh, "instruction_en": None, "instruction_zh": None}
        out[f"instruction_{lang}"] = edited
    return out


def _write_table(uri: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One new version of a pair table with these pairs' review columns (added, null, the first
    time) and instructions; pairs whose stored values already match are not rewritten, so a
    repeated apply makes no version. Pairs no longer in the table are counted, not an error."""
    import pyarrow.compute as pc

    try:
        ds = _open(uri)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"pair decisions name the pair table {uri}, which cannot be opened ({type(e).__name__}); put it back"
        ) from None
    before = ds.version
    missing_cols = [c for c in REVIEW_COLUMNS if c not in ds.schema.names]
    have_cols = ["pair_id", "instruction_en", "instruction_zh", *[c for c in REVIEW_COLUMNS if c in ds.schema.names]]
    ids = [r["pair_id"] for r in rows]
    current = {
        r["pair_id"]: r for r in ds.to_table(columns=have_cols, filter=pc.field("pair_id").isin(pa.array(ids, pa.string()))).to_pylist()
    }
    fields = ["review", "instruction_en", "instruction_zh", "instruction_en_orig", "instruction_zh_orig"]
    change = [r for r in rows if r["pair_id"] in current and any(current[r["pair_id"]].get(f) != r[f] for f in fields)]
    report = {"table": uri, "version_before": before, "version_after": before, "pairs": len(rows)}
    report |= {"missing": sum(r["pair_id"] not in current for r in rows), "written": len(change)}
    if not change:
        return report
    if missing_cols:
        ds.add_columns({c: "CAST(NULL AS STRING)" for c in missing_cols})
        ds = _open(uri)
    upd = pa.Table.from_pylist(change, schema=pa.schema([("pair_id", pa.string()), *[(f, pa.string()) for f in fields]]))
    ds.merge_insert("pair_id").when_matched_update_all().execute(upd)
    report["version_after"] = _open(uri).version
    return report


def apply_pair_reviews(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the pair decisions among ``decisions`` (``ReviewDB.decisions()``) to their pair
    tables (see ``_decided`` and ``_write_table``). Idempotent: the values come from the
    decisions and the payloads (the instruction the annotator saw), never from the table, so
    applying twice writes the same. ``FileNotFoundError`` (one line) when a named table is gone.
    Returns ``{pairs, keep, drop, disputed, edited, tables: [...]}``."""
    from engines.active.loop import aggregate

    agg = aggregate([d for d in decisions if is_pair_row(d["row_id"])])
    by_table: dict[str, list[dict[str, Any]]] = {}
    report: dict[str, Any] = {"pairs": len(agg), "keep": 0, "drop": 0, "disputed": 0, "edited": 0, "tables": []}
    for a in agg.values():
        p = a["payload"].get("pair") or {}
        if not p.get("table") or not p.get("pair_id"):
            continue
        row = _decided(a)
        report[row["review"] or "disputed"] += 1
        report["edited"] += a.get("caption") is not None
        by_table.setdefault(p["table"], []).append(row)
    for uri, rows in sorted(by_table.items()):
        report["tables"].append(_write_table(uri, rows))
    return report
