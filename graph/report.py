"""HTML reports a person opens: the resampling result (long tail before/after, entropy,
coverage, head and tail concepts, rows with the largest weights) and graph build statistics.
Plots are matplotlib PNGs embedded as base64, so one file is the whole report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["resample_report", "graph_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right}img{max-width:100%}h2{margin-top:1.6em}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{x}</td>' if isinstance(x, (int, float)) else f"<td>{html.escape(str(x))}</td>" for x in r
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


def resample_report(
    path: str | Path,
    result,
    *,
    label: Callable[[str], str],
    row_ids: Sequence[str],
    row_captions: Sequence[str],
    row_tags: Sequence[Sequence[str] | None],
    settings: dict[str, Any],
    top_rows: int = 20,
) -> Path:
    """Write the resampling report for a :class:`graph.resample.ResampleResult`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, a = result.before, result.after
    fb, fa = np.asarray(b["frequencies"]), np.asarray(a["frequencies"])
    order = np.argsort(-fb)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    ax[0].plot(np.arange(1, len(fb) + 1), fb[order], label="before", lw=1.5)
    ax[0].plot(np.arange(1, len(fa) + 1), fa[order], label="after (same concept order)", lw=1, alpha=0.8)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("concept rank (by frequency before)")
    ax[0].set_ylabel("rows carrying the concept (expected)")
    ax[0].set_title("concept frequency long tail")
    ax[0].legend()
    ax[1].hist(result.expected, bins=40, color="#4a7")
    ax[1].set_xlabel("expected copies per row")
    ax[1].set_ylabel("rows")
    ax[1].set_title("row weights")
    plots = _png(fig)
    summary = _table(
        ["metric", "before", "after"],
        [[k, b[k], a[k]] for k in ("rows", "concepts_present", "coverage", "entropy", "entropy_normalised", "max_over_median")],
    )
    head = _table(["concept", "label", "before", "after"],
                  [[c, label(c), f, round(float(fa[result.concepts.index(c)]), 2)] for c, f in b["head"]])
    tail = _table(["concept", "label", "before", "after"],
                  [[c, label(c), f, round(float(fa[result.concepts.index(c)]), 2)] for c, f in b["tail"]])
    top = np.argsort(-result.expected)[:top_rows]
    rows = _table(
        ["id", "expected copies", "copies", "caption", "tags"],
        [[row_ids[i], round(float(result.expected[i]), 3), int(result.copies[i]), row_captions[i][:160],
          ", ".join(label(t) for t in (row_tags[i] or [])[:8])] for i in top],
    )
    sett = _table(["setting", "value"], [[k, v] for k, v in settings.items()])
    parts = [
        "<h2>Summary</h2>", summary,
        "<p>Entropy of the concept marginal (higher = more even), max/median concept frequency "
        "(lower = flatter), coverage = share of balanced concepts with at least one expected row.</p>",
        plots, "<h2>Head concepts (most frequent before)</h2>", head,
        "<h2>Tail concepts (least frequent before)</h2>", tail,
        f"<h2>Rows with the largest weights (top {top_rows})</h2>", rows,
        "<h2>Settings</h2>", sett,
    ]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(_page("Tagged resampling report", parts), encoding="utf-8")
    return p


def graph_report(path: str | Path, stats: dict[str, Any], title: str = "Concept graph") -> Path:
    """Build statistics with a depth histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = stats.get("depth_histogram", {})
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([int(k) for k in hist], list(hist.values()), color="#47a")
    ax.set_xlabel("depth (hops from a root)")
    ax.set_ylabel("nodes")
    rows = [[k, v] for k, v in stats.items() if not isinstance(v, (dict, list))]
    parts = [_table(["statistic", "value"], rows), _png(fig),
             _table(["source", "nodes"], list(stats.get("nodes_by_source", {}).items()))]
    p = Path(path)
    p.write_text(_page(title, parts), encoding="utf-8")
    return p
