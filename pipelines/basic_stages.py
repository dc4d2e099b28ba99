"""Cheap stages every dataset gets after ingest: exact-duplicate flags and caption statistics."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.registry import register_stage
from curation.schema import CAPTION_STATS, EXACT_DUP
from curation.stage import Resources, Stage
from curation.text import detect_lang

__all__ = ["ExactDupStage", "CaptionStatsStage"]


@register_stage
class ExactDupStage(Stage):
    """Flag rows whose image bytes equal an earlier row's (same SHA-256); the first row stays unflagged.

    Needs a global view (which row came first), so ``prepare`` reads the small (id, sha256) table
    on the driver once; workers only look ids up. Duplicates are flagged, never dropped.
    """

    name = "exact_dup"
    input_columns = ["id", "image_sha256"]
    output_schema = EXACT_DUP.schema
    batch_size = 4096

    def prepare(self, dataset) -> None:
        t = dataset.to_table(columns=["id", "image_sha256"], with_row_id=True)
        first: dict[str, str] = {}
        self.dup_of: dict[str, str] = {}
        order = pc.sort_indices(t.column("_rowid"))
        ids = t.column("id").take(order).to_pylist()
        shas = t.column("image_sha256").take(order).to_pylist()
        for i, sha in zip(ids, shas):
            if sha is None:
                continue
            if sha in first:
                self.dup_of[i] = first[sha]
            else:
                first[sha] = i

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
