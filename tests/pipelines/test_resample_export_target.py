"""Resampling gives copies only to rows export keeps, so the trained set is the target size
(audit: the demo's export kept 47 rows of weight 49.59 for a target of 52, having dropped rows
too small, without a caption or flagged by the nsfw rule after they were given copies)."""

from __future__ import annotations

import io
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

TOO_SMALL, NO_CAPTION, NSFW, DUPLICATE = 3, 7, 9, 12
TARGET = 120
WIDE = {"COLUMNS": "250"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, coco_sample_rows, coco_tagger, ray_session):
    """80 COCO rows: one image 40 px wide, one row without captions, one the nsfw score flags,
    one duplicate dedup drops; with the tag columns (tagged here: this test is about what
    resampling and export do with them)."""
    from curation.schema import CONCEPT_TAGS
    from curation.store import Store
    from tests.helpers import sample_row, samples_table

    rows = [dict(r) for r in coco_sample_rows]
    small = io.BytesIO()
    Image.open(io.BytesIO(rows[TOO_SMALL]["image"])).convert("RGB").resize((40, 30)).save(small, "JPEG")
    caps = [c["text"] for c in rows[TOO_SMALL]["captions"]]
    rows[TOO_SMALL] = sample_row(small.getvalue(), rows[TOO_SMALL]["source"], rows[TOO_SMALL]["source_key"], caps)
    rows[NO_CAPTION]["captions"] = []
    t = samples_table(rows)
    t = t.append_column(pa.field("prof_nsfw", pa.float32()), pa.array([0.9 if i == NSFW else 0.05 for i in range(len(rows))], pa.float32()))
    t = t.append_column(pa.field("dup_keep", pa.bool_()), pa.array([i != DUPLICATE for i in range(len(rows))]))
    tags = coco_tagger.tag_rows([[c["text"] for c in r["captions"]] for r in rows])
    for f in CONCEPT_TAGS.schema:
        t = t.append_column(f, pa.array(tags[f.name]).cast(f.type))
    uri = tmp_path_factory.mktemp("rsx") / "coco.lance"
    lance.write_dataset(t, str(uri), max_rows_per_file=20)
    return Store(str(uri))


def test_export_drops_are_left_out_of_the_resampling(store):
    from pipelines.export import default_exclusions

    why = default_exclusions(lance.dataset(store.uri))
    assert why[TOO_SMALL] == "too_small" and why[NO_CAPTION] == "no_caption" and why[NSFW] == "rule:nsfw"
    assert why[DUPLICATE] == "near_duplicate" and sum(w is not None for w in why) == 4


def test_exported_rows_carry_exactly_the_target_copies(store, coco_graph_dir, tmp_path):
    import json

    from cli.main import app
    from curation.config import RunContext
    from pipelines.graph import ResampleStepConfig, run_resample

    cfg = ResampleStepConfig(graph=str(coco_graph_dir), target_size=TARGET, max_upsample=4)
    res = run_resample(RunContext(store=store, overwrite=True, show_progress=False), cfg)[-1]
    src = store.to_arrow(columns=["id", "rs_copies", "rs_weight"])
    copies = dict(zip(src.column("id").to_pylist(), src.column("rs_copies").to_pylist()))
    weight = np.asarray(src.column("rs_weight").to_pylist())
    bad = [TOO_SMALL, NO_CAPTION, NSFW, DUPLICATE]
    assert not weight[bad].any() and sum(copies.values()) == TARGET
    summary = json.loads((Path(res.extra["manifest"]).parent / "summary.json").read_text())
    assert summary["rows"] == {"used": 76, "left_out": {"duplicate": 1, "no_caption": 1, "rule:nsfw": 1, "too_small": 1}}

    out = tmp_path / "shards"
    r = CliRunner().invoke(app, ["export", "-d", store.uri, "--out", str(out)], env=WIDE)
    text = " ".join(r.output.split())
    assert r.exit_code == 0, text[-1500:]
    shard = lance.dataset(str(out)).to_table(columns=["id", "weight"])
    kept = shard.column("id").to_pylist()
    assert sum(copies[i] for i in kept) == TARGET  # the trained set is the target size
    assert abs(sum(shard.column("weight").to_pylist()) - TARGET) < 1e-6
    # the console's last word agrees with the report: the rows kept after the image checks
    assert f"export: {len(kept)} of 80 rows kept, {80 - len(kept)} excluded" in text, text[-1500:]
    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    assert manifest["rows"] == len(kept) == 76
    # rows resampling gave 0 for a worker's check are reported under that check, not as zero_weight
    ids = src.column("id").to_pylist()
    excluded = {r["id"]: r["reason"] for r in pq.read_table(out / "_curation" / "export" / "excluded.parquet").to_pylist()}
    assert excluded == {
        ids[TOO_SMALL]: "too_small",
        ids[NO_CAPTION]: "no_caption",
        ids[NSFW]: "rule:nsfw",
        ids[DUPLICATE]: "near_duplicate",
    }
