"""Vector jobs on Ray: descriptors, index build (sharded add + merge), k-NN graph, dedup, search.

- ``vec_visual`` (stage): training-free descriptors per image, for near-duplicate search.
- ``vector_index`` (step, ``curate index build``): train on a sample on the driver, add the
  rows in shards on Ray workers (one unit per group of fragments, each shard checkpointed on
  disk so a killed build resumes), merge, save with a manifest. A second build only adds the
  fragments that are new since the last one (rows appended); changed rows need ``--rebuild``.
- ``vector_knn`` (step, ``curate knn``): the k-NN graph as a Lance table (source id, neighbour
  id, similarity, rank): batched queries on Ray actors that load the index once, one Lance
  fragment per unit, one commit; resumable per unit; memory bounded by one unit.
- ``dedup`` (step, ``curate dedup``): exact + near + semantic duplicates as graph communities,
  best row kept, a removal-fraction curve per threshold (HTML report), then the ``dup_*``
  columns committed as one version through the stage runner (``--dry-run`` stops before).
- ``curate search``: the retrieval API (``engines.vector.retrieval.Retriever``) on the CLI.

Heavy imports (faiss, cv2, lance, ray) happen inside functions: the CLI imports this module.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from curation.registry import register_stage, register_step
from curation.schema import DUP, VEC_VISUAL
from curation.stage import Resources, Stage, StageConfig
from engines.vector.dedup import NearDupConfig, SemanticConfig
from engines.vector.index import IndexConfig

__all__ = [
    "VisualStage", "IndexBuildConfig", "KnnConfig", "DedupConfig", "build_index", "build_knn", "knn_uri", "open_knn", "run_dedup",
    "register_cli",
]

console = Console(stderr=True)
log = logging.getLogger(__name__)


# --- descriptors ---------------------------------------------------------------------------------


class VisualConfig(StageConfig):
    batch_size: int = Field(64, ge=1)


@register_stage
class VisualStage(Stage):
    """Training-free image descriptors (global + 10 regions) for near-duplicate search."""

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


def ensure_visual(store, show_progress: bool = True) -> None:
    """Compute the descriptor columns once (resumable stage) when they are not there yet."""
    from curation.runner import run_stage

    if "vec_desc" not in store.open().schema.names:
        console.print("vec_desc missing: computing image descriptors (stage vec_visual)")
        run_stage(store, VisualStage(), show_progress=show_progress)


def default_column(store) -> str:
    names = store.open().schema.names
    return "prof_clip_image" if "prof_clip_image" in names else "vec_desc"


# --- index build ----------------------------------------------------------------------------------


class IndexBuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: Optional[str] = Field(None, description="embedding column; default prof_clip_image if present, else vec_desc")
    index: IndexConfig = Field(default_factory=IndexConfig)
    rows_per_shard: int = Field(200_000, ge=1, description="rows added per Ray unit (one checkpointed shard each)")
    rebuild: bool = Field(False, description="start over instead of adding new rows")


def _fragment_sig(frag, field_ids: set[int]) -> str:
    m = frag.metadata
    return json.dumps([m.physical_rows, str(m.deletion_file), sorted(df.path for df in m.files if field_ids & set(df.fields))])


def _read_vectors(ds, fragment_ids: list[int], column: str, dim: int | None):
    from engines.vector.index import to_matrix

    t = pa.concat_tables([ds.get_fragment(f).to_table(columns=["id", column]) for f in fragment_ids])
    x, null = to_matrix(t.column(column), dim)
    return t.column("id").to_pylist(), x, null


class _AddWorker:
    """Ray actor: adds the rows of some fragments to a copy of the trained empty index."""

    def __init__(self, store, version: int, column: str, trained: bytes, normalize: bool):
        from engines.vector.index import deserialize

        self.ds = store.open(version)
        self.trained = deserialize(trained)
        self.column, self.normalize = column, normalize

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.index import add_vectors, clean_vectors, empty_like, serialize

        out: dict[str, list] = {"unit": [], "shard": [], "ids": [], "labels": [], "skipped": []}
        for unit in batch.to_pylist():
            ids, x, null = _read_vectors(self.ds, unit["fragments"], self.column, self.trained.d)
            x, valid, skipped = clean_vectors(x, null, normalize=self.normalize)
            labels = unit["label_start"] + np.arange(len(ids), dtype=np.int64)
            shard = empty_like(self.trained)
            add_vectors(shard, x[valid], labels[valid])
            out["unit"].append(unit["unit"])
            out["shard"].append(serialize(shard))
            out["ids"].append([i for i, ok in zip(ids, valid) if ok])
            out["labels"].append(labels[valid].tolist())
            out["skipped"].append(json.dumps(skipped))
        return pa.table(out)


def _check_dims(ds, frags, column: str, dim: int | None) -> None:
    """Raise ``VectorError`` on the driver, before any work, when the rows to index hold vectors
    of another dimension than ``dim`` (the index's) or of several dimensions. Free for
    fixed-size list columns (the type says it); a variable-length column is read once."""
    from engines.vector.index import VectorError

    t = ds.schema.field(column).type
    if pa.types.is_fixed_size_list(t):
        dims = {t.list_size}
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        dims = set()
        for f in frags:
            for b in f.to_batches(columns=[column]):
                lens = b.column(0).value_lengths().drop_null()
                dims.update(np.unique(np.asarray(lens.to_numpy())).tolist())
    else:
        raise VectorError(f"{column!r} is not an embedding column: type {t} (expected a list of floats)")
    if dim is not None and dims - {dim}:
        raise VectorError(
            f"rows to add to the index on {column!r} have vectors of dimension {', '.join(map(str, sorted(dims - {dim})))}, "
            f"expected {dim} (another model's embeddings?); rebuild with `curate index build --dataset {ds.uri} "
            f"--column {column} --rebuild`")
    if len(dims) > 1:
        raise VectorError(f"{column!r} holds vectors of several dimensions ({sorted(dims)}): one model per column")


def _sample_vectors(ds, column: str, n: int, seed: int):
    from engines.vector.index import clean_vectors, to_matrix

    total = ds.count_rows()
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(total, min(n, total), replace=False))
    t = ds.take(pos.tolist(), columns=[column])
    x, null = to_matrix(t.column(column))
    return x, null


def build_index(store, cfg: IndexBuildConfig, *, show_progress: bool = True) -> dict:
    """Build (or extend) the FAISS index of ``cfg.column``; returns the manifest as a dict."""
    from dataclasses import asdict

    import pyarrow.feather as feather

    from curation.runner import execute_units
    from engines.vector.index import (
        Manifest, VectorError, add_vectors, clean_vectors, column_fingerprint, deserialize, empty_like,
        load_index, merge_shards, save_index, serialize, train_index, train_points,
    )
    from engines.vector.retrieval import index_dir, index_relpath, pull_index, push_index

    t0 = time.perf_counter()
    column = cfg.column or default_column(store)
    if column == "vec_desc":
        ensure_visual(store, show_progress)
    ds = store.open()
    if column not in ds.schema.names:
        raise VectorError(f"column {column!r} not in the dataset; compute it first (e.g. `curate profile`) "
                          f"or pass --column with one of: {', '.join(n for n in ds.schema.names if n.startswith(('prof_', 'vec_')))}")
    if ds.count_rows() == 0:
        raise VectorError("the dataset is empty: nothing to index")
    # remote dataset: start from the index in the object store (built on another node?), not a stale cache
    folder = index_dir(store, column) if cfg.rebuild else pull_index(store, column)
    fields = {f.name(): f.id() for f in ds.lance_schema.fields()}
    fids = {fields[column], fields["id"]}
    frags = ds.get_fragments()
    sigs = {str(f.fragment_id): _fragment_sig(f, fids) for f in frags}

    base = None
    old_labels = None
    manifest_old = None
    if (folder / "manifest.json").exists() and not cfg.rebuild:
        base, manifest_old, old_labels = load_index(folder)
        if manifest_old.fingerprint == column_fingerprint(ds, column):
            console.print(f"index on {column!r} is up to date (built at v{manifest_old.dataset_version}, dataset v{ds.version})")
            return asdict(manifest_old)
        old = manifest_old.config.get("fragments", {})
        changed = [f for f, s in old.items() if sigs.get(f) != s]
        if changed:
            raise VectorError(
                f"rows or {column!r} data of fragments {changed[:5]} changed since the index was built at "
                f"v{manifest_old.dataset_version}; rebuild with `curate index build --dataset {store.uri} --column {column} --rebuild`")
        new_frags = [f for f in frags if str(f.fragment_id) not in old]
        _check_dims(ds, new_frags, column, base.d)
        trained = empty_like(base)
        kind, spec = manifest_old.kind, manifest_old.factory
        label_start = int(manifest_old.config.get("next_label", manifest_old.rows_seen))
        console.print(f"index on {column!r}: adding {sum(f.count_rows() for f in new_frags)} new rows "
                      f"({len(new_frags)} fragments) to {base.ntotal} indexed")
    else:
        _check_dims(ds, frags, column, None)
        x, null = _sample_vectors(ds, column, train_points(ds.count_rows(), cfg.index), cfg.index.seed)
        sample, valid, _ = clean_vectors(x, null, normalize=cfg.index.normalize)
        trained, kind, spec = train_index(sample[valid], ds.count_rows(), cfg.index)
        new_frags = frags
        label_start = 0
        console.print(f"index on {column!r}: {kind} ({spec}), trained on {int(valid.sum())} vectors")

    # units: consecutive fragments up to rows_per_shard rows, each with its first label
    units, cur, cur_rows, start = [], [], 0, label_start
    for f in new_frags:
        n = f.count_rows()
        if cur and cur_rows + n > cfg.rows_per_shard:
            units.append({"fragments": cur, "label_start": start, "rows": cur_rows})
            start += cur_rows
            cur, cur_rows = [], 0
        cur.append(f.fragment_id)
        cur_rows += n
    if cur:
        units.append({"fragments": cur, "label_start": start, "rows": cur_rows})
    next_label = start + cur_rows
    trained_bytes = serialize(trained)
    key = f"v{ds.version}-{hash_bytes(trained_bytes)}"
    shard_dir = folder.parent / f"shards-{column}" / key
    shard_dir.mkdir(parents=True, exist_ok=True)
    for k, u in enumerate(units):
        u["unit"] = k
    todo = [u for u in units if not (shard_dir / f"unit-{u['unit']}.json").exists()]
    if len(todo) < len(units):
        console.print(f"resuming: {len(units) - len(todo)} of {len(units)} shards already added")

    def on_result(row: dict) -> None:
        k = row["unit"]
        (shard_dir / f"unit-{k}.faiss.tmp").write_bytes(row["shard"])
        (shard_dir / f"unit-{k}.faiss.tmp").replace(shard_dir / f"unit-{k}.faiss")
        feather.write_feather(pa.table({"label": pa.array(row["labels"], pa.int64()), "id": pa.array(row["ids"], pa.string())}),
                              str(shard_dir / f"unit-{k}.arrow"))
        (shard_dir / f"unit-{k}.json.tmp").write_text(row["skipped"])
        (shard_dir / f"unit-{k}.json.tmp").replace(shard_dir / f"unit-{k}.json")

    execute_units(todo, _AddWorker, {"store": store, "version": ds.version, "column": column,
                                     "trained": trained_bytes, "normalize": cfg.index.normalize},
                  ray_options={"num_cpus": 1}, on_result=on_result, description=f"index {column} (shards)",
                  show_progress=show_progress)
    index = base if base is not None else empty_like(trained)
    skipped: dict[str, int] = dict(manifest_old.skipped) if manifest_old else {}
    label_tables = [old_labels] if old_labels is not None else []
    for u in units:
        k = u["unit"]
        shard = deserialize((shard_dir / f"unit-{k}.faiss").read_bytes())
        merge_shards(index, [shard])
        label_tables.append(feather.read_table(str(shard_dir / f"unit-{k}.arrow")))
        for r, v in json.loads((shard_dir / f"unit-{k}.json").read_text()).items():
            skipped[r] = skipped.get(r, 0) + v
    labels = pa.concat_tables(label_tables) if label_tables else pa.table({"label": pa.array([], pa.int64()), "id": pa.array([], pa.string())})
    if index.ntotal == 0:
        raise VectorError(f"no valid vectors in {column!r} (skipped: {skipped}); nothing was indexed")
    history = (manifest_old.history if manifest_old else []) + [
        {"dataset_version": ds.version, "added": int(sum(len(t) for t in label_tables[1 if old_labels is not None else 0:])),
         "time": time.time()}]
    manifest = Manifest(
        column=column, dim=int(index.d), metric=cfg.index.metric, kind=kind, factory=spec, dataset_uri=store.uri,
        dataset_version=ds.version, fingerprint=column_fingerprint(ds, column), ntotal=int(index.ntotal),
        rows_seen=next_label, skipped=skipped,
        config={**cfg.index.model_dump(mode="json"), "fragments": sigs, "next_label": next_label},
        history=history,
    )
    save_index(folder, index, manifest, labels)
    pushed = push_index(store, column)  # remote dataset: every node finds it there (manifest last)
    shutil.rmtree(shard_dir.parent, ignore_errors=True)
    if skipped:
        console.print(f"[yellow]skipped rows[/] (not indexed): {skipped}")
    console.print(f"index on {column!r}: {index.ntotal} vectors, {kind}, v{ds.version}, {time.perf_counter() - t0:.1f}s -> {folder}"
                  + (f" (uploaded to {store.uri}/_curation/{index_relpath(column)})" if pushed else ""))
    return asdict(manifest)


def hash_bytes(b: bytes) -> str:
    import hashlib

    return hashlib.sha1(b).hexdigest()[:12]


@register_step("vector_index", IndexBuildConfig, doc="FAISS index over an embedding column (sharded add on Ray, manifest)")
def _index_step(ctx, cfg: IndexBuildConfig) -> dict:
    m = build_index(ctx.store, cfg, show_progress=ctx.show_progress)
    return {"column": m["column"], "ntotal": m["ntotal"], "kind": m["kind"]}


# --- k-NN graph -------------------------------------------------------------------------------------

KNN_SCHEMA = pa.schema([
    pa.field("source_id", pa.string()),
    pa.field("neighbour_id", pa.string()),
    pa.field("similarity", pa.float32()),
    pa.field("rank", pa.int16()),  # 1 = nearest
])


class KnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: Optional[str] = Field(None, description="indexed column (default as for index build)")
    k: int = Field(100, ge=1, le=2048, description="neighbours per row (the report uses 100)")
    rows_per_unit: int = Field(50_000, ge=1, description="query rows per Ray unit (bounds memory)")
    nprobe: Optional[int] = Field(None, ge=1, description="IVF lists per query (default: the index's)")


def knn_relpath(column: str) -> str:
    """The k-NN graph of ``column`` inside the state dir (local) or under ``<uri>/_curation/`` (remote)."""
    return f"vector/knn-{column}.lance"


def knn_uri(store, column: str) -> str:
    """Where the k-NN graph of ``column`` lives, as a URI Lance opens.

    Local dataset: ``<state_dir>/vector/knn-<column>.lance`` (inside the dataset folder, as
    before). Remote dataset (``s3://``...): ``<dataset_uri>/_curation/vector/knn-<column>.lance``
    in the object store, not the driver's state dir: that one is a cache on one machine, so
    k-NN actors on other nodes could not write their fragments there nor readers find the
    graph. Open it with the dataset's ``storage_options`` (``open_knn``)."""
    from curation.store import is_remote

    if is_remote(store.uri):
        return f"{store.uri.rstrip('/')}/_curation/{knn_relpath(column)}"
    return str(Path(store.state_dir) / knn_relpath(column))


def open_knn(store, column: str):
    """The k-NN graph as a ``lance.LanceDataset``, with the dataset's credentials when remote."""
    import lance

    return lance.dataset(knn_uri(store, column), storage_options=store.storage_options or None)


def _manifest_sha(folder: Path) -> str | None:
    p = folder / "manifest.json"
    return hash_bytes(p.read_bytes()) if p.is_file() else None


def _worker_index_folder(store, column: str, driver_folder: str, manifest_sha: str) -> Path:
    """The index folder a k-NN actor loads: the driver's when this node sees it (same machine or
    a shared file system) with the driver's manifest, else this node's own state dir, fetched
    from the dataset's object store once per process (``pull_index``). Another manifest than the
    driver's (the index was rebuilt meanwhile) is an error, never a silently mixed graph."""
    from engines.vector.index import VectorError
    from engines.vector.retrieval import pull_index

    if _manifest_sha(Path(driver_folder)) == manifest_sha:
        return Path(driver_folder)
    folder = pull_index(store, column)
    if _manifest_sha(folder) != manifest_sha:
        raise VectorError(f"the index on {column!r} this node can read ({folder}) is not the one the k-NN job "
                          f"started with (rebuilt meanwhile, or never uploaded to {store.uri}/_curation/); run again")
    return folder


class _KnnWorker:
    """Ray actor: loads the index once, answers blocks of query rows, writes Lance fragments.

    ``out_uri`` is where the fragments' data files go: the local staging folder of a local
    dataset, or the graph's own URI in the object store for a remote one (written with the
    dataset's ``storage_options``, so an actor on any node reaches it). Only the fragment
    metadata goes back to the driver, which commits."""

    def __init__(self, store, version: int, column: str, index_folder: str, out_uri: str, k: int, nprobe,
                 manifest_sha: str | None = None):
        from engines.vector.index import load_index

        self.ds = store.open(version)
        if manifest_sha is not None:
            index_folder = str(_worker_index_folder(store, column, index_folder, manifest_sha))
        self.index, self.manifest, labels = load_index(Path(index_folder))
        self.ids = labels.column("id").to_numpy(zero_copy_only=False)
        lab = labels.column("label").to_numpy()
        self.pos_of = np.full(int(lab.max()) + 1 if len(lab) else 0, -1, np.int64)
        self.pos_of[lab] = np.arange(len(lab))
        self.column, self.out_uri, self.k, self.nprobe = column, out_uri, k, nprobe
        self.storage_options = store.storage_options or None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        from engines.vector.index import clean_vectors
        from engines.vector.knn import knn_block

        out: dict[str, list] = {"unit": [], "fragments": [], "rows": [], "edges": []}
        for unit in batch.to_pylist():
            ids, x, null = _read_vectors(self.ds, unit["fragments"], self.column, self.index.d)
            x, valid, _ = clean_vectors(x, null, normalize=self.manifest.config.get("normalize", True))
            labels = unit["label_start"] + np.arange(len(ids), dtype=np.int64)
            e = knn_block(self.index, x[valid], labels[valid], self.k, nprobe=self.nprobe)
            src_pos = self.pos_of[e["src"]]
            dst_pos = self.pos_of[e["dst"]]
            ok = (src_pos >= 0) & (dst_pos >= 0)
            rank = np.zeros(len(src_pos), np.int16)
            if len(rank):
                change = np.r_[True, e["src"][1:] != e["src"][:-1]]
                starts = np.maximum.accumulate(np.where(change, np.arange(len(rank)), 0))
                rank = (np.arange(len(rank)) - starts + 1).astype(np.int16)
            table = pa.table({
                "source_id": pa.array(self.ids[src_pos[ok]], pa.string()),
                "neighbour_id": pa.array(self.ids[dst_pos[ok]], pa.string()),
                "similarity": pa.array(e["sim"][ok], pa.float32()),
                "rank": pa.array(rank[ok], pa.int16()),
            }, schema=KNN_SCHEMA)
            frags = write_fragments(table, self.out_uri, schema=KNN_SCHEMA, max_rows_per_file=1 << 24,
                                    storage_options=self.storage_options) if table.num_rows else []
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["rows"].append(int(valid.sum()))
            out["edges"].append(int(table.num_rows))
        return pa.table(out)


def _knn_units_without_files(store, column: str, done: dict[int, dict]) -> list[int]:
    """Checkpointed units (remote graph) whose data files are no longer in the object store.

    Why: a checkpoint only holds fragment metadata; the files sit uncommitted under the graph's
    URI, and another run's ``cleanup_old_versions`` deletes unreferenced files once they are
    7 days old. Committing such a fragment would give a graph that fails on read, so those
    units are computed again instead (one HEAD per file, only when resuming)."""
    import pyarrow.fs as pafs

    fs, root = store.state_fs()
    data = f"{root}/{knn_relpath(column)}/data"
    gone = []
    for k, rec in done.items():
        paths = [f"{data}/{f['path']}" for frag in rec["fragments"] for f in frag["files"]]
        if paths and any(i.type != pafs.FileType.File for i in fs.get_file_info(paths)):
            gone.append(k)
    return gone


def build_knn(store, cfg: KnnConfig, *, show_progress: bool = True) -> dict:
    """The k-NN graph of every indexed row, as a Lance table next to the dataset (``knn_uri``).

    Actors write one set of fragments per unit and return their metadata; the driver
    checkpoints it per unit (small JSON in the driver's state dir, so a killed job resumes)
    and commits all fragments once. Readers see the old graph or the new one, never a mix:

    - local dataset: fragments go to a ``.staging`` dataset next to the graph, committed
      there, then the folder is renamed over the old graph (a local rename).
    - remote dataset: S3 has no rename (a copy of a 2 TB graph is not an option), so the
      fragments are written straight into the graph's own URI and the driver commits them as
      an ``Overwrite`` of that dataset: Lance's commit is atomic (a new manifest version), so
      a reader opens either the previous version or the new one, and no pointer file is needed
      (a reader just opens the URI). Uncommitted data files (a unit still running, or one
      checkpointed by a killed job) are invisible until that commit. The previous versions'
      files are then deleted (``cleanup_old_versions``; Lance keeps files younger than 7
      days that no version references: another run's pending fragments, or a killed run's
      leftovers, which a later run removes once older); a reader still scanning the old
      version at that moment gets an error, not a mix of graphs.
    """
    import lance
    from lance import LanceOperation
    from lance.fragment import FragmentMetadata

    from curation.runner import execute_units
    from engines.vector.index import VectorError, check_fresh, load_index
    from engines.vector.retrieval import pull_index

    t0 = time.perf_counter()
    column = cfg.column or default_column(store)
    folder = pull_index(store, column)  # remote dataset: the index may have been built on another node
    index, manifest, _ = load_index(folder, with_labels=False)
    ds = store.open()
    check_fresh(manifest, ds)  # an index older than the rows would give a silently wrong graph
    if index.ntotal < 2:
        raise VectorError(f"the index holds {index.ntotal} vector(s): a k-NN graph needs at least 2 rows")
    del index
    labels_of = {}
    start = 0
    for f in ds.get_fragments():  # labels are positions in fragment order (see build_index)
        labels_of[f.fragment_id] = start
        start += f.count_rows()
    units, cur, rows = [], [], 0
    for f in ds.get_fragments():
        n = f.count_rows()
        if cur and rows + n > cfg.rows_per_unit:
            units.append({"fragments": cur, "label_start": labels_of[cur[0]]})
            cur, rows = [], 0
        cur.append(f.fragment_id)
        rows += n
    if cur:
        units.append({"fragments": cur, "label_start": labels_of[cur[0]]})
    for k, u in enumerate(units):
        u["unit"] = k
    from curation.store import is_remote

    remote = is_remote(store.uri)
    out = knn_uri(store, column)
    # checkpoints stay on the driver (remote: its local cache), next to the graph for a local dataset
    ckpt = Path(store.state_dir) / "vector" / f"knn-{column}-ckpt-v{ds.version}-k{cfg.k}"
    ckpt.mkdir(parents=True, exist_ok=True)
    staging = out if remote else out + ".staging"
    done = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in ckpt.glob("unit-*.json")}
    if remote and done:
        for k in _knn_units_without_files(store, column, done):  # e.g. removed by a later run's cleanup
            console.print(f"[yellow]knn: unit {k}'s checkpointed fragments are gone from {out}; computing it again[/]")
            del done[k]
            (ckpt / f"unit-{k}.json").unlink(missing_ok=True)
    todo = [u for u in units if u["unit"] not in done]
    if done:
        console.print(f"knn: resuming, {len(done)} of {len(units)} units already computed")

    def on_result(row: dict) -> None:
        rec = {"fragments": json.loads(row["fragments"]), "rows": row["rows"], "edges": row["edges"]}
        p = ckpt / f"unit-{row['unit']}.json"
        p.with_suffix(".tmp").write_text(json.dumps(rec))
        p.with_suffix(".tmp").replace(p)
        done[row["unit"]] = rec

    execute_units(todo, _KnnWorker, {"store": store, "version": ds.version, "column": column,
                                     "index_folder": str(folder), "out_uri": staging, "k": cfg.k, "nprobe": cfg.nprobe,
                                     "manifest_sha": _manifest_sha(folder)},
                  ray_options={"num_cpus": 1}, on_result=on_result, description=f"knn k={cfg.k} (units)",
                  show_progress=show_progress)
    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in done[u["unit"]]["fragments"]]
    if remote:
        from datetime import timedelta

        # one atomic commit onto the graph's URI (see the docstring), then drop the old versions' files
        graph = lance.LanceDataset.commit(out, LanceOperation.Overwrite(KNN_SCHEMA, frags),
                                          storage_options=store.storage_options or None)
        graph.cleanup_old_versions(older_than=timedelta(0))
    else:
        # the fragments' files live under the staging dataset; commit them there, then swap it in
        lance.LanceDataset.commit(staging, LanceOperation.Overwrite(KNN_SCHEMA, frags))
        if Path(out).exists():
            shutil.rmtree(out)
        Path(staging).rename(out)
    shutil.rmtree(ckpt, ignore_errors=True)
    edges = sum(done[u["unit"]]["edges"] for u in units)
    summary = {"column": column, "k": cfg.k, "rows": sum(done[u["unit"]]["rows"] for u in units), "edges": edges,
               "path": out, "dataset_version": ds.version, "seconds": round(time.perf_counter() - t0, 2)}
    store.write_json(f"vector/knn-{column}.json", summary)
    console.print(f"knn graph: {edges} edges (k={cfg.k}) -> {out}")
    return summary


@register_step("vector_knn", KnnConfig, doc="k-NN graph (source, neighbour, similarity) as a Lance table, batched on Ray")
def _knn_step(ctx, cfg: KnnConfig) -> dict:
    return build_knn(ctx.store, cfg, show_progress=ctx.show_progress)


# --- dedup ------------------------------------------------------------------------------------------


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    near: NearDupConfig = Field(default_factory=NearDupConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    semantic_column: Optional[str] = Field(
        "auto", description="embedding column for semantic duplicates; auto = prof_clip_image when made by real weights; null = off")
    quality_column: Optional[str] = Field(None, description="score that picks the kept row; default prof_quality, else image area")
    quality_higher_is_better: bool = True
    method: str = Field("leiden", pattern="^(leiden|louvain|components)$")
    resolution: float = Field(0.1, gt=0, description="CPM density a group must beat (Leiden)")
    seed: int = 0
    thresholds: list[float] = Field(default_factory=lambda: [0.80, 0.85, 0.90, 0.95, 0.98],
                                    description="similarity thresholds of the removal curve")
    pairs_per_unit: int = Field(2000, ge=1, description="candidate pairs verified per Ray unit")
    dry_run: bool = Field(False, description="report the curve and groups, commit nothing")


class _VerifyWorker:
    """Ray actor: ORB + RANSAC verification of candidate pairs (decodes each image once per unit)."""

    def __init__(self, store, version: int):
        self.ds = store.open(version)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.descriptor import decode_gray, orb_features, orb_verify

        out: dict[str, list] = {"unit": [], "inliers": [], "coverage": []}
        for unit in batch.to_pylist():
            need = sorted(set(unit["i"]) | set(unit["j"]))
            t = self.ds.take(need, columns=["image", "image_uri"])
            feats = {}
            for p, data, uri in zip(need, t.column("image").to_pylist(), t.column("image_uri").to_pylist()):
                g = decode_gray(data, uri)
                feats[p] = orb_features(g) if isinstance(g, np.ndarray) else None
            inl, cov = [], []
            for a, b in zip(unit["i"], unit["j"]):
                if feats[a] is None or feats[b] is None:
                    inl.append(0); cov.append(0.0)
                    continue
                n_in, _, c = orb_verify(feats[a], feats[b])
                inl.append(n_in); cov.append(c)
            out["unit"].append(unit["unit"]); out["inliers"].append(inl); out["coverage"].append(cov)
        return pa.table(out)


def _quality(t: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, str]:
    names = t.column_names
    col = cfg.quality_column or ("prof_quality" if "prof_quality" in names else None)
    if col:
        q = np.asarray(t.column(col).to_numpy(zero_copy_only=False), np.float64)
        return q, col
    w = np.asarray(t.column("width").fill_null(0).to_numpy(), np.float64)
    h = np.asarray(t.column("height").fill_null(0).to_numpy(), np.float64)
    return w * h, "image area (width x height)"


def _semantic_column(store, ds, cfg: DedupConfig) -> tuple[str | None, str]:
    from engines.vector.retrieval import model_record

    if cfg.semantic_column is None:
        return None, "semantic duplicates off (semantic_column: null)"
    if cfg.semantic_column != "auto":
        if cfg.semantic_column not in ds.schema.names:
            from engines.vector.index import VectorError

            raise VectorError(f"semantic_column {cfg.semantic_column!r} not in the dataset")
        return cfg.semantic_column, f"semantic duplicates over {cfg.semantic_column}"
    if "prof_clip_image" not in ds.schema.names:
        return None, "semantic duplicates skipped: no prof_clip_image column (run the profiling clip stage with real weights)"
    rec = model_record(store, "prof_clip_image")
    if rec is None or rec.get("random_weights", True):
        return None, ("semantic duplicates skipped: prof_clip_image was made by randomly initialised weights "
                      "(or the model is unrecorded); similarities would be noise")
    return "prof_clip_image", f"semantic duplicates over prof_clip_image ({rec.get('model')})"


def find_duplicates(store, cfg: DedupConfig, *, show_progress: bool = True) -> dict:
    """Groups, kept rows and the removal curve, without committing. Returns the plan."""
    from curation.runner import execute_units
    from engines.vector.dedup import (
        REASONS, Pairs, exact_pairs, group_duplicates, near_pairs, semantic_pairs, semdedup_pairs,
    )
    from engines.vector.graph import removal_curve
    from engines.vector.index import VectorError, clean_vectors, to_matrix
    from engines.vector.knn import exact_knn

    ensure_visual(store, show_progress)
    ds = store.open()
    n = ds.count_rows()
    if n == 0:
        raise VectorError("the dataset is empty: nothing to deduplicate")
    names = ds.schema.names
    cols = ["id", "image_sha256", "vec_desc", "vec_regions", "width", "height"]
    cols += [c for c in ("prof_phash",) if c in names]
    q_col = cfg.quality_column
    if q_col and q_col not in names:
        raise VectorError(f"quality_column {q_col!r} not in the dataset; columns: {', '.join(names)}")
    if q_col is None and "prof_quality" in names:
        cols.append("prof_quality")
    if q_col:
        cols.append(q_col)
    t = ds.to_table(columns=list(dict.fromkeys(cols)))
    ids = t.column("id").to_pylist()
    notes: list[str] = []
    stats: dict[str, Any] = {"rows": n}

    pairs = exact_pairs(t.column("image_sha256").to_pylist())
    stats["exact_pairs"] = len(pairs)
    full, null = to_matrix(t.column("vec_desc"))
    full, valid, skipped = clean_vectors(full, null)
    if skipped:
        notes.append(f"rows without a usable descriptor (exact duplicates only): {skipped}")
    regions, rnull = to_matrix(t.column("vec_regions"))
    regions = regions.reshape(n, -1, full.shape[1])
    phash = phash_valid = None
    if "prof_phash" in t.column_names:
        ph = t.column("prof_phash")
        phash_valid = np.asarray(ph.is_valid().to_numpy(zero_copy_only=False), bool)
        phash = np.asarray(ph.fill_null(0).to_numpy(zero_copy_only=False), np.uint64)
    else:
        notes.append("prof_phash absent: perceptual-hash signal skipped (descriptors + local features decide)")

    def verify(i: np.ndarray, j: np.ndarray):
        order = np.lexsort((j, i))  # pairs of one image together: fewer decodes per unit
        i, j = i[order], j[order]
        units = [{"unit": k, "i": i[s:s + cfg.pairs_per_unit].tolist(), "j": j[s:s + cfg.pairs_per_unit].tolist()}
                 for k, s in enumerate(range(0, len(i), cfg.pairs_per_unit))]
        inl = np.zeros(len(i), np.int32)
        cov = np.zeros(len(i), np.float32)

        def on_result(row):
            s = row["unit"] * cfg.pairs_per_unit
            inl[s:s + len(row["inliers"])] = row["inliers"]
            cov[s:s + len(row["coverage"])] = row["coverage"]

        execute_units(units, _VerifyWorker, {"store": store, "version": ds.version}, ray_options={"num_cpus": 1},
                      on_result=on_result, description="verify near-duplicate candidates (ORB+RANSAC)",
                      show_progress=show_progress)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return inl[back], cov[back]

    near, nstats = near_pairs(full, regions, valid, phash, cfg.near, verify, phash_valid=phash_valid)
    stats.update(nstats)
    pairs = pairs + near

    sem_col, why = _semantic_column(store, ds, cfg)
    notes.append(why)
    if sem_col:
        e, enull = to_matrix(ds.to_table(columns=[sem_col]).column(sem_col))
        e, evalid, eskipped = clean_vectors(e, enull)
        if cfg.semantic.method == "semdedup":
            sem = semdedup_pairs(e, evalid, cfg.semantic.threshold, cfg.semantic.n_clusters, cfg.semantic.seed)
        else:
            pos = np.flatnonzero(evalid)
            sims, nn = exact_knn(e[pos], e[pos], min(cfg.semantic.k + 1, len(pos))) if len(pos) > 1 else (np.zeros((0, 1)), np.zeros((0, 1), np.int64))
            src = np.repeat(pos, nn.shape[1])
            dst = np.where(nn.ravel() >= 0, pos[np.maximum(nn.ravel(), 0)], -1)
            sem = semantic_pairs(src, dst, sims.ravel(), cfg.semantic.threshold)
        stats["semantic_pairs"] = len(sem)
        pairs = pairs + sem

    quality, q_name = _quality(t, cfg)
    notes.append(f"kept row = best {q_name} ({'higher' if cfg.quality_higher_is_better else 'lower'} is better)")

    def pair_sim(u: int, k: int) -> float:
        if valid[u] and valid[k]:
            return float(max(full[u] @ full[k], (regions[k] @ full[u]).max(), (regions[u] @ full[k]).max()))
        return float("nan")

    res = group_duplicates(n, pairs, quality, method=cfg.method, resolution=cfg.resolution, seed=cfg.seed,
                           higher_is_better=cfg.quality_higher_is_better, pair_sim=pair_sim)
    exact = pairs.reason == REASONS.index("exact")
    curve = removal_curve(n, np.r_[pairs.i], np.r_[pairs.j], np.where(exact, 1.0, pairs.sim), cfg.thresholds,
                          method=cfg.method, resolution=cfg.resolution, seed=cfg.seed)
    stats.update(res.stats)
    plan = pa.table({
        "id": pa.array(ids, pa.string()),
        "dup_group": pa.array([int(g) if g >= 0 else None for g in res.group], pa.int64()),
        "dup_keep": pa.array(res.keep.tolist(), pa.bool_()),
        "dup_of": pa.array([ids[k] if k >= 0 else None for k in res.dup_of], pa.string()),
        "dup_reason": pa.array(res.reason, pa.string()),
        "dup_sim": pa.array([None if not np.isfinite(s) else float(s) for s in res.sim], pa.float32()),
    })
    return {"plan": plan, "stats": stats, "curve": curve, "notes": notes, "dataset_version": ds.version}


def _report_html(result: dict, cfg: DedupConfig) -> str:
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["threshold"] for c in curve], [100 * c["removed_fraction"] for c in curve], marker="o")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("rows removed (%)")
    ax.set_title("removal fraction per threshold")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    rows = "".join(f"<tr><td>{c['threshold']:.2f}</td><td>{c['edges']}</td><td>{c['groups']}</td><td>{c['removed']}</td>"
                   f"<td>{100 * c['removed_fraction']:.2f}%</td></tr>" for c in curve)
    s = result["stats"]
    stat_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in s.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>dedup report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>Duplicates at dataset v{result['dataset_version']}</h1>
<p>{s.get('removed', 0)} of {s['rows']} rows ({100 * s.get('removed_fraction', 0):.2f}%) are duplicates of a better row
in {s.get('groups', 0)} groups (method {html.escape(cfg.method)}, resolution {cfg.resolution}).</p>
<ul>{notes}</ul><img src="data:image/png;base64,{img}">
<h2>Removal curve</h2><table><tr><th>threshold</th><th>edges</th><th>groups</th><th>removed</th><th>fraction</th></tr>{rows}</table>
<h2>Counters</h2><table>{stat_rows}</table></body></html>"""


class _DupApplyConfig(StageConfig):
    plan_path: str


class _DupApplyStage(Stage):
    """Writes a computed dedup plan as the dup_* columns (one commit, resumable per fragment)."""

    name = "dup_apply"
    config_model = _DupApplyConfig
    input_columns = ["id"]
    output_schema = DUP.schema
    batch_size = 8192

    num_cpus = 0.5

    def setup(self) -> None:
        import pyarrow.feather as feather

        plan = feather.read_table(self.config.plan_path)
        self.pos = {k: i for i, k in enumerate(plan.column("id").to_pylist())}
        self.plan = plan

    def process_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        idx = [self.pos.get(i, -1) for i in batch.column("id").to_pylist()]
        if min(idx, default=0) < 0:
            raise RuntimeError("row not in the dedup plan: the dataset changed while dedup ran; run it again")
        taken = self.plan.take(pa.array(idx, pa.int64()))
        for r in taken.column("dup_reason").to_pylist():
            if r:
                self.stats.count(f"duplicate_{r}")
        return pa.RecordBatch.from_arrays([taken.column(c).combine_chunks() for c in DUP.schema.names], schema=DUP.schema)


def run_dedup(store, cfg: DedupConfig, *, overwrite: bool = True, show_progress: bool = True) -> dict:
    """Find duplicates, print and save the removal curve + HTML report, then commit ``dup_*``."""
    import pyarrow.feather as feather

    from curation.runner import run_stage

    t0 = time.perf_counter()
    res = find_duplicates(store, cfg, show_progress=show_progress)
    v = res["dataset_version"]
    out_dir = Path(store.state_dir) / "vector"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / f"dedup-v{v}.html"
    report.write_text(_report_html(res, cfg), encoding="utf-8")
    store.write_json(f"vector/dedup-v{v}.json", {"stats": res["stats"], "curve": res["curve"], "notes": res["notes"]})
    for note in res["notes"]:
        console.print(f"  {note}")
    console.print("removal curve (threshold -> rows removed):")
    for c in res["curve"]:
        console.print(f"  {c['threshold']:.2f}  {c['removed']:>8}  {100 * c['removed_fraction']:6.2f}%  ({c['groups']} groups)")
    s = res["stats"]
    console.print(f"duplicates: {s['removed']} of {s['rows']} rows in {s['groups']} groups, by reason {s['removed_by_reason']}; "
                  f"report {report}")
    summary = {"report": str(report), **{k: s[k] for k in ("rows", "groups", "removed", "removed_fraction", "removed_by_reason")}}
    if cfg.dry_run:
        summary["status"] = "dry_run"
        return summary
    plan_path = out_dir / f"dedup-plan-v{v}.arrow"
    feather.write_feather(res["plan"], str(plan_path))
    result = run_stage(store, _DupApplyStage(plan_path=str(plan_path)), overwrite=overwrite, show_progress=show_progress)
    summary.update({"status": result.status, "version": result.version, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


@register_step("dedup", DedupConfig, doc="exact + near + semantic duplicates as Leiden communities; best row kept")
def _dedup_step(ctx, cfg: DedupConfig) -> dict:
    from curation.schema import COLUMN_GROUPS

    have = set(ctx.store.open().schema.names)
    if not ctx.overwrite and not cfg.dry_run and set(COLUMN_GROUPS["dup"].columns) <= have:
        print("dedup: dup_* columns already present; pass --overwrite to recompute")  # a re-run pipeline
        return {"status": "skipped"}
    return run_dedup(ctx.store, cfg, overwrite=True, show_progress=ctx.show_progress)


# --- CLI ----------------------------------------------------------------------------------------------


def register_cli(app) -> None:
    import typer

    from curation.cli import AddressOpt, DatasetOpt, fail, open_store, start_ray

    index_app = typer.Typer(help="FAISS vector indexes over embedding columns.", no_args_is_help=True)
    app.add_typer(index_app, name="index")

    def _guard(fn, *a, **kw):
        from engines.vector.index import VectorError

        try:
            return fn(*a, **kw)
        except VectorError as e:
            fail(str(e))

    @index_app.command("build")
    def index_build(
        dataset: str = DatasetOpt,
        column: Optional[str] = typer.Option(None, help="embedding column (default prof_clip_image, else vec_desc)"),
        kind: str = typer.Option("auto", help="auto, flat, ivfflat, ivfsq8, ivfpq, ivfhnsw"),
        nlist: Optional[int] = typer.Option(None, help="IVF lists"),
        nprobe: int = typer.Option(16, help="IVF lists searched per query"),
        rebuild: bool = typer.Option(False, help="start over instead of adding new rows"),
        address: Optional[str] = AddressOpt,
    ):
        """Build or extend (new rows only) the FAISS index of an embedding column."""
        from curation.config import validate

        cfg = validate(IndexBuildConfig, {"column": column, "rebuild": rebuild,
                                          "index": {"kind": kind, "nlist": nlist, "nprobe": nprobe}}, where="options")
        store = open_store(dataset)
        start_ray(address)
        _guard(build_index, store, cfg)

    @app.command()
    def knn(
        dataset: str = DatasetOpt,
        k: int = typer.Option(100, help="neighbours per row"),
        column: Optional[str] = typer.Option(None, help="indexed column"),
        nprobe: Optional[int] = typer.Option(None),
        address: Optional[str] = AddressOpt,
    ):
        """The k-NN graph (source id, neighbour id, similarity) as a Lance table next to the dataset."""
        from curation.config import validate

        cfg = validate(KnnConfig, {"k": k, "column": column, "nprobe": nprobe}, where="options")
        store = open_store(dataset)
        start_ray(address)
        _guard(build_knn, store, cfg)

    @app.command()
    def dedup(
        dataset: str = DatasetOpt,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with dedup params (DedupConfig)"),
        quality_column: Optional[str] = typer.Option(None, help="score that picks the kept row"),
        method: Optional[str] = typer.Option(None, help="leiden, louvain or components"),
        dry_run: bool = typer.Option(False, help="report the curve and groups; commit nothing"),
        address: Optional[str] = AddressOpt,
    ):
        """Exact, near and semantic duplicates; prints the removal curve; commits dup_* columns."""
        from curation.config import load_yaml, validate

        params = load_yaml(config) if config else {}
        for key, val in (("quality_column", quality_column), ("method", method)):
            if val is not None:
                params[key] = val
        if dry_run:
            params["dry_run"] = True
        cfg = validate(DedupConfig, params, where=str(config or "options"))
        store = open_store(dataset)
        start_ray(address)
        _guard(run_dedup, store, cfg)

    @app.command()
    def search(
        dataset: str = DatasetOpt,
        text: Optional[str] = typer.Option(None, help="text query (needs an image-text or caption embedding index)"),
        image: Optional[Path] = typer.Option(None, help="image file query"),
        id: Optional[str] = typer.Option(None, "--id", help="neighbours of this row"),
        k: int = typer.Option(20, min=1),
        column: Optional[str] = typer.Option(None, help="indexed column (default as for index build)"),
    ):
        """Text-to-image, image-to-image and row-neighbour retrieval over a built index."""
        from rich.table import Table

        from engines.vector.retrieval import Retriever

        if sum(x is not None for x in (text, image, id)) != 1:
            fail("give exactly one of --text, --image, --id")
        store = open_store(dataset)
        col = column or default_column(store)

        def go():
            r = Retriever(store, col)
            if text is not None:
                return r.by_text(text, k)
            if image is not None:
                if not image.is_file():
                    fail(f"no image file at {image}")
                return r.by_image(image.read_bytes(), k)
            return r.by_id(id, k)

        hits = _guard(go)
        t = Table(title=f"nearest rows by {col}")
        for c in ("rank", "id", "similarity"):
            t.add_column(c)
        for h in hits:
            t.add_row(str(h["rank"]), h["id"], f"{h['similarity']:.4f}")
        Console().print(t)
