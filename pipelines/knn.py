"""``vector_knn`` (step, ``curate knn``): the k-NN graph as a Lance table.

(source id, neighbour id, similarity, rank): batched queries on Ray actors that load the index
once, one Lance fragment per unit, one commit; resumable per unit; memory bounded by one unit.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from curation.registry import register_step
from pipelines.descriptors import default_column, fragment_units, hash_bytes, read_vectors

console = Console(stderr=True)
log = logging.getLogger(__name__)


KNN_SCHEMA = pa.schema(
    [
        pa.field("source_id", pa.string()),
        pa.field("neighbour_id", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("rank", pa.int16()),  # 1 = nearest
    ]
)


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
        raise VectorError(
            f"the index on {column!r} this node can read ({folder}) is not the one the k-NN job "
            f"started with (rebuilt meanwhile, or never uploaded to {store.uri}/_curation/); run again"
        )
    return folder


class _KnnWorker:
    """Ray actor: loads the index once, answers blocks of query rows, writes Lance fragments.

    ``out_uri`` is where the fragments' data files go: the local staging folder of a local
    dataset, or the graph's own URI in the object store for a remote one (written with the
    dataset's ``storage_options``, so an actor on any node reaches it). Only the fragment
    metadata goes back to the driver, which commits."""

    def __init__(self, store, version: int, column: str, index_folder: str, out_uri: str, k: int, nprobe, manifest_sha: str | None = None):
        from engines.vector.index import load_index, maybe_gpu

        self.ds = store.open(version)
        if manifest_sha is not None:
            index_folder = str(_worker_index_folder(store, column, index_folder, manifest_sha))
        self.index, self.manifest, labels = load_index(Path(index_folder))
        self.index = maybe_gpu(self.index, self.manifest.config.get("use_gpu"))  # faiss-gpu + a GPU: search there
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
            ids, x, null = read_vectors(self.ds, unit["fragments"], self.column, self.index.d)
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
            table = pa.table(
                {
                    "source_id": pa.array(self.ids[src_pos[ok]], pa.string()),
                    "neighbour_id": pa.array(self.ids[dst_pos[ok]], pa.string()),
                    "similarity": pa.array(e["sim"][ok], pa.float32()),
                    "rank": pa.array(rank[ok], pa.int16()),
                },
                schema=KNN_SCHEMA,
            )
            frags = (
                write_fragments(table, self.out_uri, schema=KNN_SCHEMA, max_rows_per_file=1 << 24, storage_options=self.storage_options)
                if table.num_rows
                else []
            )
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
    from lance.fragment import FragmentMetadata

    from curation.runner import execute_units
    from curation.store import is_remote
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
    units, _ = fragment_units(ds.get_fragments(), cfg.rows_per_unit, 0)  # labels = positions, as build_index's
    remote = is_remote(store.uri)
    out = knn_uri(store, column)
    staging = out if remote else out + ".staging"
    # checkpoints stay on the driver (remote: its local cache), next to the graph for a local dataset
    ckpt = Path(store.state_dir) / "vector" / f"knn-{column}-ckpt-v{ds.version}-k{cfg.k}"
    done = _checkpointed(store, column, ckpt, remote, out, len(units))

    def on_result(row: dict) -> None:
        rec = {"fragments": json.loads(row["fragments"]), "rows": row["rows"], "edges": row["edges"]}
        p = ckpt / f"unit-{row['unit']}.json"
        p.with_suffix(".tmp").write_text(json.dumps(rec))
        p.with_suffix(".tmp").replace(p)
        done[row["unit"]] = rec

    worker_args = {
        "store": store,
        "version": ds.version,
        "column": column,
        "index_folder": str(folder),
        "out_uri": staging,
        "k": cfg.k,
        "nprobe": cfg.nprobe,
        "manifest_sha": _manifest_sha(folder),
    }
    execute_units(
        [u for u in units if u["unit"] not in done],
        _KnnWorker,
        worker_args,
        ray_options={"num_cpus": 1},
        on_result=on_result,
        description=f"knn k={cfg.k} (units)",
        show_progress=show_progress,
    )
    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in done[u["unit"]]["fragments"]]
    _commit_graph(store, out, staging, frags, remote)
    shutil.rmtree(ckpt, ignore_errors=True)
    edges = sum(done[u["unit"]]["edges"] for u in units)
    summary = {
        "column": column,
        "k": cfg.k,
        "rows": sum(done[u["unit"]]["rows"] for u in units),
        "edges": edges,
        "path": out,
        "dataset_version": ds.version,
        "fingerprint": manifest.fingerprint,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    store.write_json(f"vector/knn-{column}.json", summary)
    console.print(f"knn graph: {edges} edges (k={cfg.k}) -> {out}")
    return summary


def _checkpointed(store, column: str, ckpt: Path, remote: bool, out: str, n_units: int) -> dict[int, dict]:
    """Units a killed run already finished (their fragment metadata), minus those whose files a
    later run's cleanup removed from the object store (they are computed again)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    done = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in ckpt.glob("unit-*.json")}
    if remote and done:
        for k in _knn_units_without_files(store, column, done):  # e.g. removed by a later run's cleanup
            console.print(f"[yellow]knn: unit {k}'s checkpointed fragments are gone from {out}; computing it again[/]")
            del done[k]
            (ckpt / f"unit-{k}.json").unlink(missing_ok=True)
    if done:
        console.print(f"knn: resuming, {len(done)} of {n_units} units already computed")
    return done


def _commit_graph(store, out: str, staging: str, frags: list, remote: bool) -> None:
    """One atomic commit of all fragments (see ``build_knn``'s docstring for why two ways)."""
    import lance
    from lance import LanceOperation

    if remote:
        from datetime import timedelta

        # one atomic commit onto the graph's URI, then drop the old versions' files
        graph = lance.LanceDataset.commit(out, LanceOperation.Overwrite(KNN_SCHEMA, frags), storage_options=store.storage_options or None)
        graph.cleanup_old_versions(older_than=timedelta(0))
    else:
        # the fragments' files live under the staging dataset; commit them there, then swap it in
        lance.LanceDataset.commit(staging, LanceOperation.Overwrite(KNN_SCHEMA, frags))
        if Path(out).exists():
            shutil.rmtree(out)
        Path(staging).rename(out)


@register_step("vector_knn", KnnConfig, doc="k-NN graph (source, neighbour, similarity) as a Lance table, batched on Ray")
def _knn_step(ctx, cfg: KnnConfig) -> dict:
    return build_knn(ctx.store, cfg, show_progress=ctx.show_progress)
