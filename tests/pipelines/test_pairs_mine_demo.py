"""``curate pairs mine`` on the demo corpus (``curate demo-data``: real photos shipped in packages,
with the truth of every derived image): true duplicates are never mined, and photos with text
rendered over the whole frame are found with the photo they were made from.

The corpus's own truth decides: ``exact_duplicate`` items are byte copies; near-duplicates made by
re-encoding or resizing only (``jpeg``, ``resize``, ``progressive``) show nothing to edit; a
``text`` item with a base photo and a ``near_dup_group`` is that photo with a sign or caption
card drawn on it, the same scene with an edit. The real chain runs on Ray: descriptors, index,
``curate knn``, then ``mine_pairs``."""

from __future__ import annotations

import lance
import pytest

from curation.store import Store
from pipelines.pairs import MineConfig, mine_pairs, mined_fields
from tests.helpers import sample_row, samples_table

REENCODE_ONLY = {"jpeg", "resize", "progressive"}


@pytest.fixture(scope="module")
def demo_mined(tmp_path_factory, ray_session):
    from democorpus.corpus import build_corpus
    from pipelines.descriptors import ensure_visual
    from pipelines.index import IndexBuildConfig, build_index
    from pipelines.knn import KnnConfig, build_knn

    items = build_corpus(0, ("folder",)).items
    rows, by_row = [], {}
    for it in items:
        row = sample_row(it.image, "demo", it.id, [c["text"] for c in it.captions[:1]])
        rows.append(row)
        by_row[row["id"]] = it
    uri = tmp_path_factory.mktemp("demo-mine") / "demo.lance"
    lance.write_dataset(samples_table(rows), str(uri), max_rows_per_file=40)
    store = Store(str(uri))
    ensure_visual(store, show_progress=False)
    build_index(store, IndexBuildConfig(column="vec_desc"), show_progress=False)
    build_knn(store, KnnConfig(column="vec_desc", k=10), show_progress=False)
    result = mine_pairs(store, MineConfig(), show_progress=False)
    pairs = lance.dataset(result.extra["out"]).to_table(columns=["source_id", "target_id", "provenance", "changed_fraction"]).to_pylist()
    assert all(p["target_id"] == mined_fields(p["provenance"])["target"] for p in pairs)
    mined = {frozenset((p["source_id"], p["target_id"])) for p in pairs}
    return items, by_row, mined


def _row_of(by_row: dict) -> dict:
    return {it.id: rid for rid, it in by_row.items()}


def test_true_duplicates_are_never_mined(demo_mined):
    items, by_row, mined = demo_mined
    assert mined, "nothing mined from the demo corpus"
    for pair in mined:
        a, b = (by_row[r] for r in pair)
        assert "exact_duplicate" not in (a.role, b.role) or a.image != b.image, (a.id, b.id)
        for x, y in ((a, b), (b, a)):
            ops = {t.get("op") for t in x.transforms}
            if x.role == "near_duplicate" and ops and ops <= REENCODE_ONLY and y.role == "original" and y.origin == x.origin:
                pytest.fail(f"{x.id} ({sorted(ops)}) is a re-encoded copy of {y.id}, not an edit")


def test_text_drawn_over_a_photo_is_mined_with_the_photo(demo_mined):
    items, by_row, mined = demo_mined
    row = _row_of(by_row)
    originals = {it.origin: it for it in items if it.role == "original"}
    edited = [it for it in items if it.role == "text" and it.near_dup_group and it.origin in originals]
    assert edited, "the demo corpus has no full-frame text items"
    found = [it.id for it in edited if frozenset((row[it.id], row[originals[it.origin].id])) in mined]
    assert len(found) >= max(1, len(edited) // 2), (found, [it.id for it in edited])
