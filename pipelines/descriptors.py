"""Vector jobs' shared parts: the ``vec_visual`` descriptor stage and reading vectors by fragment.

- ``vec_visual`` (stage): training-free descriptors per image, for near-duplicate search.
- ``default_column``: the embedding column the vector jobs use when none is named.

Heavy imports (faiss, cv2, lance, ray) happen inside functions: the CLI imports this module.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
from pydantic import Field
from rich.console import Console

from curation.registry import register_stage
from curation.schema import VEC_VISUAL
from curation.stage import Stage, StageConfig

console = Console(stderr=True)
log = logging.getLogger(__name__)


class VisualConfig(StageConfig):
    batch_size: int = Field(64, ge=1)


@register_stage
class VisualStage(Stage):
    """Training-free image descriptors (global + 10 regions + the content box) for near-duplicate search."""

    name = "vec_visual"
    config_model = VisualConfig
    input_columns = ["image", "image_uri"]
    output_schema = VEC_VISUAL.schema
    batch_size = 64

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.vector.descriptor import visual_columns

        out = visual_columns(batch.column("image").to_pylist(), batch.column("image_uri").to_pylist())
        for e in out["vec_error"]:
            if e:
                self.stats.count("error_" + e.split(":", 1)[0])
        return out


def ensure_visual(store, show_progress: bool = True, *, dry_run: bool = False) -> None:
    """Compute the descriptor columns (resumable stage) where rows lack them: all rows the first
    time, the rows appended since on later runs (else dedup would see them as ``null_vector``), and
    all again when they were made by an older descriptor (another length: 252 before the mirror-
    and rotation-aware one; 10 regions before the content box), whose vectors the dedup job could
    not compare with its queries.
    ``dry_run``: a dry run commits nothing, so missing or stale descriptors are an error that
    says how to make them."""
    from curation.runner import run_stage
    from curation.schema import VEC_DESC_DIM, VEC_REGIONS

    ds = store.open()
    schema = ds.schema
    stale = "vec_desc" in schema.names and (
        getattr(schema.field("vec_desc").type, "list_size", None) != VEC_DESC_DIM
        or "vec_regions" not in schema.names
        or getattr(schema.field("vec_regions").type, "list_size", None) != VEC_DESC_DIM * VEC_REGIONS
    )
    lacking = 0 if "vec_desc" not in schema.names or stale else _rows_lacking(ds, VisualStage())
    if dry_run and ("vec_desc" not in schema.names or stale or lacking):
        _dry_run_error(store, stale, lacking)
    if "vec_desc" not in schema.names:
        console.print("vec_desc missing: computing image descriptors (stage vec_visual)")
        run_stage(store, VisualStage(), show_progress=show_progress)
    elif stale:
        console.print(
            f"vec_desc was made by an older descriptor ({schema.field('vec_desc').type}, "
            f"{_regions_of(schema)} regions); "
            f"recomputing it ({VEC_DESC_DIM}-d, mirror- and rotation-aware, {VEC_REGIONS} regions with the content box)"
        )
        run_stage(store, VisualStage(), overwrite=True, show_progress=show_progress)
    elif lacking:
        console.print(f"vec_desc missing on {lacking} rows added since it was computed: computing them (stage vec_visual)")
        run_stage(store, VisualStage(), show_progress=show_progress)


def _regions_of(schema) -> int | str:
    if "vec_regions" not in schema.names:
        return "no"
    return (getattr(schema.field("vec_regions").type, "list_size", 0) or 0) // max(1, schema.field("vec_desc").type.list_size or 1)


def _rows_lacking(ds, stage) -> int:
    """Rows in fragments that have no data for some of ``stage``'s columns (appended since)."""
    from curation.incremental import plan_fill

    return sum(ds.get_fragment(fid).count_rows() for fid in plan_fill(ds, stage, None, full=False).todo)


def _dry_run_error(store, stale: bool, lacking: int) -> None:
    from engines.vector.index import VectorError

    what = "from an older version" if stale else f"missing on {lacking} rows added since" if lacking else "not computed yet"
    raise VectorError(
        f"a dry run commits nothing, but the image descriptors (vec_desc) are {what} and computing them "
        f"commits a version: run `curate stage vec_visual --dataset {store.uri}{' --overwrite' if stale else ''}` first, then the dry run"
    )


def default_column(store) -> str:
    names = store.open().schema.names
    return "prof_clip_image" if "prof_clip_image" in names else "vec_desc"


def fragment_sig(frag, field_ids: set[int]) -> str:
    m = frag.metadata
    return json.dumps([m.physical_rows, str(m.deletion_file), sorted(df.path for df in m.files if field_ids & set(df.fields))])


def read_vectors(ds, fragment_ids: list[int], column: str, dim: int | None):
    from engines.vector.index import to_matrix

    t = pa.concat_tables([ds.get_fragment(f).to_table(columns=["id", column]) for f in fragment_ids])
    x, null = to_matrix(t.column(column), dim)
    return t.column("id").to_pylist(), x, null


def iter_vectors(ds, fragment_ids: list[int], column: str, dim: int | None, batch_rows: int = 65_536):
    """``read_vectors`` a batch at a time, in the same row order: (ids, vectors, null mask) per
    batch, so a worker holds one batch's vectors, not its whole unit's."""
    from engines.vector.index import to_matrix

    for f in fragment_ids:
        for b in ds.get_fragment(f).to_batches(columns=["id", column], batch_size=batch_rows):
            x, null = to_matrix(pa.chunked_array([b.column(1)]), dim)
            yield b.column(0).to_pylist(), x, null


def hash_bytes(b: bytes) -> str:
    import hashlib

    return hashlib.sha1(b).hexdigest()[:12]


def fragment_units(frags: list, rows_per_shard: int, label_start: int) -> tuple[list[dict], int]:
    """Consecutive fragments up to ``rows_per_shard`` rows, each with its first label; and the
    label after the last row (labels are row positions in fragment order)."""
    units, cur, cur_rows, start = [], [], 0, label_start
    for f in frags:
        n = f.count_rows()
        if cur and cur_rows + n > rows_per_shard:
            units.append({"unit": len(units), "fragments": cur, "label_start": start, "rows": cur_rows})
            start += cur_rows
            cur, cur_rows = [], 0
        cur.append(f.fragment_id)
        cur_rows += n
    if cur:
        units.append({"unit": len(units), "fragments": cur, "label_start": start, "rows": cur_rows})
    return units, start + cur_rows
