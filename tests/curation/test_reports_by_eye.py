"""The dedup and profile reports of a small real dataset, read the way a person reads them.

Real COCO photos and edited copies of them, real descriptors, dedup and profiling on Ray; the pages
are parsed (thumbnails with their row id, the kept row marked once per group, contents anchors that
resolve, no ``file://`` link, numbers formatted) and opened in headless Chromium, which must draw
every thumbnail and keep the profile page short with its sections collapsed. Screenshots land in
``tmp_path`` for whoever wants to look."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import lance
import pytest

from curation.store import Store
from tests.helpers import coco_rows, sample_row, samples_table

pytestmark = pytest.mark.browser

LONG = "a very long caption " * 20  # cut in the report, shown whole in the title


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.parts: list[Node | str] = []  # child elements and text, in document order

    @property
    def children(self) -> list[Node]:
        return [c for c in self.parts if isinstance(c, Node)]

    @property
    def text(self) -> str:
        """This element's own text (not its children's)."""
        return "".join(c for c in self.parts if isinstance(c, str))

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def find(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.parts)


class Tree(HTMLParser):
    """A small DOM of the page (the stdlib parser; void elements never take children)."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self, html: str):
        super().__init__()
        self.root = self.cur = Node("#root", {}, None)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, dict(attrs), self.cur)
        self.cur.parts.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.parts.append(data)


def _links(root: Node) -> list[str]:
    return [n.attrs[a] for n in root.walk() for a in ("href", "src") if n.attrs.get(a)]


def _add_stage_columns(uri: str, stage) -> None:
    """A stage's columns computed in this process (the stage's own code, without a Ray job)."""
    stage.setup()
    lance.dataset(uri).add_columns(stage.run_batch, read_columns=list(stage.input_columns))


@pytest.fixture(scope="module")
def reports(ray_session, coco_dir, tmp_path_factory):
    """A dataset of 5 COCO photos, 3 edited copies each and one exact copy, with descriptors and
    model-free profile columns; its dedup report (a dry run on Ray) and profile report."""
    from engines.vector.synth import make_variant
    from pipelines.dedup import DedupConfig, run_dedup
    from pipelines.descriptors import VisualStage
    from pipelines.profile import CheapStage
    from pipelines.report import build_report

    rows = coco_rows(coco_dir, limit=5)
    rows[0]["captions"][0]["text"] = LONG
    for g, r in enumerate(list(rows)):
        for kind in ("crop", "colour", "resize"):
            rows.append(sample_row(make_variant(r["image"], kind, g), "edits", f"{g}-{kind}", [f"edited {kind} {g}"]))
    rows.append(dict(rows[1], id="exactcopy", source_key="copy"))
    tmp = tmp_path_factory.mktemp("eye")
    uri = str(tmp / "d.lance")
    lance.write_dataset(samples_table(rows), uri, max_rows_per_file=12)
    _add_stage_columns(uri, VisualStage())
    _add_stage_columns(uri, CheapStage({"families": ["meta", "degradation"]}))
    store = Store(uri)
    out = run_dedup(store, DedupConfig(dry_run=True), show_progress=False)
    profile = build_report(store, tmp / "reports" / "profile.html", examples=3)
    return store, Path(out["report"]), profile


def test_dedup_report_shows_each_group_as_thumbnails_with_the_kept_row_marked_once(reports):
    store, dedup, _ = reports
    ids = set(store.to_arrow(["id"]).column("id").to_pylist())
    page = dedup.read_text(encoding="utf-8")
    root = Tree(page).root
    groups = root.find("section", "group")
    assert len(groups) >= 5  # one per photo with its copies
    whys = 0
    whys = 0
    for sec in groups:
        h3 = sec.find("h3")[0]
        size = int(re.search(r"· (\d+) rows", h3.all_text()).group(1))
        figs = sec.find("figure", "thumb")
        assert len(figs) == size >= 2  # small groups: every member shown
        kept = [f for f in figs if "kept" in f.classes]
        assert len(kept) == 1 and figs[0] is kept[0]  # exactly one kept row, first in its strip
        assert kept[0].attrs["data-row-id"] == h3.find("code")[0].all_text()
        assert len(sec.find("span", "kept")) == 1 and kept[0].find("span", "kept")[0].all_text() == "kept"
        for f in figs:
            (img,) = f.find("img")
            assert img.attrs["src"].startswith("data:image/jpeg;base64,")
            rid = f.find("code", "rid")[0].all_text()
            assert rid == f.attrs["data-row-id"] and rid in ids and img.attrs["alt"] == f"row {rid}"
            if f is not kept[0]:
                val = f.find("span", "val")[0].all_text()
                assert re.fullmatch(r"(exact|near|semantic)( (1|0\.\d{1,3}))?", val), val
                whys += "kept row wins on" in f.all_text()
    assert whys > 0  # keeper_why from the plan
    assert not any(u.startswith("file:") for u in _links(root))
    _assert_numbers_formatted(root)


def _assert_numbers_formatted(root: Node) -> None:
    """Numbers as a person reads them: at most 3 significant digits, thousands separated."""
    text = " ".join(n.text for n in root.walk() if n.tag not in ("style", "title", "code", "h1", "footer"))  # not ids, paths, dates
    decimals = re.findall(r"(?<![\w.])(\d+)\.(\d+)(?![\w.%])", text)  # percentages come with 2 decimals
    assert decimals and all(len((i + f).lstrip("0")) <= 3 for i, f in decimals), decimals  # 0.0422, 12.3, not 12.345
    assert "e+" not in text
    assert not re.search(r"(?<![\d,.])\d{4,}", text)  # 1,234 not 1234


def test_profile_report_has_contents_sections_and_captioned_thumbnails(reports):
    _, _, profile = reports
    page = profile.read_text(encoding="utf-8")
    root = Tree(page).root
    ids = {n.attrs["id"] for n in root.walk() if "id" in n.attrs}
    toc = root.find("nav", "toc")[0]
    targets = [a.attrs["href"] for a in toc.find("a")]
    assert len(targets) >= 5 and all(h.startswith("#") and h[1:] in ids for h in targets)
    sections = root.find("details", "signal")
    names = [s.find("summary")[0].find("b")[0].all_text() for s in sections]
    assert "prof_sharpness" in names and len(sections) == len(targets) - 3
    assert all("open" not in s.attrs for s in sections)  # collapsed: the page starts short
    links = _links(root)
    assert links and not any("file:" in u for u in links)
    assert all(u.startswith(("#", "data:image/")) for u in links)  # nothing outside the page
    sharp = sections[names.index("prof_sharpness")]
    labels = [p.all_text() for p in sharp.find("p", "label")]
    assert labels == ["lowest", "median", "highest"]
    figs = sharp.find("figure", "thumb")
    assert len(figs) == 9
    for f in figs:
        assert f.find("img")[0].attrs["src"].startswith("data:image/jpeg;base64,")
        assert f.find("code", "rid")[0].all_text()
        assert f.find("span", "cap")[0].all_text()  # every row here has a caption
    caps = [c.all_text() for c in root.find("span", "cap")]
    assert all(len(c) <= 120 for c in caps)
    if any(c.startswith("a very long caption") for c in caps):
        assert any(c.endswith("\u2026") for c in caps)
    _assert_numbers_formatted(root)
    assert re.search(r"\b\d{1,3}(,\d{3})+\b", root.all_text())  # file sizes in bytes, at least, are large


def _shoot(browser, path: Path, out: Path, width: int = 1200):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page


def _decoded(page) -> list[int]:
    """naturalWidth of every <img>, after each has decoded."""
    return page.evaluate(
        """async () => {
            const imgs = [...document.images];
            await Promise.all(imgs.map(i => i.decode().catch(() => null)));
            return imgs.map(i => i.naturalWidth);
        }"""
    )


def test_reports_render_in_chromium(reports, browser, tmp_path):
    _, dedup, profile = reports
    # open from a copy in another folder: nothing on the page may depend on where it was written
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for p in (dedup, profile):
        shutil.copy(p, moved / p.name)

    page = _shoot(browser, moved / dedup.name, tmp_path)
    widths = _decoded(page)
    assert len(widths) > 20 and all(w > 0 for w in widths)
    kept = page.locator("figure.kept")
    assert kept.count() == page.locator("section.group").count() >= 5
    border = kept.first.evaluate("e => getComputedStyle(e).borderTopColor")
    assert border != "rgba(0, 0, 0, 0)"  # the kept frame is drawn
    strip_scroll = page.locator(".strip").first.evaluate("e => getComputedStyle(e).flexWrap")
    assert strip_scroll == "nowrap"
    page.screenshot(path=str(tmp_path / "dedup.png"), full_page=True)
    assert (tmp_path / "dedup.png").stat().st_size > 10_000
    page.close()

    page = _shoot(browser, moved / profile.name, tmp_path)
    collapsed = page.evaluate("document.documentElement.scrollHeight")
    assert collapsed < 3000, collapsed  # the 17,000 px page is gone while sections are closed
    page.screenshot(path=str(tmp_path / "profile-collapsed.png"), full_page=True)
    n = page.locator("details.signal").count()
    page.evaluate("document.querySelectorAll('details.signal').forEach(d => d.open = true)")
    widths = _decoded(page)
    assert len(widths) >= 4 * n and all(w > 0 for w in widths)  # a histogram and its thumbnails per signal
    thumb = page.locator("figure.thumb img").first.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert max(thumb) <= 128 and min(thumb) > 8
    expanded = page.evaluate("document.documentElement.scrollHeight")
    assert expanded > collapsed
    page.screenshot(path=str(tmp_path / "profile-open.png"), full_page=True)
    # a contents link jumps to its section
    page.evaluate("document.querySelectorAll('details.signal').forEach(d => d.open = false)")
    page.locator("nav.toc a[href='#sig-prof_sharpness']").click()
    assert page.evaluate("location.hash") == "#sig-prof_sharpness"
    top = page.locator("#sig-prof_sharpness").evaluate("e => e.getBoundingClientRect().top")
    assert 0 <= top < page.evaluate("innerHeight") - 20  # scrolled into view
    page.close()


def test_empty_export_and_review_heads_read_plainly():
    from curation.reports import render

    export = render(
        "export_report.html",
        source={"uri": "/d.lance", "version": 3, "rows": 80},
        exported=0,
        excluded_total=80,
        created="2025-01-01",
        plot=None,
        excluded=[("rule:everything", 80)],
        checks_skipped=[],
    )
    assert "no rows passed the rules" in export and "<img" not in export
    mark = {"prof_clip_image": "prof_clip: random weights"}
    review = render(
        "review_report.html",
        r={
            "version_before": 4,
            "version_after": 5,
            "decisions": 1200,
            "rows_reviewed": 1100,
            "labels": 1000,
            "caption_fixes": {"captions_edited": 0, "accepted": 0, "proposed": 0},
            "graph_tags_rows": 0,
            "pseudo_label_agreement": {"n": 0, "accuracy": None, "kappa": None, "confusion": {}},
            "verifier_agreement": {"n": 0, "accuracy": None, "kappa": None, "confusion": {}},
            "random_derived": mark,
            "reward_head": {"auc": 0.81234, "n": 1000, "features": ["prof_quality"], "random_derived": mark},
            "keep_head": {
                "path": "/s/review/keep_head.safetensors",
                "train_loss": 0.41234,
                "name": "keep-probability head",
                "random_derived": mark,
            },
            "thresholds": [
                {
                    "column": "prof_clip_sim",
                    "op": ">=",
                    "old": 0.123456,
                    "new": 0.2,
                    "n": 30,
                    "random_derived": "x",
                    "note": "RANDOM-DERIVED",
                }
            ],
        },
    )
    root = Tree(review).root
    heads = [h.all_text() for h in root.find("h2")]
    assert "Keep head (keep_head)" in heads and "Random-derived inputs (random_derived)" in heads
    assert "aesthetic" not in review.split("<main>")[1].split("not an aesthetics score")[0]  # no aesthetics head shown
    text = root.all_text()
    assert "keep-probability head" in text and "0.412" in text and "0.812" in text and "1,200 decisions" in text
    assert text.count("RANDOM-DERIVED: prof_clip_image (prof_clip: random weights)") == 2  # reward head and keep head
    assert "0.123456" not in text and "0.123" in text
