"""HTML reports a person opens: the resampling result (long tail before/after, entropy,
coverage, head and tail concepts, rows with the largest weights) and graph build statistics.
Plots are matplotlib PNGs embedded as ``data:`` URIs, so one file is the whole report; the markup is
``curation/templates/graph_report.html`` on the shared report layout (``curation.reports``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.reports import png_data_uri, render

__all__ = ["resample_report", "graph_report"]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Table data for ``graph_report.html``: the template right-aligns the numbers and escapes the rest
    (labels and captions come from user files)."""
    return {"header": [str(h) for h in header], "rows": [list(r) for r in rows]}


def resample_report(
    path: str | Path,
    result,
    *,
    label: Callable[[str], str],
    top: Sequence[dict[str, Any]],
    settings: dict[str, Any],
) -> Path:
    """Write the resampling report for a :class:`graph.resample.ResampleResult`; ``top``: the rows
    with the largest weights (id, expected, copies, caption, tags), largest first."""
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
    plots = png_data_uri(fig)
    summary = _table(
        ["metric", "before", "after"],
        [[k, b[k], a[k]] for k in ("rows", "concepts_present", "coverage", "entropy", "entropy_normalised", "max_over_median")],
    )
    head = _table(
        ["concept", "label", "before", "after"], [[c, label(c), f, round(float(fa[result.concepts.index(c)]), 2)] for c, f in b["head"]]
    )
    tail = _table(
        ["concept", "label", "before", "after"], [[c, label(c), f, round(float(fa[result.concepts.index(c)]), 2)] for c, f in b["tail"]]
    )
    rows = _table(
        ["id", "expected copies", "copies", "caption", "tags"],
        [
            [r["id"], round(float(r["expected"]), 3), int(r["copies"]), r["caption"][:160], ", ".join(label(t) for t in r["tags"][:8])]
            for r in top
        ],
    )
    sett = _table(["setting", "value"], [[k, v] for k, v in settings.items()])
    sections = [
        {
            "title": "Summary",
            "table": summary,
            "plot": plots,
            "text": "Before: the rows resampled as they are (one copy each, real concept counts); after: the expected "
            "copies at the target size. Entropy of the concept marginal (higher = more even), max/median concept frequency "
            "(lower = flatter), coverage = share of balanced concepts with at least one expected row.",
        },
        {"title": "Head concepts (most frequent before)", "table": head},
        {"title": "Tail concepts (least frequent before)", "table": tail},
        {"title": f"Rows with the largest weights (top {len(top)})", "table": rows},
        {"title": "Settings", "table": sett},
    ]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render("graph_report.html", title="Tagged resampling report", sections=sections), encoding="utf-8")
    return p


def graph_report(path: str | Path, stats: dict[str, Any], title: str = "Concept graph", lexnames: dict | None = None) -> Path:
    """Build statistics with a depth histogram, and what the visual-only cut kept per WordNet
    lexicographer file (``lexnames``: file -> [synsets before, after])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = stats.get("depth_histogram", {})
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([int(k) for k in hist], list(hist.values()), color="#47a")
    ax.set_xlabel("depth (hops from a root)")
    ax.set_ylabel("nodes")
    rows = [[k, v] for k, v in stats.items() if not isinstance(v, (dict, list))]
    sections = [
        {"table": _table(["statistic", "value"], rows), "plot": png_data_uri(fig)},
        {"table": _table(["source", "nodes"], list(stats.get("nodes_by_source", {}).items()))},
    ]
    if lexnames:
        rows = [[k, b, a, b - a] for k, (b, a) in sorted(lexnames.items(), key=lambda kv: -kv[1][0])]
        sections.append(
            {
                "title": "WordNet synsets per lexicographer file, before and after the visual-only cut",
                "table": _table(["lexicographer file", "before", "after", "removed"], rows),
                "text": "Files that name visible things (artifact, food, animal, plant, person, body, object, substance, "
                "location, phenomenon, shape, event, group) are kept whole; the others are cut except the subtrees "
                "of graph.wordnet.VISUAL_KEEP (visual signals such as traffic lights, street signs). Children of a "
                "cut synset are re-attached to its nearest kept ancestor.",
            }
        )
    p = Path(path)
    p.write_text(render("graph_report.html", title=title, sections=sections), encoding="utf-8")
    return p
