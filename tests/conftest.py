"""Shared fixtures: one Ray instance per test session, real small data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import curation  # noqa: F401  (sets Ray auth/env defaults before anything imports ray)

ROOT = Path(__file__).resolve().parents[1]
COCO = (ROOT / ".." / "shared" / "data" / "coco-mini").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session (embedded, loopback, small object store)."""
    import ray

    from curation.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    """80 real COCO photos with 5 human captions each (../shared/data/coco-mini)."""
    if not (COCO / "images").is_dir():
        pytest.fail(f"coco-mini not found at {COCO}; it lives in ../shared/data next to the checkout")
    return COCO


@pytest.fixture(scope="session")
def coco_store(tmp_path_factory, coco_dir):
    """A Lance samples dataset of the 80 COCO photos (4 fragments of 20). Treat as read-only:
    copy it (``shutil.copytree``) before adding columns in a test."""
    from curation.store import Store
    from tests.helpers import coco_rows, samples_table

    import lance

    uri = tmp_path_factory.mktemp("coco") / "coco.lance"
    lance.write_dataset(samples_table(coco_rows(coco_dir)), str(uri), max_rows_per_file=20)
    return Store(str(uri))


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium: no browser download at test time


@pytest.fixture
def browser():
    """Headless Chromium through Playwright, for the UI tests."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()

