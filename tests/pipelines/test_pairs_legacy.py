"""A pair table written before ``target_id`` was a column (a mined pair's target named only in
``provenance``) is upgraded in place, once, by whichever job touches it first: a job appending to
it, the export, or the review. Nothing is lost: the old version stays readable, and every row's
other columns are unchanged.

Real data: 4 coco-mini photos, 3 text pairs from the real render job (Ray), rewritten in the legacy
layout, and a legacy mined table with one pair naming its target in provenance."""

from __future__ import annotations

import lance
import pyarrow as pa
import pytest

from curation.store import Store
from pipelines.pairs import PAIRS_SCHEMA, PairExportConfig, PairsConfig, export_pairs, render_pairs, table_path
from pipelines.pairs.review import PairReviewConfig, review_pairs
from tests.helpers import samples_table

LEGACY = pa.schema([f for f in PAIRS_SCHEMA if f.name != "target_id"])


@pytest.fixture
def legacy(tmp_path, coco_sample_rows, ray_session):
    """(store, row ids, the render table's rows before the rewrite) with both tables legacy."""
    rows = coco_sample_rows[:4]
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    store = Store(uri)
    render_pairs(store, PairsConfig(n=3, seed=0), show_progress=False)
    rendered = lance.dataset(table_path(store, "pairs")).to_table()
    lance.write_dataset(rendered.drop_columns(["target_id"]), table_path(store, "pairs"), mode="overwrite")
    mined = {name: None for name in LEGACY.names}
    mined |= {"pair_id": "0123456789abcdef01234567", "source_id": rows[0]["id"], "kind": "mined", "changed_fraction": 0.05}
    mined |= {"provenance": f"mine v1 column=vec_desc dataset={uri}@v1 target={rows[1]['id']} sim=0.97000 instruction_source=none"}
    lance.write_dataset(pa.Table.from_pylist([mined], schema=LEGACY), table_path(store, "mined"))
    return store, [r["id"] for r in rows], rendered.drop_columns(["target_id"]).to_pylist()


def test_review_upgrades_both_tables_once_and_loses_nothing(legacy):
    store, ids, before = legacy
    rep = review_pairs(store, PairReviewConfig())
    assert rep["queued"] == 4
    mined = lance.dataset(table_path(store, "mined"))
    assert mined.version == 2 and "target_id" not in mined.checkout_version(1).schema.names  # the old version stays
    assert mined.to_table(columns=["target_id"]).column(0).to_pylist() == [ids[1]]
    render = lance.dataset(table_path(store, "pairs"))
    after = {r["pair_id"]: r for r in render.to_table().to_pylist()}
    assert all(after[r["pair_id"]].pop("target_id") is None for r in before)  # made here: no dataset row
    assert [after[r["pair_id"]] for r in before] == before  # every other column unchanged
    again = review_pairs(store, PairReviewConfig())  # upgraded once: no further version
    assert again["updated"] == 4 and lance.dataset(table_path(store, "mined")).version == 2
    from curation.reviewdb import ReviewDB
    from pipelines.review import default_db_url

    db = ReviewDB(default_db_url(store))
    payloads = [db.get_item(i + 1)["payload"]["pair"] for i in range(4)]
    assert {p["pair_id"]: p["target_id"] for p in payloads if p["kind"] == "mined"} == {"0123456789abcdef01234567": ids[1]}


def test_a_job_appends_to_a_legacy_table_and_export_carries_target_id(legacy, tmp_path):
    store, _, before = legacy
    result = render_pairs(store, PairsConfig(n=6, seed=0), show_progress=False)
    assert result.status == "committed" and result.extra["pairs"] == 3 and result.extra["already_there"] == 3
    ds = lance.dataset(table_path(store, "pairs"))
    assert ds.schema.names == LEGACY.names + ["target_id"]  # the upgrade adds the column last
    t = ds.to_table(columns=["pair_id", "target_id"])
    assert t.num_rows == 6 and t.column("target_id").null_count == 6
    out = str(tmp_path / "shards")
    exported = export_pairs(store, PairExportConfig(out=out, tables=[table_path(store, "pairs")]), show_progress=False)
    shards = lance.dataset(out).to_table(columns=["id", "source_id", "target_id"])
    assert exported.extra["kept"] == shards.num_rows == 6 and shards.column("target_id").null_count == 6
    assert {r["pair_id"] for r in before} <= set(shards.column("id").to_pylist())


def test_a_table_of_other_columns_is_still_refused(legacy):
    store, _, _ = legacy
    bad = pa.table({"pair_id": ["x"], "source_id": ["y"]})
    lance.write_dataset(bad, table_path(store, "synth"))
    with pytest.raises(ValueError, match="not a pair table"):
        review_pairs(store, PairReviewConfig(pairs=[table_path(store, "synth")]))
    assert lance.dataset(table_path(store, "synth")).version == 1  # nothing was added to it
