"""``curate report``: one self-contained HTML page about a dataset's profile.

Per numeric signal (one collapsible section each, listed in the contents at the top): a
histogram, statistics, and thumbnails of the lowest, median and highest rows with their row id and
first caption; errors counted by reason (decode failures in ``prof_error``, ingest errors in ``error``); which
models made the embeddings, saying plainly when their weights are random; and which signals are
absent (no aesthetic head configured -> no aesthetic score, not a fake one).

This module computes the numbers, plots and thumbnails; the markup is
``curation/templates/profile_report.html`` on the shared report layout (``curation.reports``).
It also builds the duplicate-group thumbnail strips of the dedup report (``dedup_group_strips``).
Thumbnails are small JPEG ``data:`` URIs read by row position with Lance ``take``, only for the rows
shown, so the page is one file that opens from anywhere and the driver never holds an image column.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.reports import data_uri, png_data_uri, render
from curation.schema import COLUMN_GROUPS
from engines.profiling.embed import MODELS_RECORD

__all__ = ["build_report", "dedup_group_strips", "row_thumbs"]

_SKIP = {"prof_phash", "prof_dhash", "prof_orientation", "prof_bit_depth", "prof_channels", "prof_frames"}


THUMB_SIDE = 128  # px, the longest side of a report thumbnail
CAPTION_CHARS = 120  # a thumbnail's caption is cut here (the template shows less, the title all)


def _thumb(data: bytes | None) -> str | None:
    """A JPEG thumbnail ``data:`` URI of a row's image (longest side ``THUMB_SIDE``), decoded the way
    profiling decodes it (so a decompression bomb stays refused here too); None when it does not decode."""
    from engines.profiling.decode import Decoded, DecodeOptions, decode_image

    d = decode_image(data, DecodeOptions(max_side=2 * THUMB_SIDE))
    if not isinstance(d, Decoded):
        return None
    im = d.rgb.copy()
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def _caption(caps) -> str | None:
    """The first non-empty caption of a row, cut to ``CAPTION_CHARS``."""
    for c in caps or []:
        text = (c or {}).get("text") if isinstance(c, dict) else None
        if text and text.strip():
            text = " ".join(text.split())
            return text if len(text) <= CAPTION_CHARS else text[: CAPTION_CHARS - 1] + "\u2026"
    return None


def row_thumbs(ds, positions, *, captions: bool = False, batch: int = 32) -> dict[int, dict[str, Any]]:
    """Thumbnails (and first captions) of the rows at ``positions`` of ``ds``, read with Lance
    ``take`` ``batch`` rows at a time: the driver holds the images of one batch, never a column.
    Returns position -> {"thumb": data URI or None, "caption": str or None}."""
    pos = sorted({int(p) for p in positions})
    cols = ["image"] + (["captions"] if captions and "captions" in ds.schema.names else [])
    out: dict[int, dict[str, Any]] = {}
    for s in range(0, len(pos), batch):
        chunk = pos[s : s + batch]
        t = ds.take(chunk, columns=cols)
        images = t.column("image").to_pylist()
        caps = t.column("captions").to_pylist() if "captions" in cols else [None] * len(chunk)
        for p, img, cap in zip(chunk, images, caps):
            out[p] = {"thumb": _thumb(img), "caption": _caption(cap)}
    return out


def dedup_group_strips(ds, plan, *, groups: int = 30, per_group: int = 12) -> list[dict[str, Any]]:
    """The ``groups`` largest duplicate groups of a dedup plan (``pipelines.dedup._plan_table``: one
    row per row of ``ds``, by position) as thumbnail strips for ``dedup_report.html``: the kept row
    first, then the removed rows by similarity, at most ``per_group`` per group. Only the shown rows'
    images are read (``row_thumbs``)."""
    import numpy as np
    import pyarrow as pa

    if plan.num_rows == 0:
        return []
    grp = plan.column("dup_group").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    ids, counts = np.unique(grp[grp >= 0], return_counts=True)
    keep = counts >= 2
    ids, counts = ids[keep], counts[keep]
    top = np.lexsort((ids, -counts))[:groups]  # largest first, then the lower group number
    has_why = "keeper_why" in plan.column_names
    shown: list[tuple[int, int, np.ndarray]] = []
    in_top = np.flatnonzero(np.isin(grp, ids[top]))  # one pass over the plan, then only these rows
    for gi in top:
        members = in_top[grp[in_top] == ids[gi]]
        sub = plan.select(["dup_keep", "dup_sim"]).take(pa.array(members))
        kept = sub.column("dup_keep").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        sim = sub.column("dup_sim").fill_null(-1.0).to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((members, -sim, ~kept))  # kept first, then the most similar
        shown.append((int(ids[gi]), int(counts[gi]), members[order[:per_group]]))
    thumbs = row_thumbs(ds, np.concatenate([m for _, _, m in shown]) if shown else [])
    cols = ["id", "dup_keep", "dup_reason", "dup_sim"] + (["keeper_why"] if has_why else [])
    out = []
    for g, size, pos in shown:
        rows = plan.select(cols).take(pa.array(pos)).to_pylist()
        members = [
            {
                "id": r["id"],
                "thumb": thumbs[int(p)]["thumb"],
                "kept": bool(r["dup_keep"]),
                "reason": r["dup_reason"],
                "sim": r["dup_sim"],
                "why": r.get("keeper_why"),
            }
            for p, r in zip(pos, rows)
        ]
        kept_id = next((m["id"] for m in members if m["kept"]), None)
        out.append({"group": g, "size": size, "kept_id": kept_id, "members": members, "more": size - len(members)})
    return out


def build_report(store, out: str | Path, *, examples: int = 5, bins: int = 30) -> Path:
    """Write the HTML report of ``store``'s latest version to ``out``; returns the path.

    Per signal: statistics, a histogram and thumbnails (with row id and first caption) of the
    ``examples`` lowest, median and highest rows. The page links nothing outside itself: thumbnails
    and plots are ``data:`` URIs, the contents link ``#anchors``. A negative ``examples`` is
    refused: as a slice bound it would embed nearly every row's thumbnail."""
    import pyarrow as pa

    if examples < 0:
        raise ValueError(f"examples must be >= 0 (got {examples})")

    ds = store.open()
    schema = ds.schema
    numeric = [
        f.name
        for f in schema
        if f.name.startswith("prof_") and f.name not in _SKIP and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]
    light = ["id", "error"] + [c for c in ("prof_error", "prof_ocr_lang", "prof_cap_lang", "prof_format") if c in schema.names]
    t = ds.to_table(columns=light + numeric)  # scan order: row i is position i for ``take``
    model_notes, notes = _notes(store, schema.names)
    errors, ok, value_counts = _errors_and_counts(t)
    ids = t.column("id").to_pylist()
    signals = [_signal(t, c, examples, bins) for c in numeric]
    wanted = [p for s in signals for k in ("lowest", "median", "highest") for p in s.get(k, [])]
    thumbs = row_thumbs(ds, wanted, captions=True)
    for s in signals:
        for k in ("lowest", "median", "highest"):
            if k in s:
                s[k] = [{"id": ids[p], "value": v, **thumbs[p]} for p, v in zip(s[k], s.pop(k + "_values"))]
    page = render(
        "profile_report.html",
        uri=store.uri,
        version=ds.version,
        rows=t.num_rows,
        decoded=ok,
        models=model_notes,
        notes=notes,
        errors=errors,
        value_counts=value_counts,
        signals=signals,
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _notes(store, names: list[str]) -> tuple[list[dict], list[str]]:
    """The models behind the embedding columns (random weights flagged) and the signals that are
    absent, with why: a reader must not mistake a missing column for a clean one."""
    models_p = store.state_dir / MODELS_RECORD
    models = json.loads(models_p.read_text()) if models_p.exists() else {}
    model_notes = []
    for group, m in sorted(models.items()):
        cols = COLUMN_GROUPS[group].schema.names if group in COLUMN_GROUPS else []
        if not any(c in names for c in cols):
            continue  # recorded by a run whose columns are not in this version
        model_notes.append({"group": group, "model": m["model"], "dim": m.get("dim"), "random_weights": bool(m.get("random_weights"))})
    notes = []
    if "prof_clip_image" not in names:
        notes.append("No image embeddings: prof_clip was not run (no CLIP model configured).")
    if "prof_aesthetic" not in names:
        notes.append(
            "No aesthetic score: no aesthetic head weights were configured (aesthetic.weights), "
            "so the column is absent rather than filled with a made-up value."
        )
    if "prof_watermark_score" in names and "prof_ocr_boxes" not in names:
        cue = (
            "the pixel overlay cue (AUC 0.7-0.8 on marked vs clean photos, near chance against scene text)"
            if "prof_watermark_overlay" in names
            else "the old stroke heuristic (AUC ~0.65, barely better than chance)"
        )
        notes.append(
            f"prof_watermark_score comes from {cue} only: prof_ocr was not run. Run prof_ocr, then "
            "prof_scores, for the OCR-box score (AUC ~0.97 on watermarked vs clean photos, docs/profiling.md)."
        )
    if "prof_error" not in names:
        notes.append("The metadata stage (prof_meta) has not run: decode errors are unknown.")
    return model_notes, notes


def _errors_and_counts(t) -> tuple[list[dict], int | None, list[dict]]:
    """Errors by reason per error column, the rows that decoded, and value counts of the categories."""
    import pyarrow.compute as pc

    errors = []
    for col in ("error", "prof_error"):
        if col not in t.column_names:
            continue
        counts: dict[str, int] = {}
        for e in t.column(col).drop_null().to_pylist():
            counts[e.split(":", 1)[0]] = counts.get(e.split(":", 1)[0], 0) + 1
        errors += [{"column": col, "reason": k, "rows": v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    ok = t.column("prof_error").null_count if "prof_error" in t.column_names else None  # null error = decoded
    value_counts = [
        {"column": c, "counts": [(x["values"], x["counts"]) for x in pc.value_counts(t.column(c)).to_pylist()]}
        for c in ("prof_format", "prof_ocr_lang", "prof_cap_lang")
        if c in t.column_names
    ]
    return errors, ok, value_counts


def _signal(t, c: str, examples: int, bins: int) -> dict[str, Any]:
    """One signal's section: statistics (numbers; the template formats them), a histogram, and the
    positions and values of its ``examples`` lowest, median and highest rows (thumbnails added by
    the caller, which reads every signal's examples in one pass)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = t.num_rows
    v = t.column(c).cast("float64").fill_null(np.nan).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(v)
    nulls = int((~valid).sum())
    if not valid.any():
        return {"name": c, "stats": f"all {n:,} values null", "histogram": None, "nulls": nulls}
    fig, ax = plt.subplots(figsize=(4.5, 2.2))
    ax.hist(v[valid], bins=bins, color="#4477aa")
    ax.set_title(c, fontsize=9)
    ax.tick_params(labelsize=7)
    img = png_data_uri(fig, dpi=80)
    vi = np.flatnonzero(valid)
    order = vi[np.argsort(v[valid], kind="stable")]
    k = min(examples, len(order))
    mid = max(0, min(len(order) - k, len(order) // 2 - k // 2))
    picks = {"lowest": order[:k], "median": order[mid : mid + k], "highest": order[::-1][:k]}
    stats = {
        "min": float(np.nanmin(v)),
        "median": float(np.nanmedian(v)),
        "max": float(np.nanmax(v)),
        "mean": float(np.nanmean(v)),
        "null": nulls,
    }
    out: dict[str, Any] = {"name": c, "stats": stats, "histogram": img, "nulls": nulls}
    for key, pos in picks.items():
        out[key] = [int(p) for p in pos]
        out[key + "_values"] = [float(v[p]) for p in pos]
    return out
