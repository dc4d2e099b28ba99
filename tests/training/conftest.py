"""Shared pieces of the training tests: real COCO photos as small images and as training shards.
``tiny_encoders``, ``coco_sample_rows`` and ``one_thread`` are in ``tests/conftest.py`` (the
export/train job tests use them too)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import write_shards


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Every training test runs with one intra-op torch thread (see ``one_thread``)."""
    yield


@pytest.fixture(scope="session")
def coco_small(coco_dir):
    """(images, captions): the first 6 COCO photos at 64x48 and their first human caption."""
    caps = json.loads((coco_dir / "captions_train2017.json").read_text())
    by_image: dict[int, str] = {}
    for a in caps["annotations"]:
        by_image.setdefault(a["image_id"], a["caption"].strip())
    ids = {im["file_name"]: im["id"] for im in caps["images"]}
    paths = sorted((coco_dir / "images").glob("*.jpg"))[:6]
    images = [Image.open(p).convert("RGB").resize((64, 48)) for p in paths]
    return images, [by_image[ids[p.name]] for p in paths]


@pytest.fixture(scope="session")
def coco_shards(tmp_path_factory, coco_sample_rows) -> str:
    """80 COCO photos at 256: 4 fragments, weight 1, five human captions each."""
    return write_shards(coco_sample_rows, tmp_path_factory.mktemp("shards") / "coco-256.lance")


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> str:
    """The demo corpus (``curate demo-data``: 127 real photos, crops, degraded and rendered-text
    images, captions in several kinds and both languages) as 512 px training shards, built here
    without Ray so the tests need no ``make demo``. Export's own exclusions (too small, extreme
    aspect) apply as in the job."""
    import lance

    from democorpus.corpus import build_corpus
    from pipelines.export import ExportConfig, resolve_roles, shard_rows
    from tests.helpers import sample_row, samples_table

    rows = []
    for it in build_corpus(0, ("folder",)).items:
        row = sample_row(it.image, "demo", it.id)
        row["captions"] = [{"text": c["text"], "kind": c.get("kind"), "lang": c.get("lang")} for c in it.captions]
        rows.append(row)
    src = samples_table(rows)
    uri = str(tmp_path_factory.mktemp("demo-shards") / "demo-512.lance")
    cfg = ExportConfig(out=uri, resolution=512)
    table, _excluded = shard_rows(src, cfg, resolve_roles(src.schema, cfg))
    lance.write_dataset(table, uri, max_rows_per_file=40)
    return uri
