"""The dedup job's near-duplicate phases on Ray: candidates from a sharded approximate index,
then the pairs accepted (cheap signals or local-feature verification), all on workers.

Why this shape: the in-memory search (``engines.vector.dedup.region_candidates``) holds every
row's 12 descriptors in one process and searches them exactly: n^2 work and n x 12 x 231 floats
of memory. Here the driver keeps the row ids only, and what comes back is the accepted pairs
(the exact copies are found on workers too: ``pipelines.dedup_exact``):

1. index: an IVF (or, for small data, flat) index of every row's full-frame, 10 regional and
   content-box descriptors (label = row position x 12 + slot) is trained on a sample in a Ray task, filled
   in shards on workers (one checkpointed shard per unit of fragments), and merged by one Ray
   task into a file the query actors load once.
2. candidates: each query unit reads its rows' descriptors, queries the full frame in the 8
   orientations of the dihedral group (``candidate_queries``: mirrors and quarter turns, computed
   from the stored vector), the two centre regions and the content box (a screenshot finds its
   photo), reduces hits to each row's ``k`` best other rows (``top_owners``) and writes
   the pairs (i < j, similarity) as fragments of a Lance edge table; the driver
   commits them once. Checkpointed per unit.
3. accept: each unit takes the edges whose smaller end lies in its range of rows (a pair found
   from both ends is verified once), reads the pHash and size of their rows, accepts those the
   cheap signals decide, verifies the rest
   with mirror-aware ORB + RANSAC on its own images, and returns the accepted pairs.
   Checkpointed per unit. A pair the last run verified (same images) takes that run's outcome
   (``pipelines.dedup_kept``); every outcome of this run is kept for the next.

Every phase's state lives under ``<state>/vector/dedup-v<version>-<config hash>/``: a killed run,
re-run, finishes only the missing units.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console

from curation.schema import VEC_DESC_DIM
from engines.vector.dedup import CENTRE_REGIONS, NearDupConfig
from engines.vector.descriptor import N_REGIONS
from engines.vector.index import IndexConfig
from pipelines.descriptors import fragment_units

__all__ = ["EDGE_SCHEMA", "NearJob", "near_pairs_on_ray"]

console = Console(stderr=True)

EDGE_SCHEMA = pa.schema(
    [
        pa.field("i", pa.int64()),  # row position (fragment order), the smaller end
        pa.field("j", pa.int64()),
        pa.field("sim", pa.float32()),  # best descriptor cosine over regions and orientations
    ]
)
SLOTS = 1 + N_REGIONS  # full frame + 10 regions + the content box per row
EXTEND_MAX = 2
"""A kept candidate index is extended up to this many times the rows it was trained for; beyond,
its lists (sized for fewer rows) would slow every search, and the job trains a new one."""


class NearJob:
    """Where one dedup run keeps its state, and the units it splits the dataset into."""

    def __init__(
        self,
        store,
        ds,
        cfg: NearDupConfig,
        index_cfg: IndexConfig,
        rows_per_unit: int,
        key: str,
        resources: dict | None = None,
        scan_pass_bytes: int | None = None,
        scan_group_rows: int | None = None,
        keep: bool = True,
    ):
        self.store, self.ds, self.cfg, self.index_cfg = store, ds, cfg, index_cfg
        self.keep = keep  # use and keep what runs after an append extend (``dedup_kept``)
        self.scan_pass_bytes = scan_pass_bytes  # candidate lists scanned per pass (None: a third of memory)
        self.scan_group_rows = scan_group_rows  # rows whose queries scan the lists together (None: ``_group_units``)
        self.resources = resources or {}  # phase -> custom Ray resources its actors require
        self.folder = Path(store.state_dir) / "vector" / f"dedup-v{ds.version}-{key}"
        self.key, self.prior_why = key, ""
        self.units, self.prior = self._plan(rows_per_unit)  # positions in fragment order, as ds.take
        self.n = int(sum(u["rows"] for u in self.units))
        self.n_old = self.prior["rows"] if self.prior else 0  # rows whose search the last run did
        self.largest_unit = max([u["rows"] for u in self.units], default=0)  # what an actor's memory reservation counts

    def _plan(self, rows_per_unit: int) -> tuple[list[dict], dict | None]:
        """The units, and the last run's candidate search this job extends (``dedup_kept``), if
        any: chosen when the job folder is made and saved in it, so a resumed job has the same
        units (its checkpoints are by unit) whatever was kept since. With a search to extend, no
        unit mixes the rows it covered with new ones."""
        from pipelines.dedup_kept import prior_near

        saved = self.folder / "units.json"
        if saved.exists():
            plan = json.loads(saved.read_text())
            return plan["units"], plan["prior"]
        fresh = not self.folder.exists() or not any(self.folder.iterdir())  # a job folder of an older version: as it was
        use = fresh and self.keep
        prior, self.prior_why = prior_near(self.store, self.ds, self.key, self._can_extend) if use else (None, "")
        frags = self.ds.get_fragments()
        cut = len(frags) - prior["new_fragments"] if prior else len(frags)
        old, n_old = fragment_units(frags[:cut], rows_per_unit, 0)
        new, _ = fragment_units(frags[cut:], rows_per_unit, n_old)
        units = old + [{**u, "unit": u["unit"] + len(old)} for u in new]
        self.folder.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_text(json.dumps({"units": units, "prior": prior}))
        saved.with_suffix(".tmp").replace(saved)
        return units, prior

    def new_units(self) -> list[dict]:
        """Units of rows the kept search does not cover (every unit without one)."""
        return [u for u in self.units if u["label_start"] >= self.n_old]

    @property
    def owners_staging(self) -> str | None:
        """Where the candidate units write their rows' owners (kept for the next run); None:
        nothing is kept."""
        return str(self.folder / "owners.staging") if self.keep else None

    @property
    def new_index(self) -> Path:
        """The index of the new rows alone, which the old rows' queries search."""
        return self.folder / "new.faiss"

    def index_kind(self, rows: int) -> str:
        """The candidate index's kind for this many rows: ``auto`` = exact up to ``flat_max``
        vectors, IVF-Flat above (near duplicates are decided on these cosines: no lossy codes)."""
        if self.index_cfg.kind != "auto":
            return self.index_cfg.kind
        return "flat" if rows * SLOTS <= self.index_cfg.flat_max else "ivfflat"

    def _can_extend(self, rec: dict, rows: int) -> bool:
        """A kept index serves up to twice the rows it was trained for, if their count asks for
        the same kind (a flat index outgrows ``flat_max``; IVF lists grow with the rows)."""
        return rec.get("kind") == self.index_kind(rows) and rows <= EXTEND_MAX * rec["trained_rows"]

    def ray_options(self, phase: str, **base) -> dict[str, Any]:
        """Ray options of a phase's actors: one CPU (and what ``base`` adds), plus the custom
        resources the config asks for that phase (e.g. candidate actors on big-memory nodes)."""
        extra = self.resources.get(phase)
        return {"num_cpus": 1, **base, **({"resources": dict(extra)} if extra else {})}

    def done(self, phase: str) -> dict[int, Any]:
        """Checkpointed results of a phase, by unit."""
        return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (self.folder / phase).glob("unit-*.json")}

    def save(self, phase: str, unit: int, rec: Any) -> None:
        d = self.folder / phase
        d.mkdir(exist_ok=True)
        p = d / f"unit-{unit}.json"
        p.with_suffix(".tmp").write_text(json.dumps(rec))
        p.with_suffix(".tmp").replace(p)


def _read_descriptors(ds, fragments: list[int], regions: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(full n x d, regions n x 10 x d or None, valid mask) of some fragments, float32, unit norm."""
    from engines.vector.index import clean_vectors, to_matrix

    cols = ["vec_desc", "vec_regions"] if regions else ["vec_desc"]
    t = pa.concat_tables([ds.get_fragment(f).to_table(columns=cols) for f in fragments])
    full, null = to_matrix(t.column("vec_desc"))
    full, valid, _ = clean_vectors(full, null)
    if not regions:
        return full, None, valid
    reg, rnull = to_matrix(t.column("vec_regions"), unit=full.shape[1])
    reg = reg.reshape(len(full), -1, full.shape[1])
    return full, reg, valid & ~rnull


def _slot_vectors(full: np.ndarray, reg: np.ndarray, valid: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The SLOTS vectors of each valid row and their labels (position x SLOTS + slot): the
    training sample's rows, a fixed count per row (so its places are known from the full-frame
    column alone). The index itself leaves out repeated content boxes (``entry_table``)."""
    from engines.vector.dedup import entry_table

    pos = np.flatnonzero(valid)
    return entry_table(full[pos], reg[pos], start + pos, SLOTS, repeats=True)


# --- 1. the index -------------------------------------------------------------------------------


class _ShardWorker:
    """Ray actor: adds the 12 descriptors of each row of some fragments to a copy of the trained
    index and writes it as the unit's shard file (a temporary name, then renamed). The shard goes
    straight to the job folder, as the merged index does: through the object store and the driver
    it was 10 GB at 1M rows, and the driver's largest allocation."""

    def __init__(self, store, version: int, trained: str, shards: str, router: str | None = None):
        import faiss

        from engines.vector.index import ListRouter

        self.ds = store.open(version)
        self.trained = faiss.read_index(trained)  # a file in the job folder, as the shards: not through the driver
        self.shards = Path(shards)
        self.router = ListRouter.load(Path(router)) if router else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.dedup import entry_table
        from engines.vector.index import add_routed, add_vectors
        from engines.vector.ondisk import empty_like, write_shard

        out: dict[str, list] = {"unit": [], "vectors": []}
        for unit in batch.to_pylist():
            full, reg, valid = _read_descriptors(self.ds, unit["fragments"], regions=True)
            shard = empty_like(self.trained)
            pos = np.flatnonzero(valid)
            x, labels = entry_table(full[pos], reg[pos], unit["label_start"] + pos, SLOTS)
            del full, reg
            if self.router is not None:
                add_routed(shard, x, labels, self.router)
            else:
                add_vectors(shard, x, labels)
            p = self.shards / f"unit-{unit['unit']}.faiss"
            write_shard(shard, str(p.with_suffix(".tmp")))  # its lists only: the merge reads nothing else
            p.with_suffix(".tmp").replace(p)
            out["unit"].append(unit["unit"])
            out["vectors"].append(int(shard.ntotal))
        return pa.table(out)


TRAIN_READ_ROWS = 4096
"""Rows of the index's training sample read at a time (``_train``)."""
TRAIN_SPILL_BYTES = 64 << 20
"""A training set larger than this is assembled in a memory-mapped file in the job folder."""


def _train(
    store,
    version: int,
    n: int,
    cfg: IndexConfig,
    out_path: str,
    router_path: str,
    scratch: str | None = None,
    *,
    read_rows: int = TRAIN_READ_ROWS,
    spill_bytes: int = TRAIN_SPILL_BYTES,
    threads: int = 1,
) -> str:
    """Ray task: an empty index trained on a sample of rows' 12 descriptors, written to
    ``out_path`` (the job folder: the workers read it there, not through the driver, where it
    is nlist x 231 floats: ~45 MB at 1M rows, growing with the rows), and the router of its
    lists (``router_path``, when the index has lists). Returns what was trained, in words.

    Memory: the training set is 40 vectors per list (``train_points``) and the lists grow with
    the rows (``list_size``), so it is 1.72 x n descriptors (1.6 GB at 1M rows, 16 GB at 10M).
    Read whole, then cleaned, cut into slots and subsampled, it was held 3-4 times over (the
    Arrow float16 columns, their float32 copies, the slot matrix, the drawn subset): 0.9 GiB
    private at 100k rows, 2.3 GiB at 300k, and by that growth the 6.6 GiB largest worker of the
    1M run (bench/dedup_scale.py, docs/benchmarks.md). Now the sampled rows are read
    ``read_rows`` at a time, and each chunk's vectors go straight to their place in the training
    set (``training_subset``: the same vectors in the same order as before, so the same index);
    a training set above ``spill_bytes`` is a memory-mapped file in ``scratch`` (the job
    folder), whose pages the kernel can write out and drop: the task's own memory is then one
    chunk, the first-level k-means subsample (2,000 per first-level cluster) and one
    second-level cluster's vectors.

    ``threads``: the CPUs the task holds (FAISS's k-means over them). Nothing else of the job
    runs while it trains, and its k-means grows faster than the rows (the sample x 2 sqrt(nlist)
    products): measured at 1M rows' sample, 75 s on one thread, 47 s on two."""
    import faiss

    from engines.vector.index import ListRouter, train_index, train_points

    faiss.omp_set_num_threads(threads)
    ds = store.open(version)
    want = max(1, train_points(n * SLOTS, cfg) // SLOTS + 1)
    rng = np.random.default_rng(cfg.seed)
    pos = np.sort(rng.choice(n, min(want, n), replace=False))
    chunks = [pos[s : s + read_rows] for s in range(0, len(pos), read_rows)]
    dest, size = _training_places(ds, chunks, n, cfg)
    n_sample = len(dest)
    spill = None
    if scratch is not None and size * VEC_DESC_DIM * 4 > spill_bytes:
        Path(scratch).mkdir(parents=True, exist_ok=True)
        spill = Path(scratch) / "train-sample.npy"
        x = np.lib.format.open_memmap(spill, mode="w+", dtype=np.float32, shape=(size, VEC_DESC_DIM))
    else:
        x = np.empty((size, VEC_DESC_DIM), np.float32)
    try:
        at = 0
        for c in chunks:  # pass 2: the 12 vectors of each valid row, in the order of the sample
            full, reg, ok = _sample_rows(ds, c, regions=True)
            xc, _ = _slot_vectors(full, reg, ok, 0)
            d = dest[at : at + len(xc)]
            x[d[d >= 0]] = xc[d >= 0]
            at += len(xc)
        if at != n_sample:
            raise RuntimeError(f"index training sample changed while read ({at:,} vectors, expected {n_sample:,})")
        trained, kind, spec = train_index(x, n * SLOTS, cfg)
    finally:
        del x
        if spill is not None:
            spill.unlink(missing_ok=True)
    router = ListRouter.of(trained)
    if router is not None:
        router.save(Path(router_path))
    faiss.write_index(trained, out_path + ".tmp")
    Path(out_path + ".tmp").replace(out_path)
    return f"{kind} index ({spec}) over up to {n * SLOTS:,} descriptors, trained on {size:,}"


def _training_places(ds, chunks: list[np.ndarray], n: int, cfg: IndexConfig) -> tuple[np.ndarray, int]:
    """Pass 1 of ``_train``, over the full-frame column only (1/12 of the bytes): which sampled
    rows give vectors, hence the sample's size and the drawn subset (``training_subset``), known
    before any vector is read. Returns (each sample vector's place in the training set or -1,
    the training set's size)."""
    from engines.vector.index import training_subset

    valid = np.concatenate([_sample_rows(ds, c, regions=False)[2] for c in chunks]) if chunks else np.zeros(0, bool)
    n_sample = int(valid.sum()) * SLOTS
    pick = training_subset(n_sample, n * SLOTS, cfg)
    if pick is None:
        return np.arange(n_sample), n_sample
    dest = np.full(n_sample, -1, np.int64)
    dest[pick] = np.arange(len(pick))
    return dest, len(pick)


def _sample_rows(ds, pos: np.ndarray, regions: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(full n x d, regions n x 10 x d or None, valid) of the rows at ``pos``, as the training
    sample takes them: float32, the full frame cleaned (valid = a usable full-frame descriptor)."""
    from engines.vector.index import clean_vectors, to_matrix

    t = ds.take(pos.tolist(), columns=["vec_desc", "vec_regions"] if regions else ["vec_desc"])
    full, null = to_matrix(t.column("vec_desc"))
    full, valid, _ = clean_vectors(full, null)
    if not regions:
        return full, None, valid
    reg, _ = to_matrix(t.column("vec_regions"), unit=full.shape[1])
    return full, reg.reshape(len(full), -1, full.shape[1]), valid


def build_region_index(job: NearJob, show_progress: bool) -> Path:
    """Phase 1: the merged index file of every row's 12 descriptors (resumable per shard)."""
    import ray

    from curation.cluster import largest_node_cpus
    from curation.runner import execute_units
    from engines.vector.ondisk import merge_index

    out = job.folder / "regions.faiss"
    shards = job.folder / "shards"
    if job.prior and job.n == job.n_old:  # nothing appended: the kept index is this version's
        return Path(job.prior["index"])
    if out.exists():
        shutil.rmtree(shards, ignore_errors=True)  # left by a job killed right after its merge
        return out
    trained_path, router_path = job.folder / "trained.faiss", job.folder / "router.npz"
    if job.prior:  # the kept trained index and router, copied: this folder is kept in turn
        _copy_once(job.prior["trained"], trained_path)
        _copy_once(job.prior.get("router"), router_path)
    if not trained_path.exists():
        cfg = job.index_cfg.model_copy(update={"kind": job.index_kind(job.n)})
        threads, t = largest_node_cpus(), time.perf_counter()
        what = ray.get(
            ray.remote(num_cpus=threads)(_train).remote(
                job.store, job.ds.version, job.n, cfg, str(trained_path), str(router_path), str(job.folder), threads=threads
            )
        )
        console.print(f"dedup candidates: {what} ({time.perf_counter() - t:.0f} s on {threads} CPUs)")
    trained = str(trained_path)
    shards.mkdir(exist_ok=True)
    # a merge cuts the shards short but deletes none before it ends: an existing file is done
    todo = [u for u in job.new_units() if not (shards / f"unit-{u['unit']}.faiss").exists()]
    execute_units(
        todo,
        _ShardWorker,
        {"store": job.store, "version": job.ds.version, "trained": trained, "shards": str(shards), "router": _router_file(job)},
        ray_options=job.ray_options("index", memory=_shard_memory(trained_path, router_path, job.largest_unit)),
        on_result=lambda row: None,  # the worker wrote the shard file: its existence is the checkpoint
        description="dedup: index descriptors (units)",
        show_progress=show_progress,
    )
    paths = [str(shards / f"unit-{u['unit']}.faiss") for u in job.new_units()]
    t = time.perf_counter()
    merge = ray.remote(num_cpus=1)(merge_index)
    if job.prior:  # the new rows alone first (for the old rows' queries), on copies: a merge cuts its shards
        copies = [_copy_once(p, Path(p).with_suffix(".copy")) for p in paths] if not job.new_index.exists() else []
        ray.get(merge.remote(trained, [str(c) for c in copies], str(job.new_index))) if copies else None
        for c in copies:
            c.unlink(missing_ok=True)
    ntotal = ray.get(merge.remote(trained, paths, str(out), base=job.prior["index"] if job.prior else None))
    shutil.rmtree(shards, ignore_errors=True)
    console.print(f"dedup candidates: index of {ntotal:,} descriptors -> {out} (merged in {time.perf_counter() - t:.0f} s)", markup=False)
    return out


def _copy_once(src: str | None, dst: Path) -> Path:
    """``src`` copied to ``dst`` unless there already (a temporary name, then renamed)."""
    if src and not dst.exists():
        shutil.copyfile(src, str(dst) + ".tmp")
        Path(str(dst) + ".tmp").replace(dst)
    return dst


def _router_file(job: NearJob) -> str | None:
    """The router of the index's lists (``ListRouter``): written by the training task; none for
    a flat index."""
    p = job.folder / "router.npz"
    return str(p) if p.exists() else None


# --- 2. candidate pairs ---------------------------------------------------------------------------


class _CandidateWorker:
    """Ray actor: loads the region index once; per unit, the k best other rows of each of its rows
    in any orientation, written as Lance fragments of the edge table (metadata back to the driver)."""

    def __init__(
        self,
        store,
        version: int,
        index_path: str,
        edges_uri: str,
        cfg: dict,
        nprobe: int,
        use_gpu: bool | None,
        router: str | None = None,
        lists: tuple[int, int] | None = None,
        part_dir: str | None = None,
        prior: dict | None = None,
        owners_uri: str | None = None,
    ):
        from engines.vector.index import ListRouter, list_major_ok, maybe_gpu

        self.ds = store.open(version)
        import faiss

        # memory-mapped lists: the actors of one node share the file's pages in the OS page cache
        # (one copy per node, not per actor), and an index larger than memory still searches
        self.index = maybe_gpu(faiss.read_index(index_path, faiss.IO_FLAG_MMAP_IFC), use_gpu)
        self.list_major = list_major_ok(self.index)
        self.router = ListRouter.load(Path(router)) if router and self.list_major else None
        self.edges_uri, self.cfg, self.nprobe = edges_uri, NearDupConfig(**cfg), nprobe
        self.lists, self.part_dir = (tuple(lists) if lists else None), part_dir
        self.prior, self.owners_uri = prior, owners_uri  # the kept owners to merge, where to keep the new ones

    def __call__(self, batch: pa.Table) -> pa.Table:
        groups = [json.loads(g) for g in batch.column("units").to_pylist()]
        if self.part_dir:  # one pass of several: each row's best owners in this pass's lists
            for units in groups:
                for unit, (q, o, v, c) in zip(units, self.group_hits(units)):
                    _save_npz(Path(self.part_dir) / f"unit-{unit['unit']}.npz", q=q, o=o, v=v, c=c)
            return pa.table({"unit": [u["unit"] for units in groups for u in units]})
        done = [_unit_edges(u, h, self.cfg, self.prior, self.owners_uri) for units in groups for u, h in zip(units, self.group_hits(units))]
        return _edge_rows(done, self.edges_uri)

    def group_hits(self, units: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Each unit's rows' k best other rows (row, owner, similarity, from the centre quota).

        The units' queries scan the lists together (one ``search_above``): a list visit is one
        product of its codes with the queries that probe it, and its overhead (~28 us, against
        ~1.6 us a query: ``bench/list_scan.py``) is paid once per visit. Unit by unit, a unit's
        queries met ~31 a list at 3M rows and ~9 at 10M, and the visits grew as units x lists
        (N^2); a group of units sized to the lists (``_group_units``) keeps ~32. In a pass, only
        the queries probing its lists are kept (about 2 / passes of them): the group holds those,
        one unit's descriptors at a time. The hits are each unit's own, as searched alone."""
        from engines.vector.index import search_above

        if not self.list_major:  # flat or GPU: FAISS's own k-nearest search, unit by unit
            return [self.hits(u) for u in units]
        kept: list[tuple[np.ndarray, np.ndarray]] = []  # each block's queries (in this pass's lists) and probes
        blocks: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (unit, rows, query's row, kept queries)
        for u, unit in enumerate(units):
            probes = self._probe_file(unit)
            for rows, queries, query_row, probe in self._unit_queries(unit, probes):
                keep = self._in_lists(probe)  # None: every query (no copy)
                kept.append((queries, probe) if keep is None else (queries[keep], probe[keep]))
                blocks.append((u, rows, query_row, np.arange(len(queries)) if keep is None else np.flatnonzero(keep)))
        starts = np.cumsum([0] + [len(b[3]) for b in blocks])
        q, probe = _stacked([x for x, _ in kept], (0, VEC_DESC_DIM), np.float32), _stacked([p for _, p in kept], (0, self.nprobe), np.int32)
        del kept
        qi, nn, sims = search_above(
            self.index,
            q,
            self.cfg.min_candidate_sim,
            nprobe=self.nprobe,
            per_list=self._per_list(),
            router=self.router,
            lists=self.lists,
            probe=probe,
        )
        del q, probe
        block_of = np.searchsorted(starts, qi, side="right") - 1
        order = np.argsort(block_of, kind="stable")  # by block, each block's hits in the order searched
        cuts = np.searchsorted(block_of[order], np.arange(len(blocks) + 1))
        parts: list[list] = [[] for _ in units]
        for b, (u, rows, query_row, kept_q) in enumerate(blocks):
            h = order[cuts[b] : cuts[b + 1]]
            parts[u].append(self._reduce(kept_q[qi[h] - starts[b]], nn[h], sims[h], query_row, rows))
        return [tuple(np.concatenate(x) for x in zip(*p)) if p else _no_hits() for p in parts]

    def _probe_file(self, unit: dict) -> Path | None:
        """Where a pass keeps the unit's routed queries (routed by the first pass, read by the
        others: routing was most of a shard actor's time at 10M rows); none outside passes."""
        return Path(self.part_dir).parent / "probes" / f"unit-{unit['unit']}.npz" if self.part_dir else None

    def _unit_queries(self, unit: dict, probes: Path | None):
        """Per block of the unit's rows: (rows, queries, each query's row, its ``nprobe`` lists).
        Blocks bound the memory of building and routing; the probes are saved after the last."""
        from engines.vector.index import route_queries

        full, reg, valid = _read_descriptors(self.ds, unit["fragments"], regions=True)
        pos = np.flatnonzero(valid)
        split = [p for p in np.array_split(pos, max(1, len(pos) // self._block_rows())) if len(p)]
        routed = _load_probes(probes, len(split))
        for b, p in enumerate(split):
            queries, query_row = self._queries(full[p], reg[p], unit["label_start"] + p)
            probe = routed.get(f"b{b}") if routed is not None else None
            if probe is None:
                probe = route_queries(self.index, queries, self.nprobe, self.router).astype(np.int32)
                if routed is not None:
                    routed[f"b{b}"] = probe
            yield len(p), queries, query_row, probe
        if probes is not None and routed is not None and not probes.exists():
            _save_npz(probes, **routed)

    def _in_lists(self, probe: np.ndarray) -> np.ndarray | None:
        """Queries probing at least one list of this pass; None outside passes (every query)."""
        if self.lists is None:
            return None
        return ((probe >= self.lists[0]) & (probe < self.lists[1])).any(axis=1)

    def _per_list(self) -> int:
        """Hits kept per query and list (or per query, FAISS's search): each row's k owners in
        any of its 12 slots, plus itself."""
        return min((self.cfg.k + 1) * SLOTS, self.index.ntotal)

    def _owners(self, q_row: np.ndarray, nn: np.ndarray, sims: np.ndarray, n_full: int):
        """Hits (query's row, label, similarity; the first ``n_full`` from full-frame queries) as
        the rows' best owners, the centre quota's apart (``split_top_owners_flagged``)."""
        from engines.vector.dedup import split_top_owners_flagged

        owner = np.where(nn >= 0, nn // SLOTS, -1)
        return split_top_owners_flagged(q_row, owner, nn % SLOTS, sims, n_full, self.cfg.k, self.cfg.k_centre, self.cfg.min_candidate_sim)

    def _reduce(self, qi: np.ndarray, nn: np.ndarray, sims: np.ndarray, query_row: np.ndarray, rows: int):
        """One block's hits (its query numbers, labels, similarities) as its rows' best owners:
        the full-frame queries' (the first 8 or 1 per row) and the centre quota's apart."""
        o = np.argsort(qi, kind="stable")  # by query: the full-frame queries' hits first
        qi, nn, sims = qi[o], nn[o], sims[o]
        return self._owners(query_row[qi], nn, sims, int(np.searchsorted(qi, _orientations(self.cfg) * rows)))

    def hits(self, unit: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One unit's rows' k best other rows by FAISS's own search (flat index, or on a GPU), in
        blocks of rows: each block's hits reduced to k rows each before the next is searched."""
        from engines.vector.index import search

        full, reg, valid = _read_descriptors(self.ds, unit["fragments"], regions=True)
        pos = np.flatnonzero(valid)
        kk = self._per_list()
        parts = []
        for p in [p for p in np.array_split(pos, max(1, len(pos) // 2048)) if len(p)]:
            queries, query_row = self._queries(full[p], reg[p], unit["label_start"] + p)
            sims, nn = search(self.index, queries, kk, nprobe=self.nprobe)
            parts.append(self._owners(np.repeat(query_row, kk), nn.ravel(), sims.ravel(), _orientations(self.cfg) * len(p) * kk))
        return tuple(np.concatenate(x) for x in zip(*parts)) if parts else _no_hits()

    def _queries(self, full: np.ndarray, reg: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Some rows' candidate queries (``candidate_queries``: orientations first, then the
        centre regions and content box, repeated boxes left out) and each query's row."""
        from engines.vector.dedup import candidate_queries, content_queries_kept

        queries = candidate_queries(full, self.cfg.dihedral, reg[:, list(CENTRE_REGIONS)])
        return content_queries_kept(queries, rows, reg, full)

    def _block_rows(self) -> int:
        """Rows whose queries are built and routed together: enough that each probed list meets
        ~32 queries of the block (the scan itself takes the whole group's queries), at most
        ``BLOCK_ROWS_MAX`` (a 50k-row unit is one block): a block's queries are built three
        times over (``_block_memory``)."""
        import faiss

        nlist = faiss.extract_index_ivf(self.index).nlist
        return int(np.clip(SCAN_LIST_QUERIES * nlist / (self.nprobe * _queries_per_row(self.cfg)), 2048, BLOCK_ROWS_MAX))


def _no_hits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)


def _stacked(parts: list[np.ndarray], empty: tuple[int, int], dtype: type) -> np.ndarray:
    """Blocks' arrays as one (a single block as it is: no copy)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(empty, dtype)


def _orientations(cfg: NearDupConfig) -> int:
    """Full-frame queries a row: its 8 turns and mirrors, or itself (queried first)."""
    return 8 if cfg.dihedral else 1


def _queries_per_row(cfg: NearDupConfig) -> int:
    return _orientations(cfg) + len(CENTRE_REGIONS)


def edge_table(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> pa.Table:
    """Each row's best owners as the candidate edge table's rows: every pair once (i < j)."""
    from engines.vector.graph import symmetric_edges

    a, b, w = symmetric_edges(a, b, w) if len(a) else (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
    return pa.table({"i": a, "j": b, "sim": np.clip(w, -1, 1).astype(np.float32)}, schema=EDGE_SCHEMA)


def _unit_edges(unit: dict, hits: tuple, cfg: NearDupConfig, prior: dict | None, owners_uri: str | None) -> tuple[int, pa.Table, dict]:
    """A unit's edges from its rows' owners in this search (``hits``: q, o, v, c), merged with
    their kept owners when the unit's rows are old (``dedup_kept``), and the owners written for
    the next run: (unit, edges, ``{"lo", "hi", "fragments"}``)."""
    from engines.vector.dedup import owners_of_parts
    from pipelines.dedup_kept import OWNERS_SCHEMA, read_owners, write_kept

    lo, hi = unit["label_start"], unit["label_start"] + unit["rows"]
    q, o, v, c = hits
    if prior is not None and lo < prior["rows"]:
        kept = read_owners(prior, lo, hi)
        q, o, v, c = (np.concatenate([x, np.asarray(y, x.dtype)]) for x, y in zip(kept, (q, o, v, c)))
        q, o, v, c = owners_of_parts(q, o, v, c, cfg.k, cfg.k_centre, cfg.min_candidate_sim)
    frags = write_kept(pa.table({"q": q, "o": o, "v": v, "c": c}), owners_uri, OWNERS_SCHEMA) if owners_uri else []
    return unit["unit"], edge_table(q, o, v), {"lo": lo, "hi": hi, "fragments": frags}


def _edge_rows(units: list[tuple[int, pa.Table, dict]], uri: str) -> pa.Table:
    """Each unit's edges written as Lance fragments; one result row a unit (its fragments'
    metadata, and its owners' as ``_unit_edges`` wrote them)."""
    frags = [_write_edges(edges, uri) for _, edges, _ in units]
    return pa.table(
        {
            "unit": [u for u, _, _ in units],
            "fragments": [json.dumps([f.to_json() for f in fs]) for fs in frags],
            "edges": [edges.num_rows for _, edges, _ in units],
            "owners": [json.dumps(owners) for _, _, owners in units],
        }
    )


def _write_edges(edges: pa.Table, uri: str) -> list:
    from lance.fragment import write_fragments

    if not edges.num_rows:
        return []
    return write_fragments(edges, uri, schema=EDGE_SCHEMA, max_rows_per_file=1 << 24)


def _load_probes(path: Path | None, blocks: int) -> dict | None:
    """A unit's routed queries by block (``b0``, ``b1``...): those a pass saved, else an empty
    dict to fill (``None`` outside passes: nothing kept)."""
    if path is None:
        return None
    if not path.exists():
        return {}
    with np.load(path) as z:
        got = {k: z[k] for k in z.files}
    if len(got) != blocks:
        raise RuntimeError(f"{path}: routed queries of {len(got)} blocks where the unit has {blocks}")
    return got


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Arrays written whole or not at all: a pass's files are its checkpoints (their existence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        np.savez(f, **arrays)
    path.with_suffix(".tmp").replace(path)


class _PassMerger:
    """Ray actor: per unit, its rows' best owners over every pass (``top_owners_of_parts``),
    written as the unit's candidate edges, as one pass over all lists would have written them."""

    def __init__(self, parts: list[str], edges_uri: str, cfg: dict, prior: dict | None = None, owners_uri: str | None = None):
        self.parts, self.edges_uri, self.cfg = parts, edges_uri, NearDupConfig(**cfg)
        self.prior, self.owners_uri = prior, owners_uri

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.dedup import owners_of_parts

        done = []
        for unit in batch.to_pylist():
            got = [list(_no_hits())]
            for d in self.parts:
                with np.load(Path(d) / f"unit-{unit['unit']}.npz") as z:
                    got.append([z[k] for k in "qovc"])
            q, o, v, c = (np.concatenate(x) for x in zip(*got))
            hits = owners_of_parts(q, o, v, c, self.cfg.k, self.cfg.k_centre, self.cfg.min_candidate_sim)
            done.append(_unit_edges(unit, hits, self.cfg, self.prior, self.owners_uri))
        return _edge_rows(done, self.edges_uri)


def _actor_memory(index_path: Path, rows_per_unit: int, group: int = 1, passes: int = 1) -> int:
    """Memory to reserve per candidate actor: one unit's 12 descriptors per row (float32, read and
    cleaned: twice) and one block's queries being built (``_block_memory``), the group's queries
    in the pass's lists (``_group_query_bytes``) and 512 MiB of hits a unit, plus the index's
    in-memory part (the coarse quantiser; the lists are memory-mapped and shared by the node's
    actors through the page cache, so they are not reserved per actor). Ray then runs as many
    actors as the nodes' CPUs allow instead of one per index copy that fits (measured at 50k
    rows per unit, 1M rows: 2.7 GiB resident, the touched pages of the mapped lists included)."""
    unit = _descriptor_bytes(rows_per_unit) * 2
    block = _block_memory(min(rows_per_unit, BLOCK_ROWS_MAX))
    queries = _group_query_bytes(group * rows_per_unit, passes)
    return int(Path(index_path).stat().st_size) + unit + block + queries + group * (512 << 20)  # lists: <index>.ivfdata


QUERIES_PER_ROW = len(CENTRE_REGIONS) + 8
"""A row's candidate queries at most: 8 turns and mirrors of the full frame, the centre regions."""
QUERY_BYTES = VEC_DESC_DIM * 4 * 2 + 8 * (4 + 8 + 8) * 2
"""A query held for the scan: the vector and its scaled copy (``_list_products``), its 8 probes
routed (int32), flattened and sorted with their query numbers (int64), twice."""
SCAN_GROUP_BYTES = 3 << 30
"""The most memory the queries of a candidate group may take (``_group_units``)."""
SCAN_LIST_QUERIES = 32
"""Queries a list visit should meet (``_group_units``): the visit's overhead (~28 us against
~1.6 us a query, ``bench/list_scan.py``) is then under half of it."""


def _in_pass_share(passes: int) -> float:
    """The share of queries probing a pass's lists: measured on the 3M-row job's router (141k
    lists, nprobe 8): 0.73 of them with 2 passes, 0.46 with 4, 0.26 with 8; the lists are
    numbered by their first-level k-means cluster, so a query's probes fall in few ranges
    (spread at random, 4 passes would keep 0.90)."""
    return min(1.0, 2.0 / max(passes, 1))


def _group_query_bytes(rows: int, passes: int) -> int:
    return int(rows * QUERIES_PER_ROW * _in_pass_share(passes) * QUERY_BYTES)


def _group_units(job: NearJob, nlist: int, passes: int) -> int:
    """Units whose queries scan the lists together (``_CandidateWorker.group_hits``): enough rows
    that a list visit meets ``SCAN_LIST_QUERIES`` queries (32 x nlist / (nprobe x 11) rows: ~17k
    at 1M rows, ~51k at 3M, ~170k at 10M, where a 50k-row unit met ~9 a visit), to the nearest
    whole number of units, within ``SCAN_GROUP_BYTES`` of queries; ``job.scan_group_rows`` when
    set. Why not larger units: a unit's rows are also what every other phase holds at once."""
    if job.scan_group_rows is not None:
        rows = float(job.scan_group_rows)
    else:
        rows = SCAN_LIST_QUERIES * nlist / (job.index_cfg.nprobe * _queries_per_row(job.cfg))
        rows = min(rows, SCAN_GROUP_BYTES / (QUERIES_PER_ROW * _in_pass_share(passes) * QUERY_BYTES))
    return max(1, int(round(rows / max(job.largest_unit, 1))))


def _per_group(size: int) -> str:
    """The progress line's name of a work item."""
    return "units" if size == 1 else f"groups of {size} units"


def _groups(units: list[dict], size: int) -> list[dict]:
    """Consecutive units in groups of ``size``: the candidate actors' work items."""
    return [{"unit": units[s]["unit"], "units": json.dumps(units[s : s + size])} for s in range(0, len(units), size)]


def _descriptor_bytes(rows: int) -> int:
    """A unit's 12 descriptors a row as float32 (one copy)."""
    return rows * SLOTS * VEC_DESC_DIM * 4


BLOCK_ROWS_MAX = 65536
"""The most rows a candidate actor searches in one block (``_CandidateWorker._block_rows``)."""


def _block_memory(rows: int) -> int:
    """One search block of ``rows`` rows: its queries (up to 11 a row: 8 turns and mirrors, 3
    centre regions) three times (built, kept, scaled for the 8-bit lists), their 8 probes three
    times (routed, flattened, sorted), the routing table (``ROUTER_TABLE_BYTES``) and 512 MiB
    of hits before the reduction to each row's k best (~0.8 GB at 50k rows)."""
    from engines.vector.index import ROUTER_TABLE_BYTES

    per_query = VEC_DESC_DIM * 4 * 3 + 8 * 8 * 3
    return rows * (len(CENTRE_REGIONS) + 8) * per_query + ROUTER_TABLE_BYTES + (512 << 20)


def _shard_memory(trained_path: Path, router_path: Path, rows_per_unit: int) -> int:
    """Memory to reserve per index shard actor: a unit's 12 descriptors per row (float32, read and
    cleaned: twice), one routing block, the unit's own list entries (float32 at most) until its
    shard is written, the router, and three copies of the trained index (loaded, the empty
    shard made from it, and the copy being written). Declared, Ray places no more of
    these actors on a node than its memory holds. Measured private memory: 3.4 GiB at 50k rows
    per unit and 300k rows; 3.6 GiB on average (3.9 at most) at 3M, where this gives 3.6 GiB."""
    index = trained_path.stat().st_size
    router = router_path.stat().st_size if router_path.exists() else 0
    unit = _descriptor_bytes(rows_per_unit)
    routing = 1 << 30  # the router's table (``ROUTER_TABLE_BYTES``) and the unit's lists, with room
    return 3 * index + 3 * unit + routing + (512 << 20) + router  # unit: read, cleaned, its list entries


def candidate_edges(job: NearJob, index_path: Path, show_progress: bool) -> str:
    """Phase 2: the candidate edge table (Lance, committed once after every unit is done). With a
    kept search to extend (``job.prior``), the new rows search the extended index and the old
    rows the new rows' index, their owners merged with the kept ones (``_unit_edges``)."""
    import lance
    from lance import LanceOperation
    from lance.fragment import FragmentMetadata

    uri = str(job.folder / "candidates.lance")
    if (Path(uri) / "_versions").exists() and not (job.folder / "candidates.staging").exists():
        return uri
    staging = str(job.folder / "candidates.staging")
    done = job.done("candidates")

    def on_result(row: dict) -> None:
        rec = {"fragments": json.loads(row["fragments"]), "edges": row["edges"], "owners": json.loads(row["owners"])}
        job.save("candidates", row["unit"], rec)
        done[row["unit"]] = rec

    searches = [(index_path, job.new_units(), None, "candidates.passes")]
    if job.prior:
        old = [u for u in job.units if u["label_start"] < job.n_old]
        searches.append((job.new_index if job.n > job.n_old else None, old, job.prior, "candidates.passes-old"))
    for path, units, prior, passes in searches:
        todo = [u for u in units if u["unit"] not in done]
        if todo:
            _search(
                job,
                path,
                todo,
                {"edges_uri": staging, "prior": prior, "owners_uri": job.owners_staging},
                job.folder / passes,
                on_result,
                show_progress,
            )
    frags = [FragmentMetadata.from_json(json.dumps(f)) for u in job.units for f in done[u["unit"]]["fragments"]]
    lance.LanceDataset.commit(staging, LanceOperation.Overwrite(EDGE_SCHEMA, frags))
    if Path(uri).exists():
        shutil.rmtree(uri)
    Path(staging).rename(uri)
    for _, _, _, passes in searches:
        shutil.rmtree(job.folder / passes, ignore_errors=True)
    return uri


def _search(job: NearJob, index_path: Path | None, todo: list[dict], out: dict, passes: Path, on_result, show_progress: bool) -> None:
    """Some units' rows searched in one index (in passes over ranges of its lists when they
    outgrow a pass), each unit's edges and owners written (``out``: where, and the kept owners
    to merge); no index: the kept owners alone (nothing was appended)."""
    from curation.runner import execute_units

    merger = {"edges_uri": out["edges_uri"], "cfg": job.cfg.model_dump(), "prior": out["prior"], "owners_uri": out["owners_uri"]}
    merge_opts = job.ray_options("candidates", memory=_descriptor_bytes(job.largest_unit))
    if index_path is None:
        execute_units(
            todo,
            _PassMerger,
            {"parts": [], **merger},
            ray_options=merge_opts,
            on_result=on_result,
            description="dedup: candidate pairs (kept, units)",
            show_progress=show_progress,
        )
        return
    args = {
        "store": job.store,
        "version": job.ds.version,
        "index_path": str(index_path),
        "cfg": job.cfg.model_dump(),
        "nprobe": job.index_cfg.nprobe,
        "use_gpu": job.index_cfg.use_gpu,
        "router": _router_file(job),
        **{k: v for k, v in merger.items() if k != "cfg"},
    }
    bounds = _scan_passes(job, index_path, passes)
    size = _group_units(job, bounds[-1], len(bounds) - 1)
    opts = job.ray_options("candidates", memory=_actor_memory(index_path, job.largest_unit, size, len(bounds) - 1))
    if len(bounds) <= 2:  # the lists fit the page cache: one pass, edges straight from it
        execute_units(
            _groups(todo, size),
            _CandidateWorker,
            args,
            ray_options=opts,
            on_result=on_result,
            description=f"dedup: candidate pairs ({_per_group(size)})",
            show_progress=show_progress,
        )
        return
    parts = _candidate_passes(job, todo, bounds, args, opts, show_progress, size, passes)
    execute_units(
        todo,
        _PassMerger,
        {"parts": parts, **merger},
        ray_options=merge_opts,
        on_result=on_result,
        description="dedup: candidate pairs (passes merged, units)",
        show_progress=show_progress,
    )


def _candidate_passes(
    job: NearJob,
    todo: list[dict],
    bounds: list[int],
    args: dict,
    opts: dict,
    show_progress: bool,
    size: int = 1,
    passes: Path | None = None,
) -> list[str]:
    """Every unit searched once per range of lists, range after range; each unit's hits of a pass
    kept in ``candidates.passes/pass-R/unit-U.npz`` (resumable per pass and unit).

    Why: a unit's queries probe nearly every list (at 10M rows, 470k lists, a 50k-row unit makes
    4M probes), so each unit reads the whole lists file; once the file outgrows the page cache
    (26 GB of 8-bit lists at 10M rows on 24 GiB) every unit reads it from disk again: ~5 TB for
    200 units. Range by range, each range is read once while every unit scans it. The cost: each
    pass reads the unit's descriptors again (the queries are routed once, by the first pass that
    meets the unit, and kept in ``candidates.passes/probes``)."""
    from curation.runner import execute_units

    parts = []
    for r in range(len(bounds) - 1):
        part = (passes or job.folder / "candidates.passes") / f"pass-{r}"
        parts.append(str(part))
        left = [u for u in todo if not (part / f"unit-{u['unit']}.npz").exists()]
        execute_units(
            _groups(left, size),
            _CandidateWorker,
            {**args, "lists": (bounds[r], bounds[r + 1]), "part_dir": str(part)},
            ray_options=opts,
            on_result=lambda row: None,  # the unit's file is its checkpoint
            description=f"dedup: candidate pairs, lists {bounds[r]:,}-{bounds[r + 1]:,} (pass {r + 1} of {len(bounds) - 1}, {_per_group(size)})",
            show_progress=show_progress,
        )
    return parts


def _scan_passes(job: NearJob, index_path: Path, passes: Path | None = None) -> list[int]:
    """List numbers cutting the candidate index's lists into passes of at most
    ``job.scan_pass_bytes`` (default a third of this node's memory); ``[0, nlist]`` when one pass
    holds them all, or the index is not scanned list by list. Read in a Ray task: the driver
    never loads the index. Kept with the passes' files: a resumed job keeps its first run's
    ranges whatever its memory or setting now (a pass file covers the lists it was searched in)."""
    import psutil
    import ray

    saved = (passes or job.folder / "candidates.passes") / "bounds.json"
    if saved.exists():
        return json.loads(saved.read_text())
    budget = job.scan_pass_bytes or psutil.virtual_memory().total // 3
    bounds = ray.get(ray.remote(num_cpus=1)(_list_bounds).remote(str(index_path), int(budget), job.index_cfg.use_gpu))
    if len(bounds) > 2:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_text(json.dumps(bounds))
        saved.with_suffix(".tmp").replace(saved)
    return bounds


def _list_bounds(index_path: str, budget: int, use_gpu: bool | None) -> list[int]:
    import faiss

    from engines.vector.index import list_major_ok
    from engines.vector.ondisk import range_bounds

    index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP_IFC)
    on_gpu = use_gpu is not False and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0  # as maybe_gpu decides
    if on_gpu or not list_major_ok(index):  # searched by FAISS, not list by list
        return [0, 0]
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
    return range_bounds(sizes, ivf.code_size + 8, budget).tolist()


# --- 3. accepted pairs ------------------------------------------------------------------------------


class _AcceptWorker:
    """Ray actor: the candidate pairs whose smaller end lies in a unit's row range, each once; the
    cheap signals accept some, ORB + RANSAC (mirror-aware, symmetric) decides the others."""

    def __init__(
        self,
        store,
        version: int,
        edges_uri: str,
        cfg: dict,
        block: int = 2000,
        geometry: bool = True,
        prior: dict | None = None,
        verified_uri: str | None = None,
    ):
        import lance

        self.ds = store.open(version)
        self.block, self.geometry = block, geometry
        self.edges = lance.dataset(edges_uri)
        self.cfg = NearDupConfig(**cfg)
        self.prior, self.verified_uri = prior, verified_uri  # ``pipelines.dedup_kept``

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"unit": [], "i": [], "j": [], "sim": [], "crop": [], "stats": [], "verified": []}
        for unit in batch.to_pylist():
            i, j, sim, crop, stats, verified = self.accept(unit["label_start"], unit["label_start"] + unit["rows"])
            out["unit"].append(unit["unit"])
            out["i"].append(i.tolist())
            out["j"].append(j.tolist())
            out["sim"].append(sim.tolist())
            out["crop"].append(crop.tolist())
            out["stats"].append(json.dumps(stats))
            out["verified"].append(json.dumps(verified))
        return pa.table(out)

    def accept(self, lo: int, hi: int):
        from engines.vector.dedup import accept_near, needs_verification
        from engines.vector.graph import symmetric_edges
        from pipelines.dedup_kept import Verified

        t = self.edges.to_table(columns=["i", "j", "sim"], filter=f"i >= {lo} AND i < {hi}")
        a, b, sim = symmetric_edges(t.column("i").to_numpy(), t.column("j").to_numpy(), t.column("sim").to_numpy())
        ham, px = self._signals(a, b)
        inl = np.full(len(a), -1, np.int32)
        cov = np.zeros(len(a), np.float32)
        crop = np.zeros(len(a), np.int8)  # +1: a is a crop of b, -1: b of a (verified pairs only)
        prior = Verified.read(self.prior, lo, hi)
        todo = np.flatnonzero(needs_verification(sim, ham, self.cfg))
        reused = self._outcomes(a, b, todo, prior, inl, cov, crop)
        ok = accept_near(sim, ham, inl, cov, self.cfg)
        geo = np.flatnonzero(ok & (inl < 0) & _same_size(*px)) if self.geometry else np.zeros(0, np.int64)
        # accepted on the descriptor alone, sizes tied: the keeper may need to know which is a crop
        # (the acceptance is made: their inliers are only kept with the pair for the next run)
        reused += self._outcomes(a, b, geo, prior, inl, cov, crop)
        stats = {
            "desc_candidates": int(len(a)),
            "verified_pairs": int(len(todo)),
            "accepted_pairs": int(ok.sum()),
            "geometry_pairs": int(len(geo)),
            "verifications_reused": int(reused),
        }
        done = np.union1d(todo, geo)
        kept = {"lo": lo, "hi": hi, "fragments": self._keep(a[done], b[done], inl[done], cov[done], crop[done])}
        return a[ok], b[ok], np.clip(sim[ok], 0, 1), crop[ok], stats, kept

    def _outcomes(self, a, b, rows: np.ndarray, prior, inl: np.ndarray, cov: np.ndarray, crop: np.ndarray) -> int:
        """Fill the verification outcome of the pairs at ``rows``: the kept one where the last run
        verified the pair (same images: ``pipelines.dedup_kept``), ORB + RANSAC for the rest.
        Returns how many were reused."""
        if not len(rows):
            return 0
        hit, at = prior.find(a[rows], b[rows]) if prior is not None else (np.zeros(len(rows), bool), None)
        if hit.any():
            old = rows[hit]
            inl[old], cov[old], crop[old] = prior.inl[at], prior.cov[at], prior.crop[at]
        new = rows[~hit]
        if len(new):
            inl[new], cov[new], crop[new] = self.verify(a[new], b[new])
        return int(hit.sum())

    def _keep(self, a, b, inl, cov, crop) -> list[dict]:
        """This unit's verified pairs written for the next run (fragment metadata), if asked."""
        from pipelines.dedup_kept import VERIFIED_SCHEMA, write_kept

        if self.verified_uri is None:
            return []
        t = pa.table({"i": a, "j": b, "inliers": inl, "coverage": cov, "crop": crop})
        return write_kept(t, self.verified_uri, VERIFIED_SCHEMA)

    def _signals(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Per pair, the pHash Hamming distance (-1: no hash on one side) and both rows' pixel
        counts, from one read of the pairs' rows (the driver holds no per-row signals)."""
        ham = np.full(len(a), -1, np.int16)
        if not len(a):
            return ham, (np.zeros(0), np.zeros(0))
        from engines.vector.dedup import popcount64

        rows = np.unique(np.concatenate([a, b]))
        ph = "prof_phash" in self.ds.schema.names
        t = self.ds.take(rows.tolist(), columns=["width", "height"] + (["prof_phash"] if ph else []))
        ia, ib = np.searchsorted(rows, a), np.searchsorted(rows, b)
        px = t.column("width").fill_null(0).to_numpy().astype(np.float64) * t.column("height").fill_null(0).to_numpy()
        if ph:
            h = np.asarray(t.column("prof_phash").fill_null(0).to_numpy(zero_copy_only=False), np.uint64)
            hv = np.asarray(t.column("prof_phash").is_valid().to_numpy(zero_copy_only=False), bool)
            both = hv[ia] & hv[ib]
            ham[both] = popcount64(np.bitwise_xor(h[ia[both]], h[ib[both]]))
        return ham, (px[ia], px[ib])

    def verify(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from engines.vector.descriptor import decode_gray, verify_features, verify_pairs_geometry

        order = np.lexsort((j, i))
        feats: dict[int, Any] = {}
        inl = np.zeros(len(i), np.int32)
        cov = np.zeros(len(i), np.float32)
        crop = np.zeros(len(i), np.int8)
        for s in range(0, len(order), self.block):  # bounded memory: features of one block's images at a time
            blk = order[s : s + self.block]
            need = sorted(set(i[blk].tolist()) | set(j[blk].tolist()))
            t = self.ds.take(need, columns=["image", "image_uri"])
            feats = {}
            for p, data, uri in zip(need, t.column("image").to_pylist(), t.column("image_uri").to_pylist()):
                g = decode_gray(data, uri)
                feats[p] = verify_features(g, self.cfg.dihedral) if isinstance(g, np.ndarray) else None
            inl[blk], cov[blk], crop[blk] = verify_pairs_geometry(feats, i[blk].tolist(), j[blk].tolist(), self.cfg.min_inliers)
        return inl, cov, crop


def _same_size(pa_: np.ndarray, pb: np.ndarray, margin: float = 1.10) -> np.ndarray:
    """Pairs whose pixel counts are within the keeper's resolution margin (``Originality``):
    only there can containment decide the keeper, so only there is a copy accepted on its
    descriptor (a mild crop scaled back matches a region at ~0.99) verified for geometry."""
    return (pa_ > 0) & (pb > 0) & (np.maximum(pa_, pb) <= margin * np.minimum(pa_, pb))


def accepted_pairs(job: NearJob, edges_uri: str, show_progress: bool, block: int = 2000, geometry: bool = True):
    """Phase 3: accepted near-duplicate pairs (i, j, sim, crop) and summed counters; ``crop`` is
    +1 where i is a crop of j, -1 where j is a crop of i (``descriptor.containment``), else 0."""
    from curation.runner import execute_units
    from pipelines.dedup_kept import prior_verified, save_verified

    done = job.done("accepted")
    todo = [u for u in job.units if u["unit"] not in done]
    near = job.cfg.model_dump()
    prior, why = prior_verified(job.store, job.ds, near) if todo and job.keep else (None, "")
    if prior is not None and show_progress:
        console.print(f"dedup: {why}", markup=False)
    staging = str(job.folder / "verified.staging")

    def on_result(row: dict) -> None:
        rec = {"i": row["i"], "j": row["j"], "sim": row["sim"], "crop": row["crop"], "stats": json.loads(row["stats"])}
        rec["verified"] = json.loads(row["verified"])
        job.save("accepted", row["unit"], rec)
        done[row["unit"]] = rec

    execute_units(
        todo,
        _AcceptWorker,
        {
            "store": job.store,
            "version": job.ds.version,
            "edges_uri": edges_uri,
            "cfg": job.cfg.model_dump(),
            "block": block,
            "geometry": geometry,
            "prior": prior,
            "verified_uri": staging if job.keep else None,
        },
        ray_options=job.ray_options("verify"),
        on_result=on_result,
        description="dedup: verify candidate pairs (ORB+RANSAC, units)",
        show_progress=show_progress,
    )
    recs = [done[u["unit"]] for u in job.units]
    if job.keep and not (job.folder / "verified.saved").exists():  # a dry run saved them already
        if all("verified" in r for r in recs):  # not a resumed checkpoint from before this was kept
            save_verified(job.store, job.ds, near, staging, [r["verified"] for r in recs])
            (job.folder / "verified.saved").touch()
    stats: dict[str, int] = {}
    for r in recs:
        for k, v in r["stats"].items():
            stats[k] = stats.get(k, 0) + v
    for r in recs:
        r.setdefault("crop", [0] * len(r["i"]))  # a checkpoint from before containment was recorded
    cat = lambda key, dt: np.concatenate([np.asarray(r[key], dt) for r in recs]) if recs else np.zeros(0, dt)  # noqa: E731
    return cat("i", np.int64), cat("j", np.int64), cat("sim", np.float32), cat("crop", np.int8), stats


def _keep_search(job: NearJob, index_path: Path) -> None:
    """Keep this run's candidate search for the next run (``dedup_kept.save_near``), once: the
    index (the kept one when nothing was appended), its trained index and router, the owners."""
    from pipelines.dedup_kept import near_record, save_near

    if not job.keep:
        return
    rec = near_record(job.store)
    saved = rec is not None and rec.get("owners") == str(job.folder / "owners.lance")
    done = job.done("candidates")
    if (saved and not Path(job.owners_staging).exists()) or not all("owners" in done[u["unit"]] for u in job.units):
        return  # kept already, or checkpoints of a version that kept no owners
    prior = job.prior if job.prior and Path(index_path) == Path(job.prior["index"]) else None
    router = job.folder / "router.npz"
    files = {
        "index": str(index_path),
        "trained": prior["trained"] if prior else str(job.folder / "trained.faiss"),
        "router": prior.get("router") if prior else (str(router) if router.exists() else None),
        "kind": job.prior["kind"] if job.prior else job.index_kind(job.n),
    }
    trained_rows = job.prior["trained_rows"] if job.prior else job.n
    save_near(job.store, job.ds, job.key, files, job.owners_staging, [done[u["unit"]]["owners"] for u in job.units], trained_rows)


def near_pairs_on_ray(
    job: NearJob, *, show_progress: bool = True, block: int = 2000, geometry: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """The three phases; returns accepted pairs (i, j, sim, crop: see ``accepted_pairs``) and counters."""
    t = [time.perf_counter()]
    if job.prior_why and show_progress:
        console.print(f"dedup: {job.prior_why}", markup=False)
    index_path = build_region_index(job, show_progress)
    t.append(time.perf_counter())
    edges_uri = candidate_edges(job, index_path, show_progress)
    _keep_search(job, index_path)
    t.append(time.perf_counter())
    i, j, sim, crop, stats = accepted_pairs(job, edges_uri, show_progress, block, geometry)
    t.append(time.perf_counter())
    phases = ("index_seconds", "candidates_seconds", "verify_seconds")  # this run's share (a resumed run skips done work)
    stats.update({name: round(b - a, 2) for name, a, b in zip(phases, t, t[1:])})
    stats["near_seconds"] = round(t[-1] - t[0], 2)
    stats["rows_searched_before"] = job.n_old  # rows whose candidate search the last run did (extended)
    stats["index_mib"] = round(sum(p.stat().st_size for p in job.folder.glob("regions.*")) / 2**20, 1)  # on disk
    return i, j, sim, crop, stats
