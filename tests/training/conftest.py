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
