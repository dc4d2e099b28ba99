"""The verifications of the dedup job's last run, kept for the next run over the same rows.

Why: data engineers append a pile a day and run ``curate dedup`` again. Local-feature
verification (ORB + RANSAC on two decoded images, ~7 ms a pair on real photos) is the job's
largest cost on real data, and a pair's outcome depends only on the two images and the near
settings: the next run takes the outcome of every pair verified before instead of decoding the
images again. The groups are the same as a run that verifies everything (OpenCV's RANSAC draws
from a fixed seed; tested).

What is kept (``<state>/vector/dedup-verified/``): a Lance table of every verified pair of the
last run (row positions ``i < j``, inliers, grid coverage, containment), sorted by ``i``, and
``record.json``: the near settings and, per fragment, its id, rows, deletion file and the data
files of ``id``, ``image`` and ``image_uri``. A later version may use it when its first fragments
are exactly those (rows appended; other columns added or rewritten are fine): then a row
position means the same image in both. Anything else (rows deleted, images rewritten, other
settings) and the table is not used; the run verifies everything and keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = ["VERIFIED_SCHEMA", "Verified", "prior_verified", "save_verified", "write_verified"]

FOLDER = "vector/dedup-verified"
VERIFIED_SCHEMA = pa.schema(
    [
        pa.field("i", pa.int64()),  # row position (fragment order), the smaller end
        pa.field("j", pa.int64()),
        pa.field("inliers", pa.int32()),
        pa.field("coverage", pa.float32()),
        pa.field("crop", pa.int8()),  # +1: i is a crop of j, -1: j of i (verify_pairs_geometry)
    ]
)
IMAGE_COLUMNS = ("id", "image", "image_uri")


class Verified:
    """Outcomes of verified pairs (``i < j`` row positions) of one range of rows, looked up by pair."""

    def __init__(self, t: pa.Table):
        self.keys = _keys(t.column("i").to_numpy(), t.column("j").to_numpy())
        order = np.argsort(self.keys, kind="stable")
        self.keys = self.keys[order]
        self.inl = t.column("inliers").to_numpy()[order]
        self.cov = t.column("coverage").to_numpy()[order]
        self.crop = t.column("crop").to_numpy()[order]

    @classmethod
    def read(cls, prior: dict | None, lo: int, hi: int) -> Verified | None:
        """The kept outcomes of pairs whose smaller end lies in ``[lo, hi)`` (None: nothing kept),
        read from the fragments the last run's units over those rows wrote (``ranges``), so a
        unit reads its share of the table, not all of it."""
        if prior is None:
            return None
        import lance

        ds = lance.dataset(prior["uri"])
        ids = [f for a, b, frags in prior["ranges"] if a < hi and lo < b for f in frags]
        if not ids:
            return cls(VERIFIED_SCHEMA.empty_table())
        frags = [ds.get_fragment(f) for f in ids]
        return cls(ds.scanner(fragments=frags, filter=f"i >= {lo} AND i < {hi}").to_table())

    def find(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the pairs found, their index in this table)."""
        k = _keys(a, b)
        at = np.searchsorted(self.keys, k).clip(0, max(len(self.keys) - 1, 0))
        hit = (at < len(self.keys)) & (self.keys[at] == k) if len(self.keys) else np.zeros(len(k), bool)
        return hit, at[hit]


def _keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """One sortable key per pair (positions fit 32 bits: 4 billion rows)."""
    return (np.asarray(i, np.uint64) << np.uint64(32)) | np.asarray(j, np.uint64)


def _layout(ds) -> list[list]:
    """Per fragment, what must be unchanged for a row position to mean the same image."""
    from engines.vector.index import field_ids

    want: set[int] = set()
    for c in IMAGE_COLUMNS:
        want |= field_ids(ds, c)
    out = []
    for frag in ds.get_fragments():
        m = frag.metadata
        out.append([m.id, m.physical_rows, str(m.deletion_file), sorted(df.path for df in m.files if want & set(df.fields))])
    return out


def settings_key(near_cfg: dict) -> str:
    return hashlib.sha1(json.dumps(near_cfg, sort_keys=True).encode()).hexdigest()[:12]


def prior_verified(store, ds, near_cfg: dict) -> tuple[dict | None, str]:
    """The kept table (``{"uri", "ranges"}``, for ``Verified.read``) when this version may use it
    (see the module), and why (not)."""
    folder = Path(store.state_dir) / FOLDER
    rec_path = folder / "record.json"
    if not rec_path.exists():
        return None, "no verifications kept from an earlier run"
    rec = json.loads(rec_path.read_text())
    if rec.get("settings") != settings_key(near_cfg):
        return None, "verifications of an earlier run not used: other near-duplicate settings"
    kept = rec.get("fragments", [])
    if _layout(ds)[: len(kept)] != kept:
        return None, "verifications of an earlier run not used: its rows were deleted or their images rewritten since"
    prior = {"uri": str(folder / "pairs.lance"), "ranges": rec["ranges"]}
    return prior, f"verifications of the run at v{rec.get('version')} reused where its pairs come again ({rec.get('pairs', 0):,} kept)"


def write_verified(t: pa.Table, uri: str) -> list[dict]:
    """A unit's verified pairs written as Lance fragments at ``uri`` (by the worker: the driver
    never holds them); their metadata as JSON, for ``save_verified``'s commit."""
    from lance.fragment import write_fragments

    if not t.num_rows:
        return []
    return [f.to_json() for f in write_fragments(t.cast(VERIFIED_SCHEMA), uri, schema=VERIFIED_SCHEMA, max_rows_per_file=1 << 24)]


def save_verified(store, ds, near_cfg: dict, staging: str, units: list[dict]) -> None:
    """Keep this run's verified pairs for the next run: the fragments each unit's worker wrote at
    ``staging`` (``units``: ``{"lo", "hi", "fragments"}`` in row order), committed as one table,
    and which fragments hold which rows' pairs. The record is written last: a run killed while
    saving leaves no record, and nothing is used."""
    import lance
    from lance import LanceOperation
    from lance.fragment import FragmentMetadata

    folder = Path(store.state_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").unlink(missing_ok=True)
    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in u["fragments"]]
    committed = lance.LanceDataset.commit(staging, LanceOperation.Overwrite(VERIFIED_SCHEMA, frags))
    ids = iter(f.fragment_id for f in committed.get_fragments())  # the commit numbers them in order
    ranges = [[u["lo"], u["hi"], [next(ids) for _ in u["fragments"]]] for u in units]
    shutil.rmtree(folder / "pairs.lance", ignore_errors=True)
    shutil.move(staging, folder / "pairs.lance")
    rec = {
        "version": ds.version,
        "settings": settings_key(near_cfg),
        "pairs": sum(f.physical_rows for f in frags),
        "ranges": ranges,
        "fragments": _layout(ds),
    }
    tmp = folder / "record.json.tmp"
    tmp.write_text(json.dumps(rec))
    tmp.replace(folder / "record.json")
