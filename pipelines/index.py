"""``vector_index`` (step, ``curate index build``): the FAISS index of an embedding column.

Train on a sample (a Ray task), add the rows in shards on Ray workers (one unit per group of
fragments, each shard checkpointed on disk so a killed build resumes), merge them (a Ray task
on the driver's machine: IVF lists into a data file beside index.faiss, docs/vector.md "The
index on disk"), save with a manifest. The driver holds the row ids and the quantiser, never
the vectors or the lists. A second build only adds the fragments that are new since the last
one (rows appended), reading the saved lists without writing them; changed rows need
``--rebuild``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape

from curation.registry import register_step
from engines.vector.index import IndexConfig, field_ids
from pipelines.descriptors import default_column, ensure_visual, fragment_sig, fragment_units, hash_bytes, iter_vectors

console = Console(stderr=True)
log = logging.getLogger(__name__)


class IndexBuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: Optional[str] = Field(None, description="embedding column; default prof_clip_image if present, else vec_desc")
    index: IndexConfig = Field(default_factory=IndexConfig)
    rows_per_shard: int = Field(200_000, ge=1, description="rows added per Ray unit (one checkpointed shard each)")
    rebuild: bool = Field(False, description="start over instead of adding new rows")
    allow_random_weights: bool = Field(
        False, description="index embeddings made by randomly initialised weights anyway (noise; the manifest marks it)"
    )


def check_index_weights(store, column: str, allow: bool) -> dict:
    """``check_random_weights`` for the index of ``column`` (the CLI calls it before Ray starts):
    an index over random-weight embeddings gives neighbours that are noise."""
    from engines.vector.retrieval import check_random_weights

    return check_random_weights(store, [column], consumer=f"the index of {column!r}", allow=allow)


class _AddWorker:
    """Ray task's worker: adds the rows of some fragments to a copy of the trained empty index.

    The shard goes straight into the build's folder when this process sees that folder (the
    driver's machine, or a shared file system: the folder's token matches), else back to the
    driver as bytes (a node of a cluster without one)."""

    def __init__(self, store, version: int, column: str, trained: bytes, normalize: bool, shard_dir: str, token: str):
        from engines.vector.index import deserialize

        self.ds = store.open(version)
        self.trained = deserialize(trained)
        self.column, self.normalize = column, normalize
        mark = Path(shard_dir) / "token"
        self.shard_dir = Path(shard_dir) if mark.is_file() and mark.read_text() == token else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from engines.vector.index import add_vectors, clean_vectors
        from engines.vector.ondisk import empty_like

        out: dict[str, list] = {"unit": [], "shard": [], "ids": [], "labels": [], "skipped": []}
        for unit in batch.to_pylist():
            shard, kept, labels, skipped = empty_like(self.trained), [], [], {}
            at = unit["label_start"]  # labels are row positions in fragment order, valid or not
            for ids, x, null in iter_vectors(self.ds, unit["fragments"], self.column, self.trained.d):
                x, valid, skip = clean_vectors(x, null, normalize=self.normalize)
                lab = at + np.arange(len(ids), dtype=np.int64)
                add_vectors(shard, x[valid], lab[valid])
                kept += [i for i, ok in zip(ids, valid) if ok]
                labels += lab[valid].tolist()
                skipped = {r: skipped.get(r, 0) + skip.get(r, 0) for r in skipped.keys() | skip.keys()}
                at += len(ids)
            out["unit"].append(unit["unit"])
            out["shard"].append(self._write(shard, unit["unit"]))
            out["ids"].append(kept)
            out["labels"].append(labels)
            out["skipped"].append(json.dumps(skipped))
        return pa.table(out, schema=_ADDED)

    def _write(self, shard, unit: int) -> bytes | None:
        """The shard as ``write_shard`` writes it (its lists only: the merge reads nothing else):
        into the folder (None returned), or its bytes."""
        import tempfile

        from engines.vector.ondisk import write_shard

        if self.shard_dir is not None:
            path = self.shard_dir / f"unit-{unit}.faiss"
            write_shard(shard, f"{path}.{os.getpid()}.tmp")
            Path(f"{path}.{os.getpid()}.tmp").replace(path)
            return None
        with tempfile.TemporaryDirectory() as tmp:
            write_shard(shard, f"{tmp}/shard.faiss")
            return Path(f"{tmp}/shard.faiss").read_bytes()


_ADDED = pa.schema(
    [
        ("unit", pa.int64()),
        ("shard", pa.binary()),
        ("ids", pa.list_(pa.string())),
        ("labels", pa.list_(pa.int64())),
        ("skipped", pa.string()),
    ]
)


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
            f"--column {column} --rebuild`"
        )
    if len(dims) > 1:
        raise VectorError(f"{column!r} holds vectors of several dimensions ({sorted(dims)}): one model per column")


TRAIN_READ_ROWS = 4096
"""Sampled rows read at a time for the training set (``_training_sample``)."""


def _training_sample(ds, column: str, n: int, cfg: IndexConfig, read_rows: int = TRAIN_READ_ROWS) -> np.ndarray:
    """The clean vectors of ``n`` rows drawn at random (``cfg.seed``), in row order, read
    ``read_rows`` at a time into one array: the vectors one read of them all gives, held about
    once (one read held them four times over: the Arrow column, its float32 copy, the cleaned
    copy, the valid rows; 156k x 512 floats at 1M rows, 1.56M at 10M)."""
    from engines.vector.index import clean_vectors, to_matrix

    total = ds.count_rows()
    pos = np.sort(np.random.default_rng(cfg.seed).choice(total, min(n, total), replace=False))
    out, filled = None, 0
    for s in range(0, len(pos), read_rows):
        x, null = to_matrix(ds.take(pos[s : s + read_rows].tolist(), columns=[column]).column(column))
        x, valid, _ = clean_vectors(x, null, normalize=cfg.normalize)
        if not valid.any():
            continue
        if out is None:
            out = np.empty((len(pos), x.shape[1]), np.float32)
        k = int(valid.sum())
        out[filled : filled + k] = x[valid]
        filled += k
    return out[:filled] if out is not None else np.zeros((0, 0), np.float32)


@dataclass
class _Start:
    """Where a build starts: a fresh trained index, or the saved one to extend with new fragments."""

    trained: Any  # an empty trained index (the template of every shard)
    kind: str
    spec: str
    new_frags: list
    label_start: int
    base: str | None = None  # the file of the saved index being extended, if any
    manifest: Any = None
    labels: pa.Table | None = None


def build_index(store, cfg: IndexBuildConfig, *, show_progress: bool = True) -> dict:
    """Build (or extend) the FAISS index of ``cfg.column``; returns the manifest as a dict."""
    from dataclasses import asdict

    from engines.vector.index import VectorError, save_index
    from engines.vector.retrieval import index_dir, index_relpath, pull_index, push_index

    t0 = time.perf_counter()
    column, ds = _checked_column(store, cfg, show_progress)
    random_derived = check_index_weights(store, column, cfg.allow_random_weights)
    # remote dataset: start from the index in the object store (built on another node?), not a stale cache
    folder = index_dir(store, column) if cfg.rebuild else pull_index(store, column)
    fids = field_ids(ds, column) | field_ids(ds, "id")
    sigs = {str(f.fragment_id): fragment_sig(f, fids) for f in ds.get_fragments()}
    start = _start(store, ds, folder, column, cfg, sigs)
    if isinstance(start, dict):
        return start  # up to date
    units, next_label = fragment_units(start.new_frags, cfg.rows_per_shard, start.label_start)
    shard_dir = _add_shards(store, ds, column, cfg, start.trained, units, folder, show_progress)
    labels, skipped, added = _unit_tables(start, units, shard_dir)
    merged, ntotal = _merge(start, units, shard_dir, folder)
    if ntotal == 0:
        raise VectorError(f"no valid vectors in {column!r} (skipped: {skipped}); nothing was indexed")
    manifest = _manifest(store, ds, column, cfg, start, ntotal, sigs, next_label, skipped, added)
    if random_derived:  # noise, built on request: every reader of the manifest sees why
        manifest.config["random_derived"] = {c: f"{m['group']}: {m['why']}" for c, m in random_derived.items()}
    save_index(folder, merged, manifest, labels)
    pushed = push_index(store, column)  # remote dataset: every node finds it there (manifest last)
    shutil.rmtree(shard_dir.parent, ignore_errors=True)
    if skipped:
        console.print(f"[yellow]skipped rows[/] (not indexed): {escape(str(skipped))}")
    console.print(
        f"index on {column!r}: {ntotal} vectors, {start.kind}, v{ds.version}, {time.perf_counter() - t0:.1f}s -> {folder}"
        + (f" (uploaded to {store.uri}/_curation/{index_relpath(column)})" if pushed else "")
    )
    return asdict(manifest)


def _checked_column(store, cfg: IndexBuildConfig, show_progress: bool):
    """The column to index and the dataset, or a ``VectorError`` that says what to do."""
    from engines.vector.index import VectorError

    column = cfg.column or default_column(store)
    if column == "vec_desc":
        ensure_visual(store, show_progress)
    ds = store.open()
    if column not in ds.schema.names:
        raise VectorError(
            f"column {column!r} not in the dataset; compute it first (e.g. `curate profile`) "
            f"or pass --column with one of: {', '.join(n for n in ds.schema.names if n.startswith(('prof_', 'vec_')))}"
        )
    if ds.count_rows() == 0:
        raise VectorError("the dataset is empty: nothing to index")
    return column, ds


def _check_same_kind(manifest, cfg: IndexBuildConfig, uri: str, column: str) -> None:
    """A saved index is extended as it was built: a different ``kind`` or ``nlist`` asked for
    without ``rebuild`` is refused, not silently dropped ("up to date" with the old kind)."""
    import re

    from engines.vector.index import VectorError

    lists = re.search(r"IVF(\d+)", manifest.factory or "")
    before = manifest.config  # what was asked then: a small dataset may have got a flat index instead
    asked = []
    if cfg.index.kind not in ("auto", manifest.kind, before.get("kind")):
        asked.append(f"kind {cfg.index.kind}")
    if cfg.index.nlist not in (None, before.get("nlist"), lists and int(lists.group(1))):
        asked.append(f"nlist {cfg.index.nlist}")
    if asked:
        built = f"{manifest.kind}" + (f", nlist {lists.group(1)}" if lists else "")
        raise VectorError(
            f"the index on {column!r} exists as {built}; {' and '.join(asked)} needs a new one: "
            f"`curate index build --dataset {uri} --column {column} --rebuild` with the same options"
        )


def _start(store, ds, folder: Path, column: str, cfg: IndexBuildConfig, sigs: dict) -> _Start | dict:
    """Extend the saved index with the fragments it has not seen (rows appended), refuse when
    indexed fragments changed, or train a new one on a sample; a dict = already up to date."""
    from dataclasses import asdict

    from engines.vector.index import Manifest, StaleIndexError, column_fingerprint
    from engines.vector.ondisk import trained_of

    frags = ds.get_fragments()
    if (folder / "manifest.json").exists() and not cfg.rebuild:
        old_manifest = Manifest.from_json(json.loads((folder / "manifest.json").read_text()))
        _check_same_kind(old_manifest, cfg, store.uri, column)
        if old_manifest.fingerprint == column_fingerprint(ds, column):
            console.print(
                f"index on {column!r} is up to date (built at v{old_manifest.dataset_version}, dataset v{ds.version})", markup=False
            )
            return asdict(old_manifest)
        old = old_manifest.config.get("fragments", {})
        changed = [f for f, s in old.items() if sigs.get(f) != s]
        if changed:
            raise StaleIndexError(
                f"rows or {column!r} data of fragments {changed[:5]} changed since the index was built at "
                f"v{old_manifest.dataset_version}; rebuild with `curate index build --dataset {store.uri} --column {column} --rebuild`"
            )
        new_frags = [f for f in frags if str(f.fragment_id) not in old]
        _check_dims(ds, new_frags, column, old_manifest.dim)
        console.print(
            f"index on {column!r}: adding {sum(f.count_rows() for f in new_frags)} new rows "
            f"({len(new_frags)} fragments) to {old_manifest.ntotal} indexed"
        )
        import pyarrow.feather as feather

        return _Start(
            trained_of(folder / "index.faiss"),  # the saved lists stay on disk: the merge reads them
            old_manifest.kind,
            old_manifest.factory,
            new_frags,
            int(old_manifest.config.get("next_label", old_manifest.rows_seen)),
            str(folder / "index.faiss"),
            old_manifest,
            feather.read_table(str(folder / "labels.arrow")),
        )
    _check_dims(ds, frags, column, None)
    import ray

    from curation.cluster import largest_node_cpus
    from engines.vector.index import deserialize

    threads, t0 = largest_node_cpus(), time.perf_counter()
    task = ray.remote(num_cpus=threads)(_train)
    blob, kind, spec, used = ray.get(task.remote(store, ds.version, column, cfg.index, threads))
    console.print(
        f"index on {column!r}: {kind} ({spec}), trained on {used} vectors ({time.perf_counter() - t0:.0f} s on {threads} CPUs)",
        markup=False,
    )
    return _Start(deserialize(blob), kind, spec, frags, 0)


def _train(store, version: int, column: str, cfg: IndexConfig, threads: int) -> tuple[bytes, str, str, int]:
    """Ray task: an empty index trained on a sample of the rows (its bytes, kind, factory string
    and the vectors it was trained on). On a worker, not the driver: the sample is 40 vectors a
    list and the lists grow with the rows (156k x 512 floats at 1M rows, read a chunk at a
    time: ``_training_sample``; ~1 GiB on the driver at 100k rows before), and the k-means is
    the build's heaviest single step. What comes back is the quantiser and codec."""
    import faiss

    from engines.vector.index import serialize, train_index, train_points

    faiss.omp_set_num_threads(threads)
    ds = store.open(version)
    n = ds.count_rows()
    sample = _training_sample(ds, column, train_points(n, cfg), cfg)
    trained, kind, spec = train_index(sample, n, cfg)
    return serialize(trained), kind, spec, len(sample)


def _add_shards(store, ds, column: str, cfg: IndexBuildConfig, trained, units: list[dict], folder: Path, show_progress: bool) -> Path:
    """One shard per unit on Ray workers, each checkpointed on disk (a killed build resumes)."""
    import pyarrow.feather as feather

    from curation.runner import execute_units
    from engines.vector.index import serialize

    trained_bytes = serialize(trained)
    shard_dir = folder.parent / f"shards-{column}" / f"v{ds.version}-{hash_bytes(trained_bytes)}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex  # a worker that reads it back sees this folder: it writes its shard there
    (shard_dir / "token").write_text(token)
    todo = [u for u in units if not (shard_dir / f"unit-{u['unit']}.json").exists()]
    if len(todo) < len(units):
        console.print(f"resuming: {len(units) - len(todo)} of {len(units)} shards already added")

    def on_result(row: dict) -> None:
        k = row["unit"]
        if row["shard"] is not None:  # from a node that does not see the folder
            (shard_dir / f"unit-{k}.faiss.tmp").write_bytes(row["shard"])
            (shard_dir / f"unit-{k}.faiss.tmp").replace(shard_dir / f"unit-{k}.faiss")
        feather.write_feather(
            pa.table({"label": pa.array(row["labels"], pa.int64()), "id": pa.array(row["ids"], pa.string())}),
            str(shard_dir / f"unit-{k}.arrow"),
        )
        (shard_dir / f"unit-{k}.json.tmp").write_text(row["skipped"])
        (shard_dir / f"unit-{k}.json.tmp").replace(shard_dir / f"unit-{k}.json")

    execute_units(
        todo,
        _AddWorker,
        {
            "store": store,
            "version": ds.version,
            "column": column,
            "trained": trained_bytes,
            "normalize": cfg.index.normalize,
            "shard_dir": str(shard_dir),
            "token": token,
        },
        ray_options={"num_cpus": 1},
        on_result=on_result,
        description=f"index {column} (shards)",
        show_progress=show_progress,
    )
    return shard_dir


def _unit_tables(start: _Start, units: list[dict], shard_dir: Path) -> tuple[pa.Table, dict, int]:
    """The label table (the saved one, then every unit's), the skipped counts and the rows added."""
    import pyarrow.feather as feather

    skipped: dict[str, int] = dict(start.manifest.skipped) if start.manifest else {}
    new_tables = []
    for u in units:
        k = u["unit"]
        new_tables.append(feather.read_table(str(shard_dir / f"unit-{k}.arrow")))
        for r, v in json.loads((shard_dir / f"unit-{k}.json").read_text()).items():
            skipped[r] = skipped.get(r, 0) + v
    tables = ([start.labels] if start.labels is not None else []) + new_tables
    labels = pa.concat_tables(tables) if tables else pa.table({"label": pa.array([], pa.int64()), "id": pa.array([], pa.string())})
    return labels, skipped, int(sum(len(t) for t in new_tables))


def _merge(start: _Start, units: list[dict], shard_dir: Path, folder: Path) -> tuple[str, int]:
    """The shards, after the lists of the index being extended, merged into one index file by a
    Ray task on this machine (where the folder is): (its path, its vector count). IVF lists go
    on disk (``ondisk.merge_index``) into a data file of the index folder named once per build
    (a resumed merge goes on in the same file; the saved index's own file is never written to,
    so a search or k-NN job reading it meanwhile reads the old index whole). The driver holds
    none of it."""
    import faiss
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from engines.vector.ondisk import merge_index

    out, done = shard_dir / "merged.faiss", shard_dir / "merged.json"
    if done.exists():  # merged before a kill, not saved
        return str(out), json.loads(done.read_text())["ntotal"]
    if not (shard_dir / "data-name").exists():
        (shard_dir / "data-name").write_text(f"index-{uuid.uuid4().hex[:12]}.ivfdata")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / (shard_dir / "data-name").read_text()
    trained = shard_dir / "trained.faiss"
    faiss.write_index(start.trained, str(trained))
    paths = [str(shard_dir / f"unit-{u['unit']}.faiss") for u in units]
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(num_cpus=1, scheduling_strategy=here)(merge_index)
    ntotal = ray.get(task.remote(str(trained), paths, str(out), data_path=str(data), base=start.base))
    done.write_text(json.dumps({"ntotal": ntotal}))
    return str(out), ntotal


def _manifest(
    store, ds, column: str, cfg: IndexBuildConfig, start: _Start, ntotal: int, sigs: dict, next_label: int, skipped: dict, added: int
):
    from engines.vector.index import Manifest, column_fingerprint

    history = (start.manifest.history if start.manifest else []) + [{"dataset_version": ds.version, "added": added, "time": time.time()}]
    return Manifest(
        column=column,
        dim=int(start.trained.d),
        metric=cfg.index.metric,
        kind=start.kind,
        factory=start.spec,
        dataset_uri=store.uri,
        dataset_version=ds.version,
        fingerprint=column_fingerprint(ds, column),
        ntotal=int(ntotal),
        rows_seen=next_label,
        skipped=skipped,
        config={**cfg.index.model_dump(mode="json"), "fragments": sigs, "next_label": next_label},
        history=history,
    )


@register_step(
    "vector_index", IndexBuildConfig, doc="FAISS index over an embedding column (sharded add on Ray, manifest)", writes=frozenset()
)
def _index_step(ctx, cfg: IndexBuildConfig) -> dict:
    m = build_index(ctx.store, cfg, show_progress=ctx.show_progress)
    return {"column": m["column"], "ntotal": m["ntotal"], "kind": m["kind"]}
