"""``vector_knn`` (step, ``curate knn``): the k-NN graph as a Lance table.

(source id, neighbour id, similarity, rank): batched queries on Ray actors that load the index
once, one Lance fragment per unit, one commit; resumable per unit; memory bounded by one unit.

Incremental by default: after rows were appended and the index extended, only the new rows are
queried against the index, and an old row's list changes only where a new row beats its k-th
neighbour (each old unit is searched against a flat index of the new rows alone). The graph's
summary records which dataset fragments each graph fragment covers, so the driver holds ids
and fragment metadata only. Anything an update cannot follow (another k, nprobe or column, an
index rebuilt from scratch, rows changed or deleted) is a full rebuild, and the summary says why.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape

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
    full: bool = Field(False, description="recompute the whole graph instead of updating it with the rows added since")
    allow_random_weights: bool = Field(
        False, description="build over embeddings made by randomly initialised weights anyway (noise; the summary marks it)"
    )


def check_knn_weights(store, column: str, allow: bool) -> dict:
    """``check_random_weights`` for the graph of ``column`` (the CLI calls it before Ray starts)."""
    from engines.vector.retrieval import check_random_weights

    return check_random_weights(store, [column], consumer=f"the k-NN graph of {column!r}", allow=allow)


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
    metadata goes back to the driver, which commits.

    Incremental runs add ``new_fragments`` (the appended rows) and ``graph_uri`` /
    ``graph_version`` (the graph being updated): a unit of kind ``update`` holds old rows,
    whose lists are merged with their nearest new rows (``_update``)."""

    def __init__(
        self,
        store,
        version: int,
        column: str,
        index_folder: str,
        out_uri: str,
        k: int,
        nprobe,
        manifest_sha: str | None = None,
        new_fragments: list[int] | None = None,
        graph_uri: str | None = None,
        graph_version: int | None = None,
    ):
        from engines.vector.index import load_index, maybe_gpu

        self.ds = store.open(version)
        if manifest_sha is not None:
            index_folder = str(_worker_index_folder(store, column, index_folder, manifest_sha))
        self.index, self.manifest, labels = load_index(Path(index_folder))
        self.index = maybe_gpu(self.index, self.manifest.config.get("use_gpu"))  # faiss-gpu + a GPU: search there
        self.ids = labels.column("id").combine_chunks()  # Arrow strings: ~15 bytes an id, not a Python str (~60)
        lab = labels.column("label").to_numpy()
        self.pos_of = np.full(int(lab.max()) + 1 if len(lab) else 0, -1, np.int64)
        self.pos_of[lab] = np.arange(len(lab))
        self.column, self.out_uri, self.k, self.nprobe = column, out_uri, k, nprobe
        self.storage_options = store.storage_options or None
        self.new_fragments, self.graph_uri, self.graph_version = new_fragments or [], graph_uri, graph_version
        self._new = None  # (flat index of the new rows, their ids), built by the first update unit

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        out: dict[str, list] = {"unit": [], "fragments": [], "rows": [], "edges": [], "updated": [], "keep": []}
        for unit in batch.to_pylist():
            update = unit.get("kind") == "update"
            table, rows, updated = self._update(unit) if update else (*self._query(unit), 0)
            keep = update and updated == 0  # no new row beats any k-th: the old fragments stay
            frags = (
                write_fragments(table, self.out_uri, schema=KNN_SCHEMA, max_rows_per_file=1 << 24, storage_options=self.storage_options)
                if table.num_rows and not keep
                else []
            )
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["rows"].append(rows)
            out["edges"].append(int(table.num_rows))
            out["updated"].append(updated)
            out["keep"].append(keep)
        return pa.table(out)

    def _vectors(self, fragments: list[int]):
        """(ids, cleaned vectors, valid mask) of some fragments, as the index was built."""
        from engines.vector.index import clean_vectors

        ids, x, null = read_vectors(self.ds, fragments, self.column, self.index.d)
        x, valid, _ = clean_vectors(x, null, normalize=self.manifest.config.get("normalize", True))
        return ids, x, valid

    def _query(self, unit: dict) -> tuple[pa.Table, int]:
        """The lists of a unit's rows, searched in the whole index (the row itself dropped)."""
        from engines.vector.knn import knn_block

        ids, x, valid = self._vectors(unit["fragments"])
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
        src_ids, dst_ids = self.ids.take(pa.array(src_pos[ok])), self.ids.take(pa.array(dst_pos[ok]))
        return _edge_table(src_ids, dst_ids, e["sim"][ok], rank[ok]), int(valid.sum())

    def _new_rows(self):
        """A flat index of the appended rows (positions -> ids): old rows search it for the new
        rows nearer than their k-th neighbour. Memory: the new rows' vectors, once per actor."""
        import faiss

        if self._new is None:
            ids, x, valid = self._vectors(self.new_fragments)
            flat = faiss.IndexFlatIP(self.index.d)
            flat.add(np.ascontiguousarray(x[valid], np.float32))
            self._new = (flat, np.asarray(ids, dtype=object)[valid])
        return self._new

    def _old_lists(self, graph_fragments: list[int]) -> pa.Table:
        """The unit's current lists: the graph fragments that the summary says hold them."""
        import lance

        if not graph_fragments:
            return KNN_SCHEMA.empty_table()
        g = lance.dataset(self.graph_uri, version=self.graph_version, storage_options=self.storage_options)
        return pa.concat_tables([g.get_fragment(f).to_table() for f in graph_fragments])

    def _update(self, unit: dict) -> tuple[pa.Table, int, int]:
        """An old unit's lists merged with its nearest new rows; (table, rows, lists changed)."""
        from engines.vector.knn import merge_neighbours

        ids, x, valid = self._vectors(unit["fragments"])
        flat, new_ids = self._new_rows()
        if not flat.ntotal:  # no usable vector among the new rows: nothing can change
            return KNN_SCHEMA.empty_table(), int(valid.sum()), 0
        src = np.asarray(ids, dtype=object)[valid]
        sims, pos = flat.search(np.ascontiguousarray(x[valid], np.float32), min(self.k, flat.ntotal))
        hit = pos >= 0
        old = self._old_lists(json.loads(unit["graph"]))
        merged, changed = merge_neighbours(
            (
                old.column("source_id").to_numpy(zero_copy_only=False),
                old.column("neighbour_id").to_numpy(zero_copy_only=False),
                old.column("similarity").to_numpy(),
            ),
            (np.repeat(src, pos.shape[1])[hit.ravel()], new_ids[pos[hit]], sims[hit]),
            self.k,
        )
        return _edge_table(*merged), int(valid.sum()), changed


def _edge_table(src, dst, sim, rank) -> pa.Table:
    """``src``, ``dst``: Arrow string arrays (taken from the label table) or arrays of ids."""
    return pa.table(
        {
            "source_id": src if isinstance(src, pa.Array) else pa.array(src, pa.string()),
            "neighbour_id": dst if isinstance(dst, pa.Array) else pa.array(dst, pa.string()),
            "similarity": pa.array(sim, pa.float32()),
            "rank": pa.array(rank, pa.int16()),
        },
        schema=KNN_SCHEMA,
    )


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


@dataclass
class _Job:
    """What every part of one ``build_knn`` run needs (no graph data: ids and metadata only)."""

    store: object
    cfg: KnnConfig
    column: str
    ds: object
    folder: Path
    manifest: object
    remote: bool
    out: str


@dataclass
class _Plan:
    """An incremental run: the old summary, its graph version and the appended fragments."""

    old: dict
    graph_version: int
    new_frags: list


def build_knn(store, cfg: KnnConfig, *, show_progress: bool = True) -> dict:
    """The k-NN graph of every indexed row, as a Lance table next to the dataset (``knn_uri``):
    updated with the rows appended since the last graph when it can be (``_plan``), else whole.

    Full build: actors write one set of fragments per unit and return their metadata; the driver
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

    Incremental update (``_build_incremental``): new fragments written into the graph's URI and
    one ``Update`` commit there (atomic too), local or remote.
    """
    t0 = time.perf_counter()
    column = cfg.column or default_column(store)
    random_derived = check_knn_weights(store, column, cfg.allow_random_weights)  # before any work
    job = _job(store, cfg, column)
    plan = _plan(job)
    if isinstance(plan, dict):
        return plan  # up to date
    summary = _build_incremental(job, plan, show_progress) if isinstance(plan, _Plan) else _build_full(job, plan, show_progress)
    summary |= {
        "column": job.column,
        "k": cfg.k,
        "nprobe": cfg.nprobe,
        "path": job.out,
        "dataset_version": job.ds.version,
        "fingerprint": job.manifest.fingerprint,
        "index_origin": _origin(job.manifest),
        "index_fragments": job.manifest.config.get("fragments", {}),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if random_derived:
        summary["random_derived"] = {c: f"{m['group']}: {m['why']}" for c, m in random_derived.items()}
    store.write_json(f"vector/knn-{job.column}.json", summary)
    how = (
        summary["mode"]
        if summary["mode"] == "full"
        else f"incremental: {summary['new_rows']} new rows, {summary['updated_lists']} old lists updated"
    )
    why = f" ({summary['why_full']})" if summary.get("why_full") else ""
    console.print(f"knn graph: {how}{why}; {summary['edges']} edges (k={cfg.k}) -> {job.out}", markup=False)
    return summary


def _job(store, cfg: KnnConfig, column: str) -> _Job:
    """The column, its fresh index's manifest and where the graph goes; errors before any work."""
    from curation.store import is_remote
    from engines.vector.index import VectorError, check_fresh, load_index
    from engines.vector.retrieval import pull_index

    folder = pull_index(store, column)  # remote dataset: the index may have been built on another node
    index, manifest, _ = load_index(folder, with_labels=False)
    ds = store.open()
    check_fresh(manifest, ds, store.uri)  # an index older than the rows would give a silently wrong graph
    if index.ntotal < 2:
        raise VectorError(f"the index holds {index.ntotal} vector(s): a k-NN graph needs at least 2 rows")
    return _Job(store, cfg, column, ds, folder, manifest, is_remote(store.uri), knn_uri(store, column))


def _origin(manifest) -> float | None:
    """When the index was first built: an incremental index keeps it, a rebuild starts anew."""
    return manifest.history[0].get("time") if manifest.history else None


def _plan(job: _Job) -> _Plan | str | dict:
    """An incremental plan, the reason for a full build (str), or the summary when up to date."""
    cfg, old = job.cfg, job.store.read_json(f"vector/knn-{job.column}.json")
    if cfg.full:
        return "asked for with --full"
    if not old or "units" not in old:
        return "no graph to update" if not old else "the graph predates incremental updates"
    if (old.get("k"), old.get("nprobe")) != (cfg.k, cfg.nprobe):
        return f"the graph was built with k={old.get('k')}, nprobe={old.get('nprobe')}"
    if old.get("index_origin") != _origin(job.manifest) or job.manifest.metric != "ip":
        return "the index was rebuilt from scratch since the graph" if job.manifest.metric == "ip" else "metric is not ip"
    try:
        version = open_knn(job.store, job.column).version
    except (ValueError, OSError):
        return "the graph is missing"
    if version != old.get("graph_version"):
        return "the graph changed since its summary was written"
    cur, seen = job.manifest.config.get("fragments", {}), old.get("index_fragments", {})
    if any(cur.get(f) != sig for f, sig in seen.items()):
        return "rows changed or were deleted since the graph"
    new = [job.ds.get_fragment(int(f)) for f in cur if f not in seen]
    if [f.fragment_id for f in new] != [f.fragment_id for f in job.ds.get_fragments()][len(seen) :]:
        return "the new fragments are not the dataset's last ones"  # their index labels would not be positions
    if not new:
        _up_to_date(job, old)
        return old
    n_new = sum(f.count_rows() for f in new)
    if n_new > old.get("rows", 0):
        return f"{n_new} new rows outnumber the {old.get('rows', 0)} in the graph (a full build is cheaper)"
    return _Plan(old, version, new)


def _up_to_date(job: _Job, old: dict) -> None:
    """Nothing appended: the summary takes the index's fingerprint (other columns may have
    changed the dataset version), so dedup does not ask for a new graph."""
    old.update(fingerprint=job.manifest.fingerprint, dataset_version=job.ds.version)
    job.store.write_json(f"vector/knn-{job.column}.json", old)
    console.print(f"knn graph on {job.column!r} is up to date (k={job.cfg.k}, {old.get('edges')} edges)", markup=False)


def _run_units(job: _Job, units: list[dict], ckpt: Path, out_uri: str, show_progress: bool, **extra) -> dict[int, dict]:
    """Run the units not checkpointed yet on ``_KnnWorker`` actors; every unit's record."""
    from curation.runner import execute_units

    done = _checkpointed(job.store, job.column, ckpt, job.remote, job.out, len(units))

    def on_result(row: dict) -> None:
        rec = {k: row[k] for k in ("rows", "edges", "updated", "keep")} | {"fragments": json.loads(row["fragments"])}
        p = ckpt / f"unit-{row['unit']}.json"
        p.with_suffix(".tmp").write_text(json.dumps(rec))
        p.with_suffix(".tmp").replace(p)
        done[row["unit"]] = rec

    worker_args = {
        "store": job.store,
        "version": job.ds.version,
        "column": job.column,
        "index_folder": str(job.folder),
        "out_uri": out_uri,
        "k": job.cfg.k,
        "nprobe": job.cfg.nprobe,
        "manifest_sha": _manifest_sha(job.folder),
        **extra,
    }
    execute_units(
        [u for u in units if u["unit"] not in done],
        _KnnWorker,
        worker_args,
        ray_options={"num_cpus": 1},
        on_result=on_result,
        description=f"knn k={job.cfg.k} (units)",
        show_progress=show_progress,
    )
    return done


def _build_full(job: _Job, why: str, show_progress: bool) -> dict:
    """Every row queried against the index (see ``build_knn``)."""
    from lance.fragment import FragmentMetadata

    units, _ = fragment_units(job.ds.get_fragments(), job.cfg.rows_per_unit, 0)  # labels = positions, as build_index's
    staging = job.out if job.remote else job.out + ".staging"
    # checkpoints stay on the driver (remote: its local cache), next to the graph for a local dataset
    ckpt = Path(job.store.state_dir) / "vector" / f"knn-{job.column}-ckpt-v{job.ds.version}-k{job.cfg.k}"
    done = _run_units(job, units, ckpt, staging, show_progress)
    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in done[u["unit"]]["fragments"]]
    _commit_graph(job.store, job.out, staging, frags, job.remote)
    shutil.rmtree(ckpt, ignore_errors=True)
    graph = open_knn(job.store, job.column)
    ids = iter(f.fragment_id for f in graph.get_fragments())  # Overwrite keeps the order given
    recs = [done[u["unit"]] for u in units]
    return {
        "mode": "full",
        "why_full": why,
        "rows": sum(r["rows"] for r in recs),
        "queried": sum(r["rows"] for r in recs),
        "new_rows": 0,
        "updated_lists": 0,
        "edges": graph.count_rows(),
        "graph_version": graph.version,
        "units": [
            {"fragments": u["fragments"], "rows": r["rows"], "graph": [next(ids) for _ in r["fragments"]]} for u, r in zip(units, recs)
        ],
    }


def _build_incremental(job: _Job, plan: _Plan, show_progress: bool) -> dict:
    """New rows queried against the index, old units merged with their nearest new rows, one
    ``Update`` commit that swaps the changed units' fragments and adds the new ones."""
    starts = np.cumsum([0] + [f.count_rows() for f in job.ds.get_fragments()])
    first = {f.fragment_id: int(s) for f, s in zip(job.ds.get_fragments(), starts)}
    new_units, _ = fragment_units(plan.new_frags, job.cfg.rows_per_unit, first[plan.new_frags[0].fragment_id])
    units = [u | {"kind": "new", "graph": "[]"} for u in new_units]
    for u in plan.old["units"]:
        units.append(
            {
                "unit": len(units),
                "kind": "update",
                "fragments": u["fragments"],
                "label_start": 0,
                "rows": u["rows"],
                "graph": json.dumps(u["graph"]),
            }
        )
    ckpt = Path(job.store.state_dir) / "vector" / f"knn-{job.column}-inc-g{plan.graph_version}-v{job.ds.version}-k{job.cfg.k}"
    new_ids = [f.fragment_id for f in plan.new_frags]
    done = _run_units(job, units, ckpt, job.out, show_progress, new_fragments=new_ids, graph_uri=job.out, graph_version=plan.graph_version)
    graph = _commit_update(job, plan, units, done)
    shutil.rmtree(ckpt, ignore_errors=True)
    recs = [done[u["unit"]] for u in units]
    queried = sum(r["rows"] for u, r in zip(units, recs) if u["kind"] == "new")
    return {
        "mode": "incremental",
        "rows": sum(r["rows"] for r in recs),
        "queried": queried,
        "new_rows": queried,
        "updated_lists": sum(r["updated"] for r in recs),
        "edges": graph.count_rows(),
        "graph_version": graph.version,
        "units": [{"fragments": u["fragments"], "rows": r["rows"], "graph": u["graph_ids"]} for u, r in zip(units, recs)],
    }


def _commit_update(job: _Job, plan: _Plan, units: list[dict], done: dict[int, dict]):
    """Replace the graph fragments of changed units and add the new units' ones (one atomic
    version), then note in each unit the graph fragment ids that now hold its lists."""
    from datetime import timedelta

    import lance
    from lance import LanceOperation
    from lance.fragment import FragmentMetadata

    removed, added = [], []
    for u in units:
        rec = done[u["unit"]]
        if rec["keep"]:
            u["graph_ids"] = json.loads(u["graph"])
            continue
        removed += json.loads(u["graph"])
        added += [FragmentMetadata.from_json(json.dumps(f)) for f in rec["fragments"]]
    op = LanceOperation.Update(removed_fragment_ids=removed, new_fragments=added)
    so = job.store.storage_options or None
    before = {f.fragment_id for f in open_knn(job.store, job.column).get_fragments()}
    graph = lance.LanceDataset.commit(job.out, op, read_version=plan.graph_version, storage_options=so)
    graph.cleanup_old_versions(older_than=timedelta(0))  # the replaced fragments' files
    ids = iter(f.fragment_id for f in graph.get_fragments() if f.fragment_id not in before)  # in the order given
    for u in units:
        if not done[u["unit"]]["keep"]:
            u["graph_ids"] = [next(ids) for _ in done[u["unit"]]["fragments"]]
    return graph


def _checkpointed(store, column: str, ckpt: Path, remote: bool, out: str, n_units: int) -> dict[int, dict]:
    """Units a killed run already finished (their fragment metadata), minus those whose files a
    later run's cleanup removed from the object store (they are computed again)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    done = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in ckpt.glob("unit-*.json")}
    if remote and done:
        for k in _knn_units_without_files(store, column, done):  # e.g. removed by a later run's cleanup
            console.print(f"[yellow]knn: unit {k}'s checkpointed fragments are gone from {escape(str(out))}; computing it again[/]")
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


@register_step(
    "vector_knn", KnnConfig, doc="k-NN graph (source, neighbour, similarity) as a Lance table, batched on Ray", writes=frozenset()
)
def _knn_step(ctx, cfg: KnnConfig) -> dict:
    return build_knn(ctx.store, cfg, show_progress=ctx.show_progress)
