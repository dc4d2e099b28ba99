"""Every HTML report renders from its template on the shared layout and stylesheet, escapes what came
from the data, and embeds its figures (curation.reports)."""

from __future__ import annotations

import re

import pytest

from curation.reports import data_uri, png_data_uri, render

XSS = '<script>alert("x")</script>'
PNG = data_uri(b"\x89PNG\r\n\x1a\n fake", "image/png")
JPEG = data_uri(b"\xff\xd8\xff fake", "image/jpeg")


def _profile() -> dict:
    thumbs = [{"id": XSS, "thumb": JPEG, "value": "0.1"}, {"id": "b", "thumb": None, "value": "0.9"}]
    return dict(
        uri="/data/d.lance",
        version=3,
        rows="1,204",
        decoded="1,200",
        models=[{"group": "prof_clip", "model": "tiny-clip", "dim": 32, "random_weights": True}],
        notes=["No aesthetic score: no aesthetic head weights were configured."],
        errors=[{"column": "prof_error", "reason": XSS, "rows": 4}],
        value_counts=[{"column": "prof_format", "counts": [("JPEG", 1100), ("PNG", 104)]}],
        signals=[
            {
                "name": "prof_sharpness",
                "stats": "min 0.1 · median 0.5 · max 0.9 · null 4",
                "histogram": PNG,
                "lowest": thumbs,
                "highest": thumbs[::-1],
            },
            {"name": "prof_ocr_chars", "stats": "all 1204 values null", "histogram": None},
        ],
        generated="2025-01-01 00:00 UTC",
    )


def _dedup() -> dict:
    return dict(
        version=5,
        removed=3,
        rows=40,
        removed_pct="7.50%",
        groups=2,
        method="leiden",
        resolution=0.1,
        notes=[f"caption {XSS} seen twice"],
        curve_plot=PNG,
        curve=[{"threshold": "0.90", "edges": 12, "groups": 2, "removed": 3, "fraction": "7.50%"}],
        counters=[("rows", "40"), ("removed_by_reason", '{"exact": 1, "near": 2}')],
    )


def _pipeline() -> dict:
    return dict(
        title="demo.yaml",
        uri="/data/d.lance",
        version=7,
        rows="1,204",
        columns=31,
        steps=[
            {
                "stage": "ingest",
                "status": "committed",
                "version": 1,
                "rows": 1204,
                "seconds": "3.2",
                "counters": ["shouted = 6", "skipped = 0"],
                "notes": ["report: /tmp/x.html"],
            },
            {"stage": "dedup", "status": "done", "version": 2, "rows": None, "seconds": "1.0", "counters": [], "notes": []},
        ],
        time_plot=PNG,
        errors=[("decode_error", 4)],
        links=["/data/d.lance/_curation/reports/profile-v7.html"],
        generated="2025-01-01 00:00 UTC",
    )


def _export() -> dict:
    return dict(
        source={"uri": "/data/d.lance", "version": 7, "rows": 1204},
        exported=1100,
        excluded_total=104,
        created="2025-01-01T00:00:00+00:00",
        plot=PNG,
        excluded=[("duplicate: near", 100), ("error", 4)],
        checks_skipped=["rev_decision: no review columns"],
    )


def _review() -> dict:
    agreement = {"n": 30, "accuracy": 0.9, "kappa": 0.71, "confusion": {"keep->keep": 20}}
    return dict(
        r={
            "version_before": 7,
            "version_after": 8,
            "decisions": 40,
            "rows_reviewed": 35,
            "labels": 30,
            "caption_fixes": {"captions_edited": 2, "accepted": 1, "proposed": 3},
            "graph_tags_rows": 4,
            "pseudo_label_agreement": agreement,
            "verifier_agreement": {"n": 0, "accuracy": None, "kappa": None, "confusion": {}},
            "reward_head": {"auc": 0.8},
            "thresholds": [{"column": "prof_quality", "op": ">=", "old": 0.3, "new": 0.35, "n": 30}],
            "plots": {"prof_quality": PNG, "prof_sharpness": PNG},
        }
    )


def _graph() -> dict:
    return dict(
        title="Tagged resampling report",
        sections=[
            {
                "title": "Summary",
                "table": {"header": ["metric", "before", "after"], "rows": [["entropy", 3.5, 4.1]]},
                "text": "Entropy of the concept marginal.",
                "plot": PNG,
            },
            {
                "title": "Rows with the largest weights (top 1)",
                "table": {"header": ["id", "expected copies", "caption"], "rows": [["r1", 2.5, XSS]]},
            },
        ],
    )


REPORTS = {
    "profile_report.html": _profile,
    "dedup_report.html": _dedup,
    "pipeline_report.html": _pipeline,
    "export_report.html": _export,
    "review_report.html": _review,
    "graph_report.html": _graph,
}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_uses_the_base_layout_and_stylesheet(name):
    page = render(name, **REPORTS[name]())
    assert page.startswith("<!doctype html>") and '<meta charset="utf-8">' in page
    assert '<body class="zc-report">' in page and "</html>" in page
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert "body.zc-report" in style and ".zc-report .num" in style  # report.css inlined, not linked
    assert "<link" not in page and re.findall(r"<script[^>]*>", page) == []  # one self-contained file, no scripts
    assert '<footer class="zc-footer">' in page
    assert "data:image/png;base64," in page


def test_user_text_is_escaped_not_markup():
    for name in ("profile_report.html", "dedup_report.html", "graph_report.html"):
        page = render(name, **REPORTS[name]())
        assert "<script>" not in page, name
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page, name


def test_report_texts_the_tests_and_readers_look_for():
    profile = render("profile_report.html", **_profile())
    assert "RANDOM WEIGHTS" in profile and "Profile of /data/d.lance" in profile and "1,200 of 1,204 rows decoded" in profile
    assert profile.count("data:image/jpeg;base64,") == 2 and "(no image)" in profile and "all 1204 values null" in profile
    assert "JPEG=1100, PNG=104" in profile and "generated 2025-01-01 00:00 UTC" in profile
    pipeline = render("pipeline_report.html", **_pipeline())
    steps = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>v\d+</td>", pipeline)  # tests/cluster/test_demo_job.py
    assert steps == [("ingest", "committed"), ("dedup", "done")]
    assert "shouted = 6<br>skipped = 0" in pipeline and '<a href="file:///data/d.lance/_curation/reports/profile-v7.html">' in pipeline
    assert "<title>pipeline demo.yaml</title>" in pipeline
    moved = render("pipeline_report.html", **{**_pipeline(), "report_dir": "/data/d.lance/_curation"})
    assert '<a href="reports/profile-v7.html">' in moved and "file://" not in moved  # what pipelines/pipeline.py writes
    dedup = render("dedup_report.html", **_dedup())
    assert dedup.count("<img") == 1 and "Duplicates at dataset v5" in dedup and "3 of 40 rows (7.50%)" in dedup
    export = render("export_report.html", **_export())
    assert '<img src="data:image/png;base64,' in export and "duplicate: near" in export and "excluded.parquet" in export
    review = render("review_report.html", **_review())
    assert review.count("data:image/png;base64") == 2 and "Review merged: v7 &rarr; v8" in review and "0.900" in review
    graph = render("graph_report.html", **_graph())
    assert '<td class="num">3.5</td>' in graph and "Rows with the largest weights" in graph and "<td>entropy</td>" in graph


def test_png_data_uri_embeds_and_closes_the_figure():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    uri = png_data_uri(fig)
    assert uri.startswith("data:image/png;base64,iVBORw0KGgo")  # the PNG signature, base64
    assert not plt.fignum_exists(fig.number)


def test_graph_report_writes_one_page(tmp_path):
    pytest.importorskip("matplotlib")
    from graph.report import graph_report

    p = graph_report(
        tmp_path / "g.html",
        {"nodes": 12, "edges": 11, "depth_histogram": {"0": 1, "1": 11}, "nodes_by_source": {"wordnet": 10, f"user {XSS}": 2}},
    )
    page = p.read_text(encoding="utf-8")
    assert "<h1>Concept graph</h1>" in page and page.count("<img") == 1 and "<script>" not in page
    assert '<td class="num">12</td>' in page and "zc-report" in page
