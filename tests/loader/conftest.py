"""Training shards of the 80 real COCO photos, written without Ray (export's pure row function)."""

from __future__ import annotations

import lance
import pytest

from pipelines.export import ExportConfig, resolve_roles, shard_rows
from tests.helpers import coco_rows, samples_table


def write_shards(rows: list[dict], uri, resolution: int = 256, rows_per_file: int = 20) -> str:
    """Samples-table rows -> a training shard dataset at ``uri`` (several fragments)."""
    src = samples_table(rows)
    cfg = ExportConfig(out=str(uri), resolution=resolution)
    table, excluded = shard_rows(src, cfg, resolve_roles(src.schema, cfg))
    assert not excluded, excluded
    lance.write_dataset(table, str(uri), max_rows_per_file=rows_per_file)
    return str(uri)


@pytest.fixture(scope="session")
def coco_sample_rows(coco_dir) -> list[dict]:
    return coco_rows(coco_dir)


@pytest.fixture(scope="session")
def coco_shards(tmp_path_factory, coco_sample_rows) -> str:
    """80 COCO photos at 256: 4 fragments, weight 1, five human captions each."""
    return write_shards(coco_sample_rows, tmp_path_factory.mktemp("shards") / "coco-256.lance")
