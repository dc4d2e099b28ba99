"""``curate report``: one self-contained HTML page about a dataset's profile.

Per numeric signal: a histogram, the lowest and highest rows as thumbnails, and null counts;
errors counted by reason (decode failures in ``prof_error``, ingest errors in ``error``); which
models made the embeddings, saying plainly when their weights are random; and which signals are
absent (no aesthetic head configured -> no aesthetic score, not a fake one).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["build_report"]

_SKIP = {"prof_phash", "prof_dhash", "prof_orientation", "prof_bit_depth", "prof_channels", "prof_frames"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _thumb(data: bytes | None) -> str | None:
    from engines.profiling.decode import Decoded, DecodeOptions, decode_image

    d = decode_image(data, DecodeOptions(max_side=128))
    if not isinstance(d, Decoded):
        return None
    buf = io.BytesIO()
    d.rgb.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def build_report(store, out: str | Path, *, examples: int = 5, bins: int = 30) -> Path:
    """Write the HTML report of ``store``'s latest version to ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ds = store.open()
    schema = ds.schema
    numeric = [f.name for f in schema if f.name.startswith("prof_") and f.name not in _SKIP
               and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    light = ["id", "error"] + [c for c in ("prof_error", "prof_ocr_lang", "prof_cap_lang", "prof_format") if c in schema.names]
    t = ds.to_table(columns=light + numeric)
    n = t.num_rows
    models_p = store.state_dir / "profiling" / "models.json"
    models = json.loads(models_p.read_text()) if models_p.exists() else {}

    parts: list[str] = [f"<h1>Profile of {html.escape(store.uri)}</h1>",
                        f"<p>version v{ds.version}, {n:,} rows, {len(numeric)} numeric signals</p>"]

    # --- notes: models and absent signals --------------------------------------------------------------
    notes = []
    for group, m in sorted(models.items()):
        if {"prof_clip": "prof_clip_image", "prof_text_emb": "prof_caption_emb"}.get(group) not in schema.names:
            continue  # recorded by a run whose columns are not in this version
        line = f"<b>{html.escape(group)}</b>: {html.escape(m['model'])}, {m['dim']}-d"
        if m.get("random_weights"):
            line += (" — <b class=warn>RANDOM WEIGHTS: these embeddings and similarities come from a randomly "
                     "initialised model and carry no meaning</b>")
        notes.append(line)
    if "prof_clip_image" not in schema.names:
        notes.append("No image embeddings: prof_clip was not run (no CLIP model configured).")
    if "prof_aesthetic" not in schema.names:
        notes.append("No aesthetic score: no aesthetic head weights were configured (aesthetic.weights), "
                     "so the column is absent rather than filled with a made-up value.")
    if "prof_watermark_score" in schema.names and "prof_ocr_boxes" not in schema.names:
        cue = ("the pixel overlay cue (AUC 0.7-0.8 on marked vs clean photos, near chance against scene text)" if "prof_watermark_overlay" in schema.names
               else "the old stroke heuristic (AUC ~0.65, barely better than chance)")
        notes.append(f"prof_watermark_score comes from {cue} only: prof_ocr was not run. Run prof_ocr, then "
                     "prof_scores, for the OCR-box score (AUC ~0.97 on watermarked vs clean photos, docs/profiling.md).")
    if "prof_error" not in schema.names:
        notes.append("The metadata stage (prof_meta) has not run: decode errors are unknown.")
    parts.append("<h2>Models and absent signals</h2><ul>" + "".join(f"<li>{x}</li>" for x in notes) + "</ul>")

    # --- errors by reason ------------------------------------------------------------------------------
    rows = []
    for col in ("error", "prof_error"):
        if col not in t.column_names:
            continue
        counts: dict[str, int] = {}
        for e in t.column(col).drop_null().to_pylist():
            counts[e.split(":", 1)[0]] = counts.get(e.split(":", 1)[0], 0) + 1
        rows += [f"<tr><td>{col}</td><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    ok = t.column("prof_error").null_count if "prof_error" in t.column_names else None  # null error = decoded
    parts.append("<h2>Errors by reason</h2>" + (f"<p>{ok:,} of {n:,} rows decoded and profiled.</p>" if ok is not None else "")
                 + ("<table><tr><th>column</th><th>reason</th><th>rows</th></tr>" + "".join(rows) + "</table>" if rows else "<p>no errors</p>"))
    for c in ("prof_format", "prof_ocr_lang", "prof_cap_lang"):
        if c in t.column_names:
            vc = pc.value_counts(t.column(c)).to_pylist()
            parts.append(f"<p><b>{c}</b>: " + ", ".join(f"{html.escape(str(x['values']))}={x['counts']}" for x in vc) + "</p>")

    # --- per signal ------------------------------------------------------------------------------------
    parts.append("<h2>Signals</h2>")
    ids = t.column("id").to_pylist()
    for c in numeric:
        v = np.array([np.nan if x is None else float(x) for x in t.column(c).to_pylist()])
        valid = ~np.isnan(v)
        nulls = int((~valid).sum())
        if not valid.any():
            parts.append(f"<h3>{c}</h3><p>all {n} values null</p>")
            continue
        fig, ax = plt.subplots(figsize=(4.5, 2.2))
        ax.hist(v[valid], bins=bins, color="#4477aa")
        ax.set_title(c, fontsize=9)
        ax.tick_params(labelsize=7)
        img = _png(fig)
        plt.close(fig)
        order = np.argsort(v[valid], kind="stable")
        vi = np.flatnonzero(valid)
        low, high = vi[order[:examples]], vi[order[::-1][:examples]]
        want = [ids[i] for i in np.concatenate([low, high])]
        thumbs: dict[str, Any] = {}
        if want:
            quoted = ", ".join("'" + str(x).replace("'", "''") + "'" for x in set(want))
            for r in ds.to_table(columns=["id", "image"], filter=f"id IN ({quoted})").to_pylist():
                thumbs[r["id"]] = _thumb(r["image"])

        def strip(idx):
            cells = []
            for i in idx:
                b64 = thumbs.get(ids[i])
                pic = f"<img src='data:image/jpeg;base64,{b64}'>" if b64 else "<span>(no image)</span>"
                cells.append(f"<figure>{pic}<figcaption>{v[i]:.4g}</figcaption></figure>")
            return "".join(cells)

        stats = f"min {np.nanmin(v):.4g} · median {np.nanmedian(v):.4g} · max {np.nanmax(v):.4g} · null {nulls}"
        parts.append(f"<div class=sig><h3>{c}</h3><p>{stats}</p><img src='data:image/png;base64,{img}'>"
                     f"<p>lowest</p><div class=row>{strip(low)}</div><p>highest</p><div class=row>{strip(high)}</div></div>")

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>profile report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px} .warn{color:#b00} table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px} .row{display:flex;gap:6px;flex-wrap:wrap}"
            "figure{margin:0;text-align:center;font-size:11px} figure img{max-height:96px} .sig{border-top:1px solid #ddd}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
