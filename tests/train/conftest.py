"""Shared pieces of the training tests: real COCO photos as small images, tiny encoders."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread is several times faster than two
    threads fighting other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
def tiny_encoders():
    from training.encoders import Encoders

    return Encoders.tiny(cap_dim=32, seed=0)
