"""``curate report``: one self-contained HTML page about a dataset's profile.

Per numeric signal: a histogram, the lowest and highest rows as thumbnails, and null counts;
errors counted by reason (decode failures in ``prof_error``, ingest errors in ``error``); which
models made the embeddings, saying plainly when their weights are random; and which signals are
absent (no aesthetic head configured -> no aesthetic score, not a fake one).

This module computes the numbers, plots and thumbnails; the markup is
``curation/templates/profile_report.html`` on the shared report layout (``curation.reports``).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.reports import data_uri, png_data_uri, render
from engines.profiling.embed import MODELS_RECORD

__all__ = ["build_report"]

_SKIP = {"prof_phash", "prof_dhash", "prof_orientation", "prof_bit_depth", "prof_channels", "prof_frames"}


def _thumb(data: bytes | None) -> str | None:
    """A JPEG thumbnail ``data:`` URI of a row's image, decoded the way profiling decodes it
    (so a decompression bomb stays refused here too); None when the image does not decode."""
    from engines.profiling.decode import Decoded, DecodeOptions, decode_image

    d = decode_image(data, DecodeOptions(max_side=128))
    if not isinstance(d, Decoded):
        return None
    buf = io.BytesIO()
    d.rgb.save(buf, "JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def build_report(store, out: str | Path, *, examples: int = 5, bins: int = 30) -> Path:
    """Write the HTML report of ``store``'s latest version to ``out``; returns the path."""
    import pyarrow as pa

    ds = store.open()
    schema = ds.schema
    numeric = [
        f.name
        for f in schema
        if f.name.startswith("prof_") and f.name not in _SKIP and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]
    light = ["id", "error"] + [c for c in ("prof_error", "prof_ocr_lang", "prof_cap_lang", "prof_format") if c in schema.names]
    t = ds.to_table(columns=light + numeric)
    model_notes, notes = _notes(store, schema.names)
    errors, ok, value_counts = _errors_and_counts(t)
    ids = t.column("id").to_pylist()
    signals = [_signal(ds, t, c, ids, examples, bins) for c in numeric]
    page = render(
        "profile_report.html",
        uri=store.uri,
        version=ds.version,
        rows=f"{t.num_rows:,}",
        decoded=None if ok is None else f"{ok:,}",
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
        if {"prof_clip": "prof_clip_image", "prof_text_emb": "prof_caption_emb"}.get(group) not in names:
            continue  # recorded by a run whose columns are not in this version
        model_notes.append({"group": group, "model": m["model"], "dim": m["dim"], "random_weights": bool(m.get("random_weights"))})
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


def _signal(ds, t, c: str, ids: list, examples: int, bins: int) -> dict[str, Any]:
    """One signal's section: statistics, a histogram, and thumbnails of its lowest and highest rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = t.num_rows
    v = np.array([np.nan if x is None else float(x) for x in t.column(c).to_pylist()])
    valid = ~np.isnan(v)
    if not valid.any():
        return {"name": c, "stats": f"all {n} values null", "histogram": None}
    fig, ax = plt.subplots(figsize=(4.5, 2.2))
    ax.hist(v[valid], bins=bins, color="#4477aa")
    ax.set_title(c, fontsize=9)
    ax.tick_params(labelsize=7)
    img = png_data_uri(fig, dpi=80)
    order = np.argsort(v[valid], kind="stable")
    vi = np.flatnonzero(valid)
    low, high = vi[order[:examples]], vi[order[::-1][:examples]]
    want = [ids[i] for i in np.concatenate([low, high])]
    thumbs: dict[str, Any] = {}
    if want:
        quoted = ", ".join("'" + str(x).replace("'", "''") + "'" for x in set(want))
        for r in ds.to_table(columns=["id", "image"], filter=f"id IN ({quoted})").to_pylist():
            thumbs[r["id"]] = _thumb(r["image"])
    lowest, highest = ([{"id": ids[i], "thumb": thumbs.get(ids[i]), "value": f"{v[i]:.4g}"} for i in idx] for idx in (low, high))
    stats = f"min {np.nanmin(v):.4g} · median {np.nanmedian(v):.4g} · max {np.nanmax(v):.4g} · null {int((~valid).sum())}"
    return {"name": c, "stats": stats, "histogram": img, "lowest": lowest, "highest": highest}
