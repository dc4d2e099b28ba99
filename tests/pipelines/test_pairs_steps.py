"""The pair jobs as pipeline steps: a pipeline file renders text pairs and synthesises object pairs
from coco-mini's masks, then exports both as pair shards; the same file run again adds nothing."""

from __future__ import annotations

import shutil

import lance
import yaml

from curation.registry import STEPS


def test_render_synth_export_as_pipeline_steps(ray_session, coco_store, coco_dir, tmp_path):
    from pipelines import load_jobs
    from pipelines.pipeline import run_pipeline

    load_jobs()
    assert {"pairs_render", "pairs_synth", "pairs_mine", "pairs_export"} <= set(STEPS)
    src = tmp_path / "src.lance"
    shutil.copytree(coco_store.uri, src)
    shards = tmp_path / "pair-shards.lance"
    pipeline = {
        "dataset": str(src),
        "steps": [
            {"stage": "pairs_render", "params": {"n": 4, "seed": 1}},
            {"stage": "pairs_synth", "params": {"n": 4, "annotations": str(coco_dir / "instances_train2017.json")}},
            {"stage": "pairs_export", "params": {"out": str(shards), "resolution": 256}},
        ],
    }
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    first = run_pipeline(path, show_progress=False)
    assert [r.status for r in first] == ["committed"] * 3, [(r.name, r.status) for r in first]
    rendered = lance.dataset(str(src / "_curation" / "pairs" / "pairs.lance")).to_table(columns=["kind"]).column("kind").to_pylist()
    synth = lance.dataset(str(src / "_curation" / "pairs" / "synth.lance")).to_table(columns=["kind"]).column("kind").to_pylist()
    assert len(rendered) == 4 and set(rendered) <= {"replace", "remove", "add"}
    assert len(synth) == 4 and set(synth) <= {"recolour", "remove", "move", "resize"}
    assert lance.dataset(str(shards)).count_rows() == 8

    again = run_pipeline(path, show_progress=False)
    assert [r.status for r in again] == ["skipped"] * 3, [(r.name, r.status) for r in again]
    assert lance.dataset(str(src / "_curation" / "pairs" / "pairs.lance")).count_rows() == 4
