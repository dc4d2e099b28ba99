"""What a run of the dedup job keeps for the next run over the same rows and more.

Why: data engineers append a pile a day and run ``curate dedup`` again. The near-duplicate
phases are the job's cost (the candidate search over every row's 12 descriptors, then
local-feature verification: ORB + RANSAC on two decoded images, ~7 ms a pair on real photos),
and after an append most of their work is what the last run did. Two things are kept:

- **verifications** (``<state>/vector/dedup-verified/``): the outcome of every pair the last run
  verified (row positions ``i < j``, inliers, grid coverage, containment). A pair's outcome
  depends only on its two images and the near settings, so the next run takes it instead of
  decoding the images again: the same groups as verifying everything (OpenCV's RANSAC draws
  from a fixed seed; tested).
- **the candidate search** (``<state>/vector/dedup-near.json`` naming files of the last run's
  job folder): its trained index, the index of every row's descriptors and each row's best
  owners (``owners``: the rows its queries found, the centre quota flagged). The next run adds
  only the new rows' descriptors to that index; the new rows search all of it, the old rows
  search an index of the new rows alone, and each old row's owners are the best of its kept
  owners and those new hits (``engines.vector.dedup.owners_of_parts``, the merge the candidate
  passes use): the candidates of one search over the extended index, found for new rows only.

Both are used only by a version whose first fragments are exactly those the last run saw (the
same ids, rows and deletion files, and the same data files of the columns the kept work read:
``id``, ``image`` and ``image_uri`` for verifications; ``id``, ``vec_desc`` and ``vec_regions``
for the search): rows appended, other columns added or rewritten (a committed ``dup_*``
included). Anything else (rows deleted, images or descriptors rewritten, other settings, or
twice the rows the index was trained for) and the run does everything and keeps its own. Each
kept table is read a range of rows at a time, from the fragments the last run's unit over those
rows wrote (``ranges``): a unit reads its share, not all of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = [
    "OWNERS_SCHEMA",
    "VERIFIED_SCHEMA",
    "Verified",
    "prior_near",
    "prior_verified",
    "read_owners",
    "save_near",
    "save_verified",
    "write_kept",
    "drop_unkept",
    "drop_kept",
]

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
OWNERS_SCHEMA = pa.schema(
    [
        pa.field("q", pa.int64()),  # the row (position) whose queries found ...
        pa.field("o", pa.int64()),  # ... this other row
        pa.field("v", pa.float32()),  # best cosine over its queries and the owner's entries
        pa.field("c", pa.bool_()),  # from the centre quota (``split_top_owners_flagged``)
    ]
)
DESC_COLUMNS = ("id", "vec_desc", "vec_regions")
NEAR_RECORD = "vector/dedup-near.json"
KEPT_ONLY = "KEPT_ONLY"
"""Marks a committed run's job folder holding only kept files (``drop_unkept``); the files of
other job folders are never deleted here: a dry run's folder may be resumed by the real run."""


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
        """The kept outcomes of pairs whose smaller end lies in ``[lo, hi)`` (None: nothing kept)."""
        if prior is None:
            return None
        return cls(_read_range(prior, lo, hi, "i", VERIFIED_SCHEMA))

    def find(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the pairs found, their index in this table)."""
        k = _keys(a, b)
        if not len(self.keys):
            return np.zeros(len(k), bool), np.zeros(0, np.int64)
        at = np.searchsorted(self.keys, k).clip(0, len(self.keys) - 1)
        hit = self.keys[at] == k
        return hit, at[hit]


def _keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """One sortable key per pair (positions fit 32 bits: 4 billion rows)."""
    return (np.asarray(i, np.uint64) << np.uint64(32)) | np.asarray(j, np.uint64)


def _read_range(prior: dict, lo: int, hi: int, key: str, schema: pa.Schema) -> pa.Table:
    """Rows of a kept table whose ``key`` lies in ``[lo, hi)``, read from the fragments written
    by the last run's units over overlapping rows only."""
    import lance

    ds = lance.dataset(prior["uri"])
    ids = [f for a, b, frags in prior["ranges"] if a < hi and lo < b for f in frags]
    if not ids:
        return schema.empty_table()
    frags = [ds.get_fragment(f) for f in ids]
    return ds.scanner(fragments=frags, filter=f"{key} >= {lo} AND {key} < {hi}").to_table()


def read_owners(prior: dict, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kept owners (q, o, v, c) of the rows ``[lo, hi)``."""
    t = _read_range({"uri": prior["owners"], "ranges": prior["ranges"]}, lo, hi, "q", OWNERS_SCHEMA)
    return tuple(t.column(c).to_numpy(zero_copy_only=False) for c in "qovc")


def _layout(ds, columns: tuple[str, ...] = IMAGE_COLUMNS) -> list[list]:
    """Per fragment, what must be unchanged for a row position to mean the same data."""
    from engines.vector.index import field_ids

    want: set[int] = set()
    for c in columns:
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


def write_kept(t: pa.Table, uri: str, schema: pa.Schema) -> list[dict]:
    """A unit's rows of a kept table written as Lance fragments at ``uri`` (by the worker: the
    driver never holds them); their metadata as JSON, for the commit (``_commit_units``)."""
    from lance.fragment import write_fragments

    if not t.num_rows:
        return []
    return [f.to_json() for f in write_fragments(t.cast(schema), uri, schema=schema, max_rows_per_file=1 << 24)]


def _commit_units(staging: str, dest: Path, units: list[dict], schema: pa.Schema) -> tuple[list, int]:
    """The fragments each unit wrote at ``staging`` (``units``: ``{"lo", "hi", "fragments"}`` in
    row order) committed as one table and moved to ``dest``; returns its ``ranges`` (which
    fragments hold which rows) and row count."""
    import lance
    from lance import LanceOperation
    from lance.fragment import FragmentMetadata

    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in u["fragments"]]
    moved = not Path(staging).exists() and Path(dest).exists()  # by a run killed before its record was written
    committed = lance.dataset(str(dest)) if moved else lance.LanceDataset.commit(staging, LanceOperation.Overwrite(schema, frags))
    ids = iter(f.fragment_id for f in committed.get_fragments())  # the commit numbers them in order
    ranges = [[u["lo"], u["hi"], [next(ids) for _ in u["fragments"]]] for u in units]
    if not moved:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(staging, dest)
    return ranges, sum(f.physical_rows for f in frags)


def _write_record(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)


def save_verified(store, ds, near_cfg: dict, staging: str, units: list[dict]) -> None:
    """Keep this run's verified pairs (written by its units at ``staging``) for the next run.
    The record is written last: a run killed while saving leaves no record, and nothing is used."""
    folder = Path(store.state_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").unlink(missing_ok=True)
    ranges, pairs = _commit_units(staging, folder / "pairs.lance", units, VERIFIED_SCHEMA)
    rec = {"version": ds.version, "settings": settings_key(near_cfg), "pairs": pairs, "ranges": ranges, "fragments": _layout(ds)}
    _write_record(folder / "record.json", rec)


# --- the candidate search ---------------------------------------------------------------------


def prior_near(store, ds, key: str, can_extend) -> tuple[dict | None, str]:
    """The last run's candidate search (``save_near``'s record) when this version may extend it,
    and why (not). ``can_extend(record, rows)``: whether the kept index suits this many rows
    (its kind and list count were chosen for the rows it was trained on)."""
    rec = near_record(store)
    if rec is None:
        return None, ""
    if rec.get("key") != key:
        return None, "the last run's candidate search not extended: other settings"
    kept, now = rec["fragments"], _layout(ds, DESC_COLUMNS)
    if now[: len(kept)] != kept:
        return None, "the last run's candidate search not extended: its rows were deleted or their descriptors rewritten since"
    if not all(Path(p).exists() for p in (rec["index"], rec["trained"], rec["owners"])):
        return None, "the last run's candidate search not extended: its files are gone"
    rows = ds.count_rows()
    if not can_extend(rec, rows):
        return None, f"the last run's candidate search not extended: its index was made for {rec['trained_rows']:,} rows, not {rows:,}"
    if rows == rec["rows"]:
        why = f"nothing appended since the run at v{rec['version']}: its candidates are used, nothing is searched"
    else:
        why = f"extending the candidate search of the run at v{rec['version']} ({rec['rows']:,} rows) with {rows - rec['rows']:,} new rows"
    return {**rec, "new_fragments": len(now) - len(kept)}, why


def save_near(store, ds, key: str, files: dict, staging: str, units: list[dict], trained_rows: int) -> None:
    """Keep this run's candidate search (``files``: ``index``, ``trained``, ``router`` paths in its
    job folder; the owners its units wrote at ``staging``) for the next run; the files of the
    record it replaces that this one does not name are deleted."""
    path = Path(store.state_dir) / NEAR_RECORD
    old = near_record(store)
    path.unlink(missing_ok=True)
    owners = Path(staging).parent / "owners.lance"
    ranges, n = _commit_units(staging, owners, units, OWNERS_SCHEMA)
    rec = {
        **files,
        "owners": str(owners),
        "ranges": ranges,
        "key": key,
        "version": ds.version,
        "rows": ds.count_rows(),
        "trained_rows": trained_rows,
        "fragments": _layout(ds, DESC_COLUMNS),
    }
    _write_record(path, _relative(store, rec))
    for p in set(kept_files(old)) - set(kept_files(rec)):  # a committed run's files no record names now
        folder = Path(p).parent
        if (folder / KEPT_ONLY).exists():  # not a job folder a run may resume (a dry run's)
            shutil.rmtree(p, ignore_errors=True) if Path(p).is_dir() else Path(p).unlink(missing_ok=True)
            if {c.name for c in folder.iterdir()} <= {KEPT_ONLY}:
                shutil.rmtree(folder, ignore_errors=True)


def kept_files(rec: dict | None) -> list[str]:
    """Every file and folder a near record names (an on-disk index's data file included)."""
    from engines.vector.ondisk import ondisk_data_path

    if not rec:
        return []
    out = [rec[k] for k in ("index", "trained", "router", "owners") if rec.get(k)]
    try:
        data = ondisk_data_path(rec["index"])
    except (ValueError, RuntimeError, OSError):  # a flat index (its lists are in the file), or gone
        data = ""
    return out + ([data] if data else [])


PATH_KEYS = ("index", "trained", "router", "owners")
"""The record's files, stored relative to the state folder: a dataset copied or moved with its
state (``cp -r``) finds its own copies, and never reads nor deletes the original's."""


def near_record(store) -> dict | None:
    """The kept search's record, its files as absolute paths (``PATH_KEYS``)."""
    path = Path(store.state_dir) / NEAR_RECORD
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return {**rec, **{k: str(Path(store.state_dir) / rec[k]) for k in PATH_KEYS if rec.get(k)}}


def _relative(store, rec: dict) -> dict:
    base = Path(store.state_dir).resolve()
    return {**rec, **{k: str(Path(rec[k]).resolve().relative_to(base)) for k in PATH_KEYS if rec.get(k)}}


def drop_kept(store, folder: Path) -> None:
    """``keep: false``: a committed run keeps nothing. Its job folder goes, and so does what an
    earlier run kept: the near record and its files (in committed runs' folders, ``KEPT_ONLY``;
    a folder a run may still resume, a dry run's, loses only the record), the verified pairs."""
    rec = near_record(store)
    (Path(store.state_dir) / NEAR_RECORD).unlink(missing_ok=True)
    for p in kept_files(rec):
        if (Path(p).parent / KEPT_ONLY).exists():
            shutil.rmtree(Path(p).parent, ignore_errors=True)
    shutil.rmtree(Path(store.state_dir) / FOLDER, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def drop_unkept(store, folder: Path) -> None:
    """A committed run's job folder, emptied of all but the files the near record keeps, and
    marked so (``KEPT_ONLY``): the next record that no longer names them deletes them."""
    keep = {Path(p).resolve() for p in kept_files(near_record(store))}
    folder = Path(folder)
    if not folder.exists():
        return
    if not any(p.parent == folder.resolve() for p in keep):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.resolve() not in keep:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    (folder / KEPT_ONLY).touch()
