"""`review mine` at scale (real Lance + Ray): the driver reads no rows; every column is read and
judged fragment by fragment on Ray workers (``FragmentBlocks``), the driver merges the signals'
summaries and each stratum's hardest rows, and the queue is the one mining the whole table in
memory gives."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.store import Store
from engines.active.mining import MineConfig, mine, mine_blocks
from engines.active.rules import DEFAULT_RULES
from pipelines.review import FragmentBlocks, ReviewMineConfig, _mine_columns, mine_queue
from tests.engines.active.test_active import _table


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_session) -> Store:
    """The mining engine's 400-row test table (embeddings with look-alikes and a borderline pair,
    OCR text, two concepts) as a dataset of five fragments."""
    t = _table()
    t = t.set_column(
        t.schema.get_field_index("prof_clip_image"), "prof_clip_image", t.column("prof_clip_image").cast(pa.list_(pa.float32(), 16))
    )
    uri = str(tmp_path_factory.mktemp("mine") / "ds.lance")
    lance.write_dataset(t, uri, max_rows_per_file=90)
    assert len(lance.dataset(uri).get_fragments()) == 5
    return Store(uri)


def test_fragment_blocks_give_the_in_memory_queue(store):
    ds = store.open()
    cols = sorted(_mine_columns(ds.schema))
    table = ds.to_table(columns=cols)
    table = table.append_column("_pos", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    reviewed = {f"row{i:04d}": ("keep" if i % 3 else "drop") for i in range(20, 60)}
    kw = {"flagged": ["row0200", "row0005"], "reviewed": reviewed}
    cfg = MineConfig(n=120, min_hardness=0.0, like_flagged_k=5, neighbours=3)
    whole = mine(table, DEFAULT_RULES, cfg, **kw)
    split = mine_blocks(FragmentBlocks(store, ds.version, cols, DEFAULT_RULES, show_progress=False), DEFAULT_RULES, cfg, columns=cols, **kw)
    assert split == whole
    assert any("looks like flagged failure row0200" in w for it in whole[0] for w in it["payload"]["hard_reasons"])


def test_the_driver_reads_no_rows(store, tmp_path, monkeypatch):
    from lance.dataset import LanceDataset
    from lance.fragment import LanceFragment

    reads: list[set] = []

    def spy(cls, name):
        real = getattr(cls, name)

        def read(self, *a, **k):
            cols = k.get("columns", a[0] if a else None)
            reads.append(set(cols.values() if isinstance(cols, dict) else cols or ["*"]))
            return real(self, *a, **k)

        monkeypatch.setattr(cls, name, read)

    for cls, name in ((LanceDataset, "to_table"), (LanceDataset, "take"), (LanceFragment, "to_table"), (LanceFragment, "take")):
        spy(cls, name)
    # the job as it runs on a dataset above ``local_rows`` (below, one process reads everything: small data)
    s = mine_queue(store, ReviewMineConfig(db=str(tmp_path / "q.sqlite"), n=50, local_rows=0), show_progress=False)
    assert s["queued"] == 50 and s["criteria"]["ocr_missing"] == 8 and s["criteria"]["borderline_duplicate"] >= 2
    assert reads == [], reads  # the workers read every column; the driver holds summaries, not rows (not even their ids)


def test_rows_deleted_inside_fragments_keep_positions_aligned(store, tmp_path):
    import shutil

    uri = tmp_path / "copy.lance"
    shutil.copytree(store.uri, uri)
    lance.dataset(str(uri)).delete("id IN ('row0001', 'row0095', 'row0096', 'row0399')")
    copy = Store(str(uri))
    ds = copy.open()
    cols = sorted(_mine_columns(ds.schema))
    table = ds.to_table(columns=cols)
    table = table.append_column("_pos", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    cfg = MineConfig(n=80, min_hardness=0.0, like_flagged_k=5, neighbours=3)
    kw = {"flagged": ["row0200"], "reviewed": {f"row{i:04d}": "keep" for i in range(100, 110)}}
    whole = mine(table, DEFAULT_RULES, cfg, **kw)
    blocks = FragmentBlocks(copy, ds.version, cols, DEFAULT_RULES, show_progress=False)
    assert table.num_rows == 396 and mine_blocks(blocks, DEFAULT_RULES, cfg, columns=cols, **kw) == whole


def test_small_data_is_mined_in_this_process_into_the_same_queue(store, tmp_path, monkeypatch):
    """Below ``local_rows`` the same fragment calls run here, one after another: no Ray task (the
    runner is broken for the local run) and the queue the Ray tasks give, item for item."""
    import json
    import sqlite3

    import curation.runner as runner

    def queue(local_rows: int, name: str) -> tuple[dict, list]:
        cfg = ReviewMineConfig(db=str(tmp_path / name), n=60, min_hardness=0.0, local_rows=local_rows)
        s = mine_queue(store, cfg, show_progress=False)
        with sqlite3.connect(cfg.db) as con:
            rows = con.execute("SELECT row_id, priority, payload FROM items ORDER BY row_id").fetchall()
        items = [(r, p, {k: v for k, v in json.loads(d).items() if k != "version"}) for r, p, d in rows]
        return {k: v for k, v in s.items() if k not in ("seconds", "batch", "db")}, items

    on_ray = queue(0, "ray.sqlite")

    def no_ray(*a, **k):
        raise AssertionError("a Ray phase in a local run")

    monkeypatch.setattr(runner, "execute_units", no_ray)
    here = queue(400, "here.sqlite")
    assert here == on_ray and len(here[1]) == 60
