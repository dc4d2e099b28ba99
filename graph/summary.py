"""What a dataset's concept tags are about, in words a person reads: the ``curate info`` summary.

Tags are stored as concept ids (``wn:02084071``) because labels change between graph builds
and ids do not; but nobody reads an id. This module counts the tags of a dataset and names each
concept with its English and Chinese labels, looked up in the graph that tagged it (the
``graph_tag`` stage records its graph folder in the dataset's stage fingerprints) or in one the
caller names. Only ``nodes.parquet``'s label columns are read: no networkx, so it stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["TagCount", "read_labels", "tagging_graph", "tag_counts", "tag_summary"]


@dataclass(frozen=True)
class TagCount:
    """One concept of the summary: its id (the stored form), labels, and rows carrying it."""

    id: str
    en: str
    zh: str
    direct: int  # rows whose captions name it
    rows: int  # rows carrying it, inherited from a descendant included


def read_labels(graph: str | Path | None) -> dict[str, tuple[str, str]]:
    """Concept id -> (English, Chinese) label from a graph folder; {} when there is none, so a
    summary without its graph still prints (ids only) instead of failing."""
    nodes = Path(graph) / "nodes.parquet" if graph else None
    if nodes is None or not nodes.is_file():
        return {}
    import pyarrow.parquet as pq

    t = pq.read_table(nodes, columns=["id", "label_en", "label_zh"]).to_pydict()
    return {i: (e or "", z or "") for i, e, z in zip(t["id"], t["label_en"], t["label_zh"])}


def tagging_graph(state: dict[str, Any] | None) -> str | None:
    """The graph folder the ``graph_tag`` stage last ran with, from ``stage_fingerprints.json``."""
    try:
        return (state or {})["graph_tag"]["config"]["graph"] or None
    except (KeyError, TypeError):
        return None


def tag_counts(concepts: pa.ChunkedArray | pa.Array, direct: pa.ChunkedArray | pa.Array) -> tuple[dict[str, int], dict[str, int]]:
    """(direct rows, all rows) per concept. A concept occurs at most once per row, so counting
    occurrences counts rows; done in Arrow, so millions of rows need no Python loop."""
    flat = pc.list_flatten(concepts)
    is_direct = pc.fill_null(pc.list_flatten(direct), False)
    every = _value_counts(flat)
    named = _value_counts(pc.filter(flat, is_direct))
    return named, every


def _value_counts(values) -> dict[str, int]:
    vc = pc.value_counts(values)
    if isinstance(vc, pa.ChunkedArray):
        vc = vc.combine_chunks()
    return {v: n for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()) if v is not None}


def tag_summary(table: pa.Table, labels: dict[str, tuple[str, str]], top: int = 15) -> list[TagCount]:
    """The ``top`` concepts most often named directly (inherited-only ancestors such as "entity"
    would otherwise fill the list), most frequent first, ties by id for a stable print."""
    named, every = tag_counts(table.column("tag_concepts"), table.column("tag_direct"))
    best = sorted(named, key=lambda c: (-named[c], c))[:top]
    return [TagCount(c, *labels.get(c, ("", "")), direct=named[c], rows=every.get(c, named[c])) for c in best]
