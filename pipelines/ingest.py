"""``curate ingest SRC... --dataset DS``: sources -> validated rows -> one Lance commit.

Units (folder slices, tars, JSONL byte ranges, Parquet row groups) run on Ray actors; each
writes its rows as Lance fragment files and returns their metadata. The driver checkpoints each
unit's fragments and commits them all at once in unit order, so the row order and ids are the
same however the work was scheduled, and a killed ingest re-run only reads the missing units.
After the commit the ``exact_dup`` stage flags byte-identical images (flagged, never dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from pydantic import Field

from curation.config import ConfigError
from curation.registry import register_step
from curation.runner import Checkpoints, StageResult, console, execute_resumable, json_record
from curation.schema import EXACT_DUP, SAMPLES_SCHEMA, sample_id
from curation.sources import ColumnMappingError, ReadOptions, duplicate_key_error, plan_units, read_unit
from curation.stage import StageConfig, Stats
from curation.store import Store, is_remote
from curation.text import MAX_CAPTION_CHARS

__all__ = ["IngestConfig", "EmptySourceError", "check_dataset_path", "ingest"]


class EmptySourceError(ConfigError):
    """The sources hold no sample: refused with a message (a ConfigError, so ``curate`` prints it
    without a traceback) rather than committing an empty dataset version nobody asked for."""


class IngestConfig(StageConfig):
    source: list[str] = Field(min_length=1, description="folders, .tar, .jsonl, .parquet (or a mix)")
    shard_size: int = Field(256, ge=1, le=100_000, description="images per folder unit and per write batch")
    max_pixels: int = Field(
        178_956_970,
        ge=1,
        description="width x height cap, from the header before decoding; larger images are rows with error decompression_bomb",
    )
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1, description="larger files (images, sidecars, JSONL lines) are rows with an error")
    max_caption_chars: int = Field(MAX_CAPTION_CHARS, ge=1, description="longer captions are truncated (counted: caption_truncated)")
    allow_paths_outside_source: bool = False
    image_column: str | None = Field(
        None, description="Parquet/JSONL column with image paths or bytes (default: image, path, file... any case)"
    )
    caption_column: str | None = Field(None, description="the column holding captions (default: caption, text, alt, captions... any case)")
    url_column: str | None = Field(None, description="column of remote image URLs (default: url, image_url, any case)")
    retry_errors: bool = Field(False, description="rows of these sources stored with an error are read again and replaced")
    flag_exact_duplicates: bool = True
    skip_existing: bool = Field(True, description="rows whose id is already in the dataset are not added again")
    existing_ids_in_memory_max: int = Field(
        5_000_000,
        ge=0,
        description="up to this many existing rows, their ids go to workers as a set; above it, workers "
        "look ids up in the dataset through a BTREE index on id (memory stays bounded)",
    )

    def read_options(self) -> ReadOptions:
        return ReadOptions(
            max_pixels=self.max_pixels,
            max_file_bytes=self.max_file_bytes,
            max_caption_chars=self.max_caption_chars,
            shard_size=self.shard_size,
            allow_paths_outside_source=self.allow_paths_outside_source,
            image_column=self.image_column,
            caption_column=self.caption_column,
            url_column=self.url_column,
        )


class ExistingIds:
    """Which of a batch of ids the dataset already holds (re-ingest must not add a row twice).

    Small datasets ship their ids as a set; large ones are asked per batch with an ``id IN (...)``
    filter that the BTREE index on ``id`` answers, so neither driver nor workers hold every id."""

    def __init__(
        self,
        ids: frozenset | None = None,
        uri: str | None = None,
        version: int | None = None,
        storage_options: dict | None = None,
        retry: frozenset = frozenset(),
    ):
        self.ids, self.uri, self.version, self.storage_options = ids, uri, version, storage_options
        self.retry = retry  # ids of error rows to read again (--retry-errors): not "present"
        self._ds = None

    def present(self, ids: list[str]) -> set[str]:
        if self.ids is not None:
            return {i for i in ids if i in self.ids and i not in self.retry}
        if self.uri is None or not ids:
            return set()
        if self._ds is None:
            import lance

            self._ds = lance.dataset(self.uri, version=self.version, storage_options=self.storage_options or None)
        quoted = ",".join("'" + i.replace("'", "''") + "'" for i in ids)
        return set(self._ds.to_table(columns=["id"], filter=f"id IN ({quoted})").column("id").to_pylist()) - self.retry

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}


class _IngestWorker:
    """A Ray actor: reads one unit and writes its rows as fragment files of the dataset."""

    def __init__(self, uri: str, storage_options: dict, opts: ReadOptions, existing_ids: ExistingIds):
        self.uri, self.storage_options, self.opts, self.existing = uri, storage_options, opts, existing_ids

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        out: dict[str, list] = {"unit": [], "fragments": [], "stats": [], "replaced": []}
        for unit in batch.to_pylist():
            t0 = time.perf_counter()
            counters: dict[str, int] = {}
            rows_total = 0
            replaced: list[str] = []

            def new_rows(buf: list[dict]) -> list[dict]:
                nonlocal rows_total
                replaced.extend(r["id"] for r in buf if r["id"] in self.existing.retry)  # noqa: B023 (called in this iteration)
                seen = self.existing.present([r["id"] for r in buf])
                if seen:
                    counters["skipped_existing"] = counters.get("skipped_existing", 0) + sum(r["id"] in seen for r in buf)  # noqa: B023 (called in this iteration)
                    buf = [r for r in buf if r["id"] not in seen]
                rows_total += len(buf)
                return buf

            def batches():
                buf = []
                for row in read_unit(unit, self.opts, counters):  # noqa: B023 (consumed in this iteration)
                    buf.append(row)
                    if len(buf) >= self.opts.shard_size:
                        if rows := new_rows(buf):
                            yield pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)
                        buf = []
                if buf and (rows := new_rows(buf)):
                    yield pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)

            reader = pa.RecordBatchReader.from_batches(SAMPLES_SCHEMA, batches())
            frags = write_fragments(
                reader, self.uri, schema=SAMPLES_SCHEMA, max_rows_per_file=1 << 20, storage_options=self.storage_options or None
            )
            stats = Stats(rows_total, Counter(counters), time.perf_counter() - t0)
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["stats"].append(json.dumps(stats.to_dict()))
            out["replaced"].append(json.dumps(replaced))
        return pa.table(out)


def _ensure_id_index(ds) -> None:
    """A BTREE index on ``id`` for re-ingest lookups; rows appended since it was built are still
    found (Lance scans unindexed fragments), so it is rebuilt only when a quarter is unindexed."""
    stats = None
    try:
        stats = ds.index_statistics("id_idx")
    except Exception:  # no such index yet
        pass
    if stats is not None and stats.get("num_unindexed_rows", 0) <= 0.25 * max(1, stats.get("num_indexed_rows", 0)):
        return
    ds.create_scalar_index("id", "BTREE", name="id_idx", replace=True)


def _existing_ids(store: Store, cfg: IngestConfig) -> ExistingIds:
    """Ids already stored (skipped on re-ingest); with ``retry_errors`` the ids of error rows are
    set apart as ``retry``: read again, and their new rows replace the old ones at commit."""
    ds = store.open()
    retry = frozenset()
    if cfg.retry_errors:
        retry = frozenset(ds.to_table(columns=["id"], filter="error IS NOT NULL").column("id").to_pylist())
    if ds.count_rows() <= cfg.existing_ids_in_memory_max:
        return ExistingIds(frozenset(ds.to_table(columns=["id"]).column("id").to_pylist()), retry=retry)
    _ensure_id_index(ds)
    return ExistingIds(uri=store.uri, version=ds.version, storage_options=store.storage_options, retry=retry)


def _ensure_meta_column(store: Store) -> None:
    """A dataset made before ``meta`` existed gets it as an all-null column (a metadata-only
    version, no data rewritten): Lance refuses fragments with a field the dataset lacks, and
    dropping the new rows' metadata would lose it."""
    if "meta" in store.open().schema.names:
        return
    with store.lock("commit-rows"):
        ds = store.open()
        if "meta" not in ds.schema.names:
            ds.add_columns(SAMPLES_SCHEMA.field("meta"))


def _commit_replacing(store: Store, frags: list, replaced: list[str]):
    """Delete the old error rows and add the re-read ones in one ``Update`` commit.

    Why one Lance ``Update`` (deletion vectors on the old fragments + the new fragments) and not
    ``delete`` then ``Append``: a reader never sees the rows missing, and a crash between the two
    cannot lose them. The old rows' derived columns (profile, tags ...) go with them; the new rows
    have none until the stages run again."""
    from lance import LanceDataset, LanceOperation
    from lance.commit import CommitConflictError

    quoted = ",".join("'" + i.replace("'", "''") + "'" for i in replaced)
    with store.lock("commit-rows"):
        for _ in range(20):
            ds = store.open()
            updated, removed = [], []
            for frag in ds.get_fragments():
                if frag.count_rows(f"id IN ({quoted})") == 0:
                    continue
                meta = frag.delete(f"id IN ({quoted})")
                if meta is None:  # every row of it replaced
                    removed.append(frag.fragment_id)
                else:
                    updated.append(meta)
            op = LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated, new_fragments=frags)
            try:
                return LanceDataset.commit(
                    store.uri, op, read_version=ds.version, storage_options=store.storage_options or None, commit_message="ingest"
                )
            except CommitConflictError:
                continue
    raise RuntimeError(f"ingest: gave up after 20 commit conflicts on {store.uri}")


_SKIPPED_WORDS = {
    "caption_without_image": "caption files without an image",
    "unsupported_file": "files of other types",
    "symlinked_dir": "symlinked folders (not followed)",
    "repeated_source": "sources named twice or inside another source",
    "sidecar_of_listed_image": "caption files of images a table lists",
    "lance_dataset": "Lance datasets inside the source (not read)",
    "coco_annotations_without_captions": "COCO annotation files without captions",
}

# what a Lance dataset folder holds (``_curation``: our state; ``data``/``_transactions`` alone:
# a first ingest that was interrupted and is being resumed)
_DATASET_ENTRIES = {"_versions", "_transactions", "_deletions", "_indices", "_refs", "_latest.manifest", "data", "_curation"}


def check_dataset_path(uri: str) -> None:
    """Refuse a ``--dataset`` that is an existing folder of other files (``curate ingest photos
    -d photos``, arguments swapped): Lance would write its data and versions into the user's
    source folder. A Lance dataset, an empty folder or a resumable first ingest pass."""
    p = Path(uri)
    if not is_remote(uri) and p.exists() and not p.is_dir():
        raise ConfigError(f"--dataset {uri} is a file, not a Lance dataset (a folder); give a new path (or an existing dataset)")
    if is_remote(uri) or not p.is_dir() or (p / "_versions").is_dir():
        return
    other = sorted(n for n in os.listdir(p) if n not in _DATASET_ENTRIES)
    if other:
        raise ConfigError(
            f"--dataset {uri} is a folder of other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}), "
            "not a Lance dataset; give a new path (or an existing dataset) for the dataset"
        )


def _empty_message(sources: list[str], units: list[dict]) -> str:
    """Why nothing was read, with the counted skips (orphan captions, other file types)."""
    skipped: Counter = Counter()
    for u in units:
        if u["kind"] == "skipped":
            skipped.update(json.loads(u["counts"]))
    why = ", ".join(f"{n} {_SKIPPED_WORDS.get(k, k)}" for k, n in sorted(skipped.items()))
    return (
        f"nothing to ingest in {', '.join(sources)}: found no images (.jpg, .png, ...), WebDataset .tar files "
        f"or .jsonl/.parquet rows{f' (skipped: {why})' if why else ''}; no dataset version was written"
    )


def _fingerprint(cfg: IngestConfig, units: list[dict], read_version: int | None) -> str:
    payload = json.dumps({"cfg": cfg.model_dump(mode="json"), "units": units, "v": read_version}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def ingest(store: Store, cfg: IngestConfig, *, show_progress: bool = True, concurrency: int | None = None) -> list[StageResult]:
    """Ingest sources into the dataset (created if absent); returns the results of ingest and exact_dup."""
    from curation.store import IdsAddedMeanwhile

    t_start = time.perf_counter()
    check_dataset_path(store.uri)
    opts = cfg.read_options()
    units = _plan_sources(cfg, opts)
    existing, read_version = _prepare_dataset(store, cfg)
    ckpt = Checkpoints(store.state_dir / "checkpoints" / f"ingest-{_fingerprint(cfg, units, read_version)}", "unit")
    done = _write_units(store, opts, units, existing, ckpt, concurrency=concurrency, show_progress=show_progress)
    renamed = _unique_ids(store, units, done)
    frags = _new_fragments(units, done)
    stats = _total_stats(done, renamed)
    if stats.rows == 0 and not stats.counters.get("skipped_existing"):  # e.g. an empty Parquet
        ckpt.clear()
        raise EmptySourceError(_empty_message(cfg.source, units))
    if stats.rows == 0 and store.exists():  # nothing new (a re-run, or another job created it meanwhile): no empty version
        ckpt.clear()
        return [_nothing_new(store, stats, read_version, t_start)]
    try:  # created if still absent, else appended: ingests at once all land (Store.commit_rows)
        new = _commit_new_rows(store, cfg, frags, done, read_version, stats)
    except IdsAddedMeanwhile as e:  # the same rows ingested by another job meanwhile: skip them now
        ckpt.clear()
        console.print(f"ingest: {e}; reading again so that no row is stored twice", markup=False)
        return ingest(store, cfg, show_progress=show_progress, concurrency=concurrency)
    ckpt.clear()
    result = StageResult(
        "ingest",
        "committed",
        new.version,
        read_version or 0,
        len(frags),
        0,
        stats,
        time.perf_counter() - t_start,
        extra={"units": len(units), "sources": cfg.source},
    )
    result.stats_path = str(store.write_json(f"stats/ingest-v{new.version}.json", result.to_dict()))
    return [result, *_flag_exact_duplicates(store, cfg, new, show_progress)]


def _plan_sources(cfg: IngestConfig, opts: ReadOptions) -> list[dict]:
    """The work units of the sources. A column mapping that does not fit, or sources without a
    sample, are refused here, before anything is written."""
    try:
        units = plan_units(cfg.source, opts)
    except ColumnMappingError as e:
        raise ConfigError(str(e)) from None
    if all(u["kind"] == "skipped" for u in units):
        raise EmptySourceError(_empty_message(cfg.source, units))
    return units


def _prepare_dataset(store: Store, cfg: IngestConfig) -> tuple[ExistingIds, int | None]:
    """The ids already stored (skipped by the readers) and the version this run reads (None: the
    dataset does not exist yet); an existing dataset first gets the ``meta`` column if it lacks it."""
    exists = store.exists()
    if exists:
        _ensure_meta_column(store)
    existing = _existing_ids(store, cfg) if exists and cfg.skip_existing else ExistingIds(frozenset())
    read_version = store.open().version if exists else None
    return existing, read_version


def _new_fragments(units: list[dict], done: dict[str, dict]) -> list:
    """The written fragments, in unit order: the commit order that makes row order and ids the
    same however the units were scheduled."""
    from lance.fragment import FragmentMetadata

    return [FragmentMetadata.from_json(json.dumps(f)) for u in units for f in done[u["unit"]]["fragments"]]


def _total_stats(done: dict[str, dict], renamed: Counter) -> Stats:
    """The units' stats summed, plus the counters of rows renamed for a repeated id."""
    stats = Stats()
    for rec in done.values():
        stats = stats + Stats.from_dict(rec["stats"])
    stats.counters.update(renamed)
    return stats


def _nothing_new(store: Store, stats: Stats, read_version: int | None, t_start: float) -> StageResult:
    """The result of a run that read only rows already stored: reported, with no empty version committed."""
    now = store.open().version
    console.print(f"ingest: no new rows ({stats.counters.get('skipped_existing', 0)} already in the dataset)")
    return StageResult("ingest", "skipped", now, read_version or now, 0, 0, stats, time.perf_counter() - t_start)


def _commit_new_rows(store: Store, cfg: IngestConfig, frags: list, done: dict[str, dict], read_version: int | None, stats: Stats):
    """Commit the fragments; rows read again for ``retry_errors`` replace their error rows in the
    same commit (counted in ``stats`` as retried_errors). Raises ``IdsAddedMeanwhile`` as commit_rows does."""
    replaced = sorted({i for rec in done.values() for i in rec.get("replaced", [])})
    if replaced:
        new = _commit_replacing(store, frags, replaced)
        stats.counters["retried_errors"] = len(replaced)
        return new
    return store.commit_rows(frags, read_version, SAMPLES_SCHEMA, unique_ids=cfg.skip_existing)


def _flag_exact_duplicates(store: Store, cfg: IngestConfig, new, show_progress: bool) -> list[StageResult]:
    """Run ``exact_dup`` over the whole dataset after a commit (new rows may duplicate old ones);
    its result, or none when it is turned off or the dataset is empty."""
    if not (cfg.flag_exact_duplicates and new.count_rows() > 0):
        return []
    from curation.runner import run_stage
    from pipelines.basic_stages import ExactDupStage

    return [run_stage(store, ExactDupStage(), overwrite=True, show_progress=show_progress)]


def _fragment_files(store: Store, frags: list[dict]) -> list[str]:
    """Paths of the data files of uncommitted fragments (one file each: ``write_fragments``)."""
    from lance.fragment import FragmentMetadata

    return [f"{store.uri}/data/{f.path}" for fr in frags for f in FragmentMetadata.from_json(json.dumps(fr)).data_files()]


def _read_files(store: Store, paths: list[str], columns: list[str] | None = None) -> pa.Table:
    from lance.file import LanceFileReader

    opts = store.storage_options or None
    tables = [LanceFileReader(p, storage_options=opts, columns=columns).read_all().to_table() for p in paths]
    schema = pa.schema([SAMPLES_SCHEMA.field(c) for c in columns]) if columns else SAMPLES_SCHEMA
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]) if tables else schema.empty_table()


def _unique_ids(store: Store, units: list[dict], done: dict[str, dict]) -> Counter:
    """The safety net under planning and the readers: no id is committed twice in one run.

    Sources are de-duplicated while planning and each reader renames a key it meets twice, but a
    key can still come back in another unit (two row groups of one Parquet file holding one
    ``id``). The new rows' ids are read back (one column); only when two are equal is a later
    copy's unit rewritten, the copy becoming ``<key>#N`` with ``duplicate_key``, as in a tar.
    Returns the counters of the renamed rows."""
    import pyarrow.compute as pc

    ids = {u["unit"]: _read_files(store, _fragment_files(store, done[u["unit"]]["fragments"]), ["id"]).column("id") for u in units}
    every = pa.chunked_array([c for col in ids.values() for c in col.chunks], pa.string())
    if pc.count_distinct(every).as_py() == len(every):
        return Counter()
    taken, seen, counts = set(every.to_pylist()), set(), Counter()
    for u in units:  # in unit order: the first copy keeps its id, whatever the scheduling
        again = []
        for i, v in enumerate(ids[u["unit"]].to_pylist()):
            if v in seen:
                again.append(i)
            seen.add(v)
        if again:
            counts += _rename_rows(store, done[u["unit"]], again, taken)
    return counts


def _rename_rows(store: Store, rec: dict, rows: list[int], taken: set[str]) -> Counter:
    """Rewrite one unit's fragments with ``rows`` (positions) under a fresh ``<key>#N`` key and
    ``duplicate_key`` (an earlier error stays: the first error wins, as in ``make_row``)."""
    from lance.fragment import write_fragments

    t = _read_files(store, _fragment_files(store, rec["fragments"]))
    ids, keys, errors = (t.column(c).to_pylist() for c in ("id", "source_key", "error"))
    sources, counts = t.column("source").to_pylist(), Counter()
    for i in rows:
        n, new = 2, None
        while new is None or new in taken:
            key, new = f"{keys[i]}#{n}", sample_id(sources[i], f"{keys[i]}#{n}")
            n += 1
        taken.add(new)
        counts["error_duplicate_key"] += errors[i] is None
        ids[i], keys[i], errors[i] = new, key, errors[i] or duplicate_key_error(keys[i], sources[i])
    for name, values in (("id", ids), ("source_key", keys), ("error", errors)):
        t = t.set_column(t.schema.get_field_index(name), SAMPLES_SCHEMA.field(name), pa.array(values, pa.string()))
    opts = store.storage_options or None
    rec["fragments"] = [f.to_json() for f in write_fragments(t, store.uri, schema=SAMPLES_SCHEMA, storage_options=opts)]
    return counts


def _write_units(
    store: Store,
    opts: ReadOptions,
    units: list[dict],
    existing: ExistingIds,
    ckpt: Checkpoints,
    *,
    concurrency: int | None,
    show_progress: bool,
) -> dict[str, dict]:
    """Each unit's rows written as data files by a worker (not yet committed); returns every
    unit's record (fragments, stats, ids replaced), the ones written by an interrupted run read
    back from its checkpoints so that only the missing units run again."""

    return execute_resumable(
        units,
        ckpt,
        _IngestWorker,
        {"uri": store.uri, "storage_options": store.storage_options, "opts": opts, "existing_ids": existing},
        record=json_record("unit", "fragments", "stats", "replaced"),
        job="ingest",
        ray_options={"num_cpus": 1},
        concurrency=concurrency,
        show_progress=show_progress,
        already="written",
    )[0]


@register_step(
    "ingest",
    IngestConfig,
    doc="read folders / WebDataset tars / Parquet / JSONL into the dataset",
    writes=frozenset(SAMPLES_SCHEMA.names + EXACT_DUP.columns),
)
def _ingest_step(ctx, cfg: IngestConfig):
    results = ingest(ctx.store, cfg, show_progress=ctx.show_progress)
    return results[0] if len(results) == 1 else _merge_results(results)


def _merge_results(results: list[StageResult]) -> StageResult:
    first, last = results[0], results[-1]
    stats = Stats(first.stats.rows, first.stats.counters + last.stats.counters, first.stats.seconds)
    return StageResult(
        "ingest",
        first.status,
        last.version,
        first.read_version,
        first.fragments,
        0,
        stats,
        sum(r.seconds for r in results),
        first.stats_path,
        dict(first.extra),
    )
