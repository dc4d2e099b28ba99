"""SQL over a dataset with DuckDB, which has no half-float type.

The embedding and descriptor columns are stored as float16 (half the bytes of float32 at a
billion rows). DuckDB refuses a whole table whose schema holds one (``Unsupported Internal
Arrow Type e``), even when the query names other columns. ``duckdb_view`` gives DuckDB the same
Lance dataset with half floats announced as float32 and widened batch by batch as they are read,
so DuckDB still pushes its projection and filters down to Lance (only the columns a query names
are read) and never loads the table. ``curate sql`` runs a query on it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from lance import LanceDataset

__all__ = ["duckdb_view", "run_sql", "widen_schema"]


def _widen(t: pa.DataType) -> pa.DataType:
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_widen(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(_widen(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_widen(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _widen(f.type), f.nullable) for f in t])
    return t


def widen_schema(schema: pa.Schema) -> pa.Schema:
    """The schema with every float16 (at any depth) as float32."""
    return pa.schema([pa.field(f.name, _widen(f.type), f.nullable) for f in schema], metadata=schema.metadata)


class _WideScanner:
    """What DuckDB asks of a scanner: ``projected_schema`` and ``to_reader()``."""

    def __init__(self, inner):
        self.inner = inner
        self.projected_schema = widen_schema(inner.projected_schema)

    def to_reader(self) -> pa.RecordBatchReader:
        schema, reader = self.projected_schema, self.inner.to_reader()
        batches = (b if b.schema == schema else b.cast(schema) for b in reader)
        return pa.RecordBatchReader.from_batches(schema, batches)


_BLOBS = (pa.binary(), pa.large_binary())


class _DuckDBView(LanceDataset):
    """A Lance dataset as DuckDB reads it: half floats widened, the encoded image bytes left out
    (a ``select *`` must not pull gigabytes to a terminal; ``lance`` reads them when needed)."""

    @property
    def schema(self) -> pa.Schema:
        full = super().schema
        return widen_schema(pa.schema([f for f in full if f.type not in _BLOBS], metadata=full.metadata))

    def scanner(self, *args, columns=None, **kwargs):
        names = self.schema.names if columns is None else columns  # [] (count(*)) reads no column
        return _WideScanner(super().scanner(*args, columns=names, **kwargs))


def duckdb_view(uri: str, version: int | str | None = None, storage_options: dict | None = None) -> LanceDataset:
    """The dataset at ``uri`` as an object DuckDB can query by variable name::

    samples = duckdb_view("demo/demo.lance")
    duckdb.sql("select error, count(*) from samples group by 1")
    """
    return _DuckDBView(str(uri), version=version, storage_options=storage_options or None)


def run_sql(query: str, uri: str, version: int | str | None = None, storage_options: dict | None = None, con: Any = None) -> pa.Table:
    """``query`` with the dataset as ``samples``; the result as Arrow. Raises ``ValueError`` with
    DuckDB's message (a misspelt column names its candidates)."""
    import duckdb

    con = con or duckdb.connect()
    con.register("samples", duckdb_view(uri, version, storage_options))
    try:
        rel = con.sql(query)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as e:
        raise ValueError(str(e).strip()) from None
