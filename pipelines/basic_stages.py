"""Cheap stages every dataset gets after ingest: exact-duplicate flags and caption statistics."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curation.registry import register_stage
from curation.schema import CAPTION_STATS, EXACT_DUP
from curation.stage import Stage
from curation.text import detect_lang

__all__ = ["ExactDupStage", "CaptionStatsStage"]


def first_of_each_hash(t: pa.Table) -> dict[str, str]:
    """{id: id of the first row (lowest ``_rowid``) with the same ``image_sha256``} for later rows."""
    if t.num_rows == 0:
        return {}
    t = t.filter(pc.is_valid(t.column("image_sha256"))).sort_by("_rowid")
    first = t.group_by("image_sha256", use_threads=False).aggregate([("id", "first")])  # ordered
    j = t.join(first, "image_sha256")
    dups = j.filter(pc.not_equal(j.column("id"), j.column("id_first")))
    return dict(zip(dups.column("id").to_pylist(), dups.column("id_first").to_pylist()))


@register_stage
class ExactDupStage(Stage):
    """Flag rows whose image bytes equal an earlier row's (same SHA-256); the first row stays unflagged.

    Needs a global view (which row came first), so ``prepare`` finds duplicates on the driver with
    Arrow (sort by row address, first id per hash, join) — no per-row Python, and only the
    duplicates' (id -> first id) map travels to workers. Large datasets are scanned in hash-prefix
    partitions (``LIKE '3%'``), so peak memory is one partition's (id, sha256), not the table's.
    Duplicates are flagged, never dropped.
    """

    name = "exact_dup"
    input_columns = ["id", "image_sha256"]
    output_schema = EXACT_DUP.schema
    batch_size = 4096
    rows_per_partition: ClassVar[int] = 20_000_000

    def prepare(self, dataset) -> None:
        n = dataset.count_rows()
        parts = 1
        while n / parts > self.rows_per_partition and parts < 4096:
            parts *= 16
        width = len(f"{parts - 1:x}") if parts > 1 else 0
        prefixes = [f"{i:0{width}x}" for i in range(parts)] if parts > 1 else [None]
        self.dup_of: dict[str, str] = {}
        for prefix in prefixes:
            flt = f"image_sha256 LIKE '{prefix}%'" if prefix else "image_sha256 IS NOT NULL"
            t = dataset.to_table(columns=["id", "image_sha256"], with_row_id=True, filter=flt)
            self.dup_of.update(first_of_each_hash(t))

    num_cpus = 0.5

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        out = [self.dup_of.get(i) for i in batch.column("id").to_pylist()]
        self.stats.count("exact_duplicates", sum(x is not None for x in out))
        return {"exact_dup_of": pa.array(out, pa.string())}


@register_stage
class CaptionStatsStage(Stage):
    """Number of captions, length and language of the longest one."""

    name = "caption_stats"
    input_columns = ["captions"]
    output_schema = CAPTION_STATS.schema
    batch_size = 4096

    num_cpus = 0.5

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        counts, chars, langs = [], [], []
        for caps in batch.column("captions").to_pylist():
            caps = caps or []
            longest = max((c["text"] or "" for c in caps), key=len, default="")
            counts.append(len(caps))
            chars.append(len(longest))
            langs.append(detect_lang(longest) if longest else None)
            if not caps:
                self.stats.count("no_caption")
        return {
            "caption_count": pa.array(counts, pa.int32()),
            "caption_chars": pa.array(chars, pa.int32()),
            "caption_lang": pa.array(langs, pa.string()),
        }
