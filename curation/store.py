"""The Lance system of record: open/create by path or object-store URI, versions, diffs, reads.

Every job's commit is a new Lance version, so any state can be reproduced (``version=``) and
compared (``diff``). Engines add column groups through ``curation.runner``; this module holds
the few operations that are not per-fragment work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import lance
import pyarrow as pa
import pyarrow.compute as pc

from curation.schema import SAMPLES_SCHEMA, group_of

__all__ = ["Store", "is_remote", "storage_options_from_env"]

_BLOB_TYPES = (pa.binary(), pa.large_binary())


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def storage_options_from_env(uri: str) -> dict[str, str]:
    """Object-store options from the usual AWS variables (plus ``AWS_ENDPOINT`` for S3-compatible
    servers such as MinIO or moto), so the same job runs on ``s3://`` with no code change."""
    if not str(uri).startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, str] = {}
    for env, key in [
        ("AWS_ENDPOINT", "aws_endpoint"),
        ("AWS_ENDPOINT_URL", "aws_endpoint"),
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_REGION", "aws_region"),
        ("AWS_DEFAULT_REGION", "aws_region"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ]:
        if os.environ.get(env) and key not in opts:
            opts[key] = os.environ[env]
    if opts.get("aws_endpoint", "").startswith("http://"):
        opts["allow_http"] = "true"
    return opts


@dataclass
class Store:
    """A handle on one samples dataset. Cheap and picklable: Ray workers get a copy."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uri = str(self.uri)
        if not is_remote(self.uri):
            self.uri = str(Path(self.uri).expanduser().resolve())
        if not self.storage_options:
            self.storage_options = storage_options_from_env(self.uri)

    # --- open / create -----------------------------------------------------------------------
    def exists(self) -> bool:
        try:
            self.open()
            return True
        except (ValueError, FileNotFoundError, OSError):
            return False

    def open(self, version: int | str | None = None) -> lance.LanceDataset:
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options or None)

    def create(self, data: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema = SAMPLES_SCHEMA) -> lance.LanceDataset:
        """Create (or overwrite) the dataset with the given rows."""
        if isinstance(data, pa.Table):
            data = data.cast(schema)
        return lance.write_dataset(data, self.uri, schema=schema, mode="overwrite", storage_options=self.storage_options or None)

    @property
    def state_dir(self) -> Path:
        """Where jobs keep checkpoints, stats, reports and indexes for this dataset.

        Local datasets keep it inside the dataset folder (``_curation/``, ignored by Lance) so it
        travels with the data; remote ones use a local cache keyed by URI (``CURATE_STATE_DIR``)."""
        if not is_remote(self.uri):
            d = Path(self.uri) / "_curation"
        else:
            root = Path(os.environ.get("CURATE_STATE_DIR", Path.home() / ".cache" / "curation"))
            d = root / hashlib.sha1(self.uri.encode()).hexdigest()[:16]
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- inspect --------------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        """All versions, oldest first, with their commit message (the job that made them)."""
        out = []
        for v in self.open().versions():
            meta = v.get("metadata") or {}
            out.append({"version": v["version"], "timestamp": v["timestamp"], "metadata": dict(meta)})
        return out

    def columns_by_group(self, version: int | None = None) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in self.open(version).schema.names:
            groups.setdefault(group_of(name), []).append(name)
        return groups

    def error_counts(self, version: int | None = None) -> dict[str, int]:
        """Rows with an error, by reason (the text before the first colon)."""
        ds = self.open(version)
        t = ds.to_table(columns=["error"], filter="error IS NOT NULL")
        counts: dict[str, int] = {}
        for e in t.column("error").to_pylist():
            reason = e.split(":", 1)[0]
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_arrow(self, columns: list[str] | None = None, filter: str | None = None, version: int | None = None) -> pa.Table:
        return self.open(version).to_table(columns=columns, filter=filter)

    def light_columns(self, version: int | None = None) -> list[str]:
        """All columns except encoded image bytes: what a person means by 'show me the table'."""
        schema = self.open(version).schema
        return [f.name for f in schema if f.type not in _BLOB_TYPES]

    def duckdb(self, con: Any = None, name: str = "samples", columns: list[str] | None = None):
        """Register the dataset (without image bytes by default) as a DuckDB view for SQL."""
        import duckdb

        con = con or duckdb.connect()
        ds = self.open()
        cols = columns or self.light_columns()
        con.register(name, ds.scanner(columns=cols).to_reader().read_all())
        return con

    def diff(self, v1: int, v2: int) -> dict[str, Any]:
        """What changed between two versions: columns, rows by id, and per-column value changes."""
        a, b = self.open(v1), self.open(v2)
        ca, cb = set(a.schema.names), set(b.schema.names)
        ids_a = a.to_table(columns=["id"]).column("id")
        ids_b = b.to_table(columns=["id"]).column("id")
        added = pc.sum(pc.invert(pc.is_in(ids_b, ids_a))).as_py() or 0
        removed = pc.sum(pc.invert(pc.is_in(ids_a, ids_b))).as_py() or 0
        common = sorted(
            c for c in (ca & cb) - {"id"} if b.schema.field(c).type not in _BLOB_TYPES
        )
        changed: dict[str, int] = {}
        if common:
            ta = a.to_table(columns=["id", *common])
            tb = b.to_table(columns=["id", *common])
            # join row positions on id (Arrow joins cannot carry nested columns), then compare by take
            pos = pa.table({"id": ta.column("id"), "_ia": pa.array(range(ta.num_rows))}).join(
                pa.table({"id": tb.column("id"), "_ib": pa.array(range(tb.num_rows))}), "id")
            ia, ib = pos.column("_ia"), pos.column("_ib")
            for c in common:
                x, y = ta.column(c).take(ia), tb.column(c).take(ib)
                try:
                    neq = pc.not_equal(x, y)
                    n = (pc.sum(pc.fill_null(neq, False)).as_py() or 0) + (
                        pc.sum(pc.xor(pc.is_null(x), pc.is_null(y))).as_py() or 0
                    )
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: compare as Python
                    n = sum(1 for p, q in zip(x.to_pylist(), y.to_pylist()) if p != q)
                if n:
                    changed[c] = int(n)
        return {
            "from": v1,
            "to": v2,
            "rows": [a.count_rows(), b.count_rows()],
            "rows_added": int(added),
            "rows_removed": int(removed),
            "columns_added": sorted(cb - ca),
            "columns_removed": sorted(ca - cb),
            "values_changed": changed,
        }

    def write_json(self, relpath: str, payload: Any) -> Path:
        p = self.state_dir / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(p)  # atomic: a killed job never leaves half a checkpoint
        return p
