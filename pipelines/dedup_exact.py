"""The dedup job's exact duplicates (the same SHA-256) on Ray workers: the driver never holds the hashes.

Why: the hashes are the largest per-row strings the job reads (64 characters), and finding equal
ones in one process (``engines.vector.dedup.exact_pairs``, a hash table over every row) took
the driver ~420 bytes a row at 300k rows, the largest part of its growth with the dataset.

Two passes, a hash partition:

1. per unit of fragments (``NearJob.units``), a worker reads the unit's ``image_sha256``, orders
   (position, hash) by bucket (the hash's first 4 hex digits: SHA-256 is uniform, so buckets
   are even) and writes them as one Arrow IPC file in the job folder, with each bucket's offset
   in a small array file beside it;
2. per range of buckets, a worker maps every unit's file, takes its range's slice of each (rows
   with the same hash are in the same bucket, so all copies of a hash meet in one range) and
   finds the star edges to the first row with those bytes, as the in-memory path does.

Pass 2 opens every unit file once per range: units x ranges opens. With one range per unit that
is quadratic in the rows (4 x 10^8 opens at 1B rows in 50k-row units), so the ranges are sized by
rows instead (``ROWS_PER_RANGE``, ~160 MB of (position, hash) rows each): 500 ranges and 10^7
opens at 1B, never fewer than ``MIN_RANGES`` (parallel work at small sizes) nor more than units.

Both passes are checkpointed (the unit files, then each range's pairs as JSON): a killed run,
re-run, does the missing units only.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["BUCKETS", "ROWS_PER_RANGE", "bucket_ranges", "exact_pairs_on_ray", "hash_buckets"]

BUCKETS = 1 << 16
"""Hash buckets: the first 4 hex digits of a SHA-256."""
ROWS_PER_RANGE = 2_000_000
"""Rows a bucket range of pass 2 aims at (module docstring: why the ranges are sized by rows)."""
MIN_RANGES = 8
_HEX = frozenset("0123456789abcdefABCDEF")


def hash_buckets(sha: pa.Array) -> np.ndarray:
    """The bucket (0..BUCKETS-1) of each hash: its first 4 hex digits; a value that is not hex
    (a hand-made column) gets a stable CRC of them instead, so equal values still share a bucket."""
    prefix = pc.dictionary_encode(pc.utf8_slice_codeunits(sha.fill_null(""), 0, 4))
    values = prefix.dictionary.to_pylist()
    table = np.array([int(v, 16) if len(v) == 4 and set(v) <= _HEX else zlib.crc32(v.encode()) % BUCKETS for v in values], np.int64)
    return table[prefix.indices.to_numpy(zero_copy_only=False)]


class _PartitionWorker:
    """Ray actor: a unit's (position, hash) rows ordered by bucket, written as an IPC file."""

    def __init__(self, store, version: int, folder: str):
        self.ds, self.folder = store.open(version), Path(folder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"unit": [], "rows": []}
        for unit in batch.to_pylist():
            t = pa.concat_tables([self.ds.get_fragment(f).to_table(columns=["image_sha256"]) for f in unit["fragments"]])
            sha = t.column(0).combine_chunks()
            keep = np.flatnonzero(sha.is_valid().to_numpy(zero_copy_only=False))  # no hash: not an exact copy of anything
            sha = sha.take(pa.array(keep))
            b = hash_buckets(sha)
            order = np.argsort(b, kind="stable")  # positions stay ascending within a bucket
            offsets = np.searchsorted(b[order], np.arange(BUCKETS + 1))
            part = pa.table({"pos": unit["label_start"] + keep[order], "sha": sha.take(pa.array(order))})
            p = self.folder / f"unit-{unit['unit']}.arrow"
            np.save(self.folder / f"unit-{unit['unit']}.offsets.npy", offsets)  # mapped by pass 2: two values read
            with pa.OSFile(str(p.with_suffix(".tmp")), "wb") as f, pa.ipc.new_file(f, part.schema) as w:
                w.write_table(part)
            p.with_suffix(".tmp").replace(p)  # last: the file's existence is the unit's checkpoint
            out["unit"].append(unit["unit"])
            out["rows"].append(len(keep))
        return pa.table(out)


class _ExactWorker:
    """Ray actor: the exact pairs of a range of buckets, from every unit file's slice of it."""

    def __init__(self, folder: str, units: list[int]):
        self.folder, self.units = Path(folder), units

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.dedup import exact_pairs

        out: dict[str, list] = {"unit": [], "i": [], "j": []}
        for r in batch.to_pylist():
            parts = []
            for u in self.units:  # in unit order: positions ascending within each hash's rows
                t = pa.ipc.open_file(pa.memory_map(str(self.folder / f"unit-{u}.arrow"))).read_all()
                off = np.load(self.folder / f"unit-{u}.offsets.npy", mmap_mode="r")
                lo, hi = int(off[r["lo"]]), int(off[r["hi"]])
                parts.append(t.slice(lo, hi - lo))
            t = pa.concat_tables(parts)
            pos = t.column("pos").to_numpy()
            p = exact_pairs(t.column("sha"))
            out["unit"].append(r["unit"])
            out["i"].append(pos[p.i].tolist())
            out["j"].append(pos[p.j].tolist())
        return pa.table(out)


def exact_pairs_on_ray(job, show_progress: bool = True):
    """Exact pairs (first row, later row) of the job's dataset as two position arrays, found on
    Ray workers (module docstring); resumable through ``job``'s folder."""
    from curation.runner import execute_units

    done = job.done("exact")
    ranges = bucket_ranges(len(job.units), job.n)
    if len(done) < len(ranges):
        folder = job.folder / "exact-buckets"  # the checkpoints of the ranges go to "exact"
        folder.mkdir(exist_ok=True)
        todo = [u for u in job.units if not (folder / f"unit-{u['unit']}.arrow").exists()]
        if todo:
            execute_units(
                todo,
                _PartitionWorker,
                {"store": job.store, "version": job.ds.version, "folder": str(folder)},
                ray_options=job.ray_options("index"),
                on_result=lambda row: None,  # the file is the checkpoint
                description="dedup: exact copies, hashes by bucket (units)",
                show_progress=show_progress,
            )

        def on_result(row: dict) -> None:
            done[row["unit"]] = {"i": row["i"], "j": row["j"]}
            job.save("exact", row["unit"], done[row["unit"]])

        execute_units(
            [r for r in ranges if r["unit"] not in done],
            _ExactWorker,
            {"folder": str(folder), "units": [u["unit"] for u in job.units]},
            ray_options=job.ray_options("index"),
            on_result=on_result,
            description="dedup: exact copies, equal hashes (bucket ranges)",
            show_progress=show_progress,
        )
        shutil.rmtree(folder, ignore_errors=True)  # every range's pairs are saved
    recs = [done[r["unit"]] for r in ranges]
    cat = lambda key: np.concatenate([np.asarray(r[key], np.int64) for r in recs]) if recs else np.zeros(0, np.int64)  # noqa: E731
    return cat("i"), cat("j")


def bucket_ranges(n_units: int, n_rows: int) -> list[dict]:
    """Contiguous ranges of buckets covering all of them, ~``ROWS_PER_RANGE`` rows each: at least
    ``MIN_RANGES`` and at most one per unit (module docstring)."""
    count = max(1, min(n_units, max(MIN_RANGES, -(-n_rows // ROWS_PER_RANGE))))
    edges = np.linspace(0, BUCKETS, count + 1).astype(int)
    return [{"unit": k, "lo": int(a), "hi": int(b)} for k, (a, b) in enumerate(zip(edges, edges[1:]))]
