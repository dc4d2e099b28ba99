"""Filling a stage's existing columns on only the fragments that need them, in one commit.

Why: rows appended after a stage ran (a second ``curate ingest``) live in new Lance fragments
that have no data file for the stage's columns, so they read as null. Recomputing every row to
fill them costs the whole stage again. Here a worker computes the stage on one such fragment and
writes the values as one Lance data file whose field ids are the dataset's own (the schema already
has the columns); the driver then commits one ``Merge`` whose fragment list is the dataset's, with
the new file added to the computed fragments and every other fragment's metadata untouched.

Which fragments a run computes (``plan_fill``):

- ``new_rows``: the fragment has no data file for some of the stage's columns (appended later).
- ``inputs_changed``: the files holding the stage's input columns are not those the columns were
  computed from (recorded per fragment at each commit: ``input_sigs``), e.g. a caption rewritten
  after ``caption_stats`` ran. A fragment with no record (an older run, a compacted dataset) is
  trusted as it is, like a stage whose config fingerprint is unknown.
- ``full`` (``--overwrite`` or a changed config): every fragment. The old values are replaced in
  the same single commit: their field ids are tombstoned (-2, as Lance's own ``drop_columns``
  does) in the old data files, and a file left with no live field is dropped from the fragment.

Lance's ``Merge`` names the whole fragment list, so a row append that lands between our read and
our commit is a retryable conflict (never silently dropped); the runner then plans again.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curation.stage import Stage, Stats

__all__ = ["FillPlan", "FillWorker", "plan_fill", "input_sigs", "types_match", "commit_fill"]

TOMBSTONE = -2  # Lance's field id for a column dropped from a data file


@dataclass
class FillPlan:
    """Fragments to compute, with the columns each one gets, and why (counts by reason)."""

    mode: str  # "incremental" or "full"
    todo: dict[int, list[str]] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)


def types_match(ds, stage: Stage) -> bool:
    """The dataset stores the stage's columns with the types the stage writes now (else a data
    file written today would not fit the field ids, e.g. a descriptor of another length)."""
    return all(ds.schema.field(f.name).type == f.type for f in stage.output_schema)


def _field_ids(ds, names: list[str]) -> dict[str, set[int]]:
    """Each column's field id and those of its children: a data file lists only the leaf ids of a
    list or struct column (``tag_concepts``' items, ``captions``' struct members), never its own."""

    def walk(field) -> set[int]:
        return {field.id(), *(i for c in field.children() for i in walk(c))}

    return {n: walk(ds.lance_schema.field(n)) for n in names}


def _covered(meta) -> set[int]:
    return {f for df in meta.files for f in df.fields if f >= 0}


def input_sig(meta, input_ids: set[int]) -> str:
    """Which files hold a fragment's input columns: another value means they were rewritten."""
    paths = sorted(df.path for df in meta.files if input_ids & set(df.fields))
    return hashlib.sha1(json.dumps(paths).encode()).hexdigest()[:12]


def _input_ids(ds, stage: Stage) -> set[int]:
    """Field ids of the stage's inputs, never its own outputs (prof_scores reads a watermark score
    it writes when OCR did not): rewriting them is what the stage does, not a change of its inputs."""
    own = set(stage.output_schema.names)
    names = [n for n in (stage.input_columns or ["id"]) if n in ds.schema.names and n not in own] or ["id"]
    return set().union(*_field_ids(ds, names).values())


def input_sigs(ds, stage: Stage) -> dict[str, str]:
    """Every fragment's input signature at ``ds`` (recorded after a commit)."""
    ids = _input_ids(ds, stage)
    return {str(f.fragment_id): input_sig(f.metadata, ids) for f in ds.get_fragments()}


def plan_fill(ds, stage: Stage, recorded: dict[str, str] | None, *, full: bool) -> FillPlan:
    """What a run of ``stage`` over ``ds`` (which has all its columns) must compute."""
    cols = stage.output_schema.names
    if full:
        return FillPlan("full", {f.fragment_id: list(cols) for f in ds.get_fragments()}, Counter(full=len(ds.get_fragments())))
    ids, in_ids, plan = _field_ids(ds, cols), _input_ids(ds, stage), FillPlan("incremental")
    for frag in ds.get_fragments():
        meta = frag.metadata
        lacking = [c for c in cols if not ids[c] & _covered(meta)]
        old = (recorded or {}).get(str(frag.fragment_id))
        if lacking:
            plan.todo[frag.fragment_id] = lacking
            plan.reasons["new_rows"] += 1
        elif old is not None and old != input_sig(meta, in_ids):
            plan.todo[frag.fragment_id] = list(cols)
            plan.reasons["inputs_changed"] += 1
    return plan


class FillWorker:
    """A Ray actor: loads the stage once, then writes the stage's columns of whole fragments as
    new data files (not yet part of any version: the driver commits them all at once)."""

    def __init__(self, store, stage: Stage, read_version: int, progress=None):
        self.store, self.stage, self.progress = store, stage, progress
        self.stage.setup()
        self.dataset = store.open(read_version)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"fragment_id": [], "file": [], "stats": []}
        for fid, cols in zip(batch.column("fragment_id").to_pylist(), batch.column("columns").to_pylist()):
            self.stage.stats = Stats()
            t0 = time.perf_counter()
            self.stage.begin_fragment(int(fid))  # as the runner's merge path: a stage may load a fragment's slice
            data_file = self._write(self.dataset.get_fragment(int(fid)), cols)
            self.stage.stats.seconds = time.perf_counter() - t0
            out["fragment_id"].append(int(fid))
            out["file"].append(json.dumps(_file_json(data_file)))
            out["stats"].append(json.dumps(self.stage.stats.to_dict()))
        return pa.table(out)

    def _write(self, frag, cols: list[str]):
        from lance.file import LanceFileWriter
        from lance.fragment import DataFile

        schema = pa.schema([self.stage.output_schema.field(c) for c in cols])
        path = f"{uuid.uuid4()}.lance"
        opts = self.store.storage_options or None
        writer = LanceFileWriter(f"{self.store.uri}/data/{path}", schema, version=self.dataset.data_storage_version, storage_options=opts)
        for out in self._batches(frag, schema):
            writer.write_batch(out)
        writer.close()
        return DataFile.create(self.dataset, path)

    def _batches(self, frag, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The stage's output for every physical row of ``frag`` (a deleted row gets nulls: a
        data file spans the fragment's physical rows, deleted ones included)."""
        cols = self.stage.input_columns or ["id"]
        nxt = 0
        scan = frag.scanner(columns=cols, with_row_address=True, batch_size=self.stage.batch_size)
        for batch in scan.to_batches():
            if batch.num_rows == 0:
                continue
            offsets = (batch.column("_rowaddr").to_numpy() & 0xFFFFFFFF).tolist()
            out = self.stage.run_batch(batch.drop_columns(["_rowaddr"]))
            out = pa.RecordBatch.from_arrays([out.column(n) for n in schema.names], schema=schema)
            if offsets[-1] + 1 - nxt != batch.num_rows:  # deleted rows before or inside the batch
                idx: list[int | None] = [None] * (offsets[-1] + 1 - nxt)
                for i, off in enumerate(offsets):
                    idx[off - nxt] = i
                out = out.take(pa.array(idx, pa.int64()))
            yield out
            nxt = offsets[-1] + 1
            if self.progress is not None:
                self.progress.add.remote(batch.num_rows)  # fire and forget: never waits on the driver
        if frag.physical_rows > nxt:
            yield _nulls(schema, frag.physical_rows - nxt)


def _nulls(schema: pa.Schema, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.nulls(n, f.type) for f in schema], schema=schema)


def _file_json(df) -> dict[str, Any]:
    return {
        "path": str(df.path),
        "fields": list(df.fields),
        "column_indices": list(df.column_indices),
        "file_major_version": df.file_major_version,
        "file_minor_version": df.file_minor_version,
        "file_size_bytes": df.file_size_bytes,
    }


def _with_file(meta, rec: dict[str, Any]):
    """``meta`` with the computed file added and the fields it holds tombstoned in the older files
    (so each field is read from exactly one file); files left with no live field are dropped."""
    from lance.fragment import DataFile

    new = DataFile(**rec)
    written = set(new.fields)
    files = []
    for df in meta.files:
        df.fields = [TOMBSTONE if f in written else f for f in df.fields]
        if any(f >= 0 for f in df.fields):
            files.append(df)
    meta.files = [*files, new]
    return meta


def commit_fill(store, read_version: int, done: dict[int, dict[str, Any]], properties: dict[str, str]):
    """One ``Merge`` over ``read_version``'s fragments, the computed ones with their new file.
    Raises lance's ``CommitConflictError`` when another job committed in between."""
    from lance import LanceDataset, LanceOperation, Transaction

    ds = store.open(read_version)
    metas = [_with_file(f.metadata, done[f.fragment_id]["file"]) if f.fragment_id in done else f.metadata for f in ds.get_fragments()]
    tx = Transaction(read_version, LanceOperation.Merge(metas, ds.lance_schema), transaction_properties=properties)
    return LanceDataset.commit(store.uri, tx, storage_options=store.storage_options or None)
