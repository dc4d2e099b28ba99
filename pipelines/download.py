"""``curate download --dataset DS``: fetch the http(s) images of URL rows into the dataset.

Ingest stores a row whose record names its image by URL (a LAION-style Parquet) with ``image``
null and the URL in ``image_uri``. This job fills those rows in place, the way ingest fills a
local image's row: ``image``, ``image_sha256``, ``width``, ``height``, ``format``, or a reason in
``error`` (``download_failed: http 404``, ``download_failed: timeout``, ``too_large: ...``,
``not_an_image: ...``). The fetching itself is ``engines.download``.

How it runs, and why:

- The unit of work is a Lance fragment that holds rows to fetch. A Ray actor fetches its rows
  (threads inside, a per-host limit) batch by batch and hands them, streaming, to
  ``fragment.update_columns``, which writes the fragment's updated columns as new data files (the
  other columns, and the other rows' values, stay as they are). The driver only ever holds
  fragment ids, counts and metadata, never ids of rows or bytes.
- Each finished fragment's metadata is checkpointed (``Checkpoints``); at the end one Lance
  ``Update`` commit makes every fragment's new values visible at once. A killed job re-run finds
  the checkpoints of the same config and dataset version and fetches only the missing fragments.
- A row is to fetch when its ``image_uri`` is http(s), it has no ``image_sha256`` (every stored
  image has one) and no ``error``; ``retry_errors`` adds rows whose error a download left (see
  ``engines.download.DOWNLOAD_REASONS``). So a re-run never fetches a downloaded row again.
- After the commit the ``exact_dup`` stage is recomputed (new bytes may duplicate old ones), as
  ingest does.

Memory of a worker is bounded by one fragment's fetched bytes (``update_columns`` joins them on
``id``): ingest writes one fragment per unit (a Parquet row group), so keep row groups of URL
tables moderate (``--resize-max-side`` also shrinks what is held).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
from pydantic import Field

from curation.registry import register_step
from curation.runner import Checkpoints, StageResult, console, execute_resumable
from curation.schema import SAMPLES_SCHEMA
from curation.stage import StageConfig, Stats
from curation.store import Store
from engines.download import DOWNLOAD_REASONS, UPDATE_SCHEMA, Fetcher, FetchOptions, fetch_batch

__all__ = ["DownloadConfig", "download", "pending_filter", "failure_counts"]

_SCHEDULING = ("threads", "concurrency_per_host", "num_cpus", "batch_size", "flag_exact_duplicates")


class DownloadConfig(StageConfig):
    """What to fetch and how (``curate download`` options; the ``download`` pipeline step)."""

    concurrency_per_host: int = Field(4, ge=1, le=256, description="requests at once to one host, per worker")
    threads: int = Field(16, ge=1, le=512, description="requests at once per worker (I/O threads)")
    retries: int = Field(3, ge=0, le=20, description="extra attempts after a timeout, connection error, 429 or 5xx")
    backoff_seconds: float = Field(0.5, ge=0, le=60, description="first retry wait; doubles each attempt (jittered)")
    timeout: float = Field(20.0, gt=0, le=600, description="seconds to connect, per read, and for the whole body")
    max_bytes: int = Field(32 * 1024 * 1024, ge=1, description="larger bodies are refused (too_large), reading stops there")
    max_redirects: int = Field(5, ge=0, le=30)
    max_pixels: int = Field(178_956_970, ge=1, description="width x height cap, from the header before decoding")
    resize_max_side: int | None = Field(None, ge=8, description="bring the longest side down to this (same format)")
    retry_errors: bool = Field(False, description="fetch again rows whose earlier download failed")
    batch_size: int = Field(256, ge=1, le=100_000, description="rows fetched per batch within a fragment")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per worker (fetching is I/O; decode checks use CPU)")
    flag_exact_duplicates: bool = Field(True, description="recompute exact_dup_of after the commit")

    def fetch_options(self) -> FetchOptions:
        keys = ("timeout", "retries", "backoff_seconds", "max_bytes", "max_redirects", "max_pixels")
        more = ("resize_max_side", "concurrency_per_host", "threads")
        return FetchOptions(**{k: getattr(self, k) for k in keys + more})


def pending_filter(retry_errors: bool) -> str:
    """The Lance filter of rows to fetch (cheap columns only: never reads image bytes)."""
    remote = "(lower(image_uri) LIKE 'http://%' OR lower(image_uri) LIKE 'https://%')"
    errors = "error IS NULL"
    if retry_errors:
        errors = "(" + " OR ".join(["error IS NULL", *(f"error LIKE '{r}:%'" for r in DOWNLOAD_REASONS)]) + ")"
    return f"image_sha256 IS NULL AND {remote} AND {errors}"


class _DownloadWorker:
    """A Ray actor: fetches the pending rows of whole fragments and writes their new column files."""

    def __init__(self, uri: str, storage_options: dict, version: int, opts: FetchOptions, filter: str, batch_size: int):
        import lance

        self.ds = lance.dataset(uri, version=version, storage_options=storage_options or None)
        self.fetcher = Fetcher(opts)
        self.filter, self.batch_size = filter, batch_size

    def _fragment(self, fid: int) -> tuple[str, list[int], Stats]:
        """One fragment: (its updated metadata as JSON, the field ids modified, its stats)."""
        t0 = time.perf_counter()
        frag = self.ds.get_fragment(fid)
        counters: Counter = Counter()
        rows = 0

        def fetched():
            nonlocal rows
            # a second handle: ``update_columns`` holds the first one while it pulls these batches
            src = self.ds.get_fragment(fid)
            for b in src.to_batches(columns=["id", "image_uri"], filter=self.filter, batch_size=self.batch_size):
                if b.num_rows:
                    rows += b.num_rows
                    yield fetch_batch(b, self.fetcher, counters)

        reader = pa.RecordBatchReader.from_batches(UPDATE_SCHEMA, fetched())
        meta, fields = frag.update_columns(reader, left_on="id", right_on="id")
        return json.dumps(meta.to_json()), list(fields), Stats(rows, +counters, time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"fragment_id": [], "fragment": [], "fields": [], "stats": []}
        for fid in batch.column("fragment_id").to_pylist():
            meta, fields, stats = self._fragment(int(fid))
            out["fragment_id"].append(int(fid))
            out["fragment"].append(meta)
            out["fields"].append(json.dumps(fields))
            out["stats"].append(json.dumps(stats.to_dict()))
        return pa.table(out)


def _fingerprint(cfg: DownloadConfig, read_version: int) -> str:
    """What the fetched values depend on (scheduling knobs excluded, so they may change on resume)."""
    what = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _SCHEDULING}
    payload = json.dumps({"cfg": what, "v": read_version}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _plan(ds, filt: str) -> list[dict[str, int]]:
    """One unit per fragment with rows to fetch, with its row count (for progress in rows).
    One streaming scan of row addresses (fragment id = the high 32 bits): memory is one count
    per fragment, and no image bytes are read."""
    import pyarrow.compute as pc

    counts: Counter = Counter()
    for b in ds.to_batches(columns=[], filter=filt, with_row_address=True):
        fids = pc.shift_right(b.column("_rowaddr"), pa.scalar(32, pa.uint64()))
        counts.update(dict(zip(*(x.to_pylist() for x in pc.value_counts(fids).flatten()), strict=True)))
    return [{"fragment_id": int(f), "rows": int(n)} for f, n in sorted(counts.items())]


def _row_progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*cols, console=console, disable=not show)


def _fetch_units(
    store: Store, cfg: DownloadConfig, read_version: int, units: list[dict], ckpt: Checkpoints, **run
) -> tuple[dict[int, dict], int]:
    """Run every unit not yet checkpointed (progress in rows); returns every unit's record by
    fragment id and how many came from an earlier run."""
    ctor = {"uri": store.uri, "storage_options": store.storage_options, "version": read_version}
    ctor |= {"opts": cfg.fetch_options(), "filter": pending_filter(cfg.retry_errors), "batch_size": cfg.batch_size}
    with _row_progress(run["show_progress"]) as progress:
        # progress in rows by each fragment's record, resumed or new (the fetchers report no row counter)
        task = progress.add_task("download (rows)", total=sum(u["rows"] for u in units))

        def record(row: dict[str, Any]) -> dict[str, Any]:
            rec = {k: row[k] for k in ("fragment_id", "fragment")}
            return rec | {"fields": json.loads(row["fields"]), "stats": json.loads(row["stats"])}

        return execute_resumable(
            units, ckpt, _DownloadWorker, ctor, record=record, job="download", ray_options={"num_cpus": cfg.num_cpus},
            concurrency=run["concurrency"], show_progress=False,
            on_record=lambda rec: progress.advance(task, rec["stats"]["rows"]), noun="fragments", already="fetched",
        )  # fmt: skip


def _commit(store: Store, read_version: int, done: dict[int, dict]):
    """One ``Update`` commit of every fragment's new column files on top of ``read_version``."""
    from lance import LanceDataset, LanceOperation
    from lance.fragment import FragmentMetadata

    metas = [FragmentMetadata.from_json(done[fid]["fragment"]) for fid in sorted(done)]
    fields = sorted({f for rec in done.values() for f in rec["fields"]})
    op = LanceOperation.Update(updated_fragments=metas, fields_modified=fields)
    opts = store.storage_options or None
    return LanceDataset.commit(store.uri, op, read_version=read_version, storage_options=opts, commit_message="download")


def failure_counts(stats: Stats) -> dict[str, int]:
    """Failed rows by kind (``http_404``, ``timeout``, ``not_an_image``...), most frequent first."""
    fails = {k.removeprefix("failed_"): n for k, n in stats.counters.items() if k.startswith("failed_")}
    return dict(sorted(fails.items(), key=lambda kv: (-kv[1], kv[0])))


def _result(status: str, version: int, read_version: int, units: list, resumed: int, stats: Stats, t0: float) -> StageResult:
    seconds = time.perf_counter() - t0
    c = stats.counters
    extra = {
        "downloaded": c.get("downloaded", 0),
        "failed": sum(failure_counts(stats).values()),
        "failed_by_kind": failure_counts(stats),
        "bytes_stored": c.get("bytes_stored", 0),
        "megabytes_per_second": round(c.get("bytes_fetched", 0) / 1e6 / seconds, 2) if seconds > 0 else None,
    }
    return StageResult("download", status, version, read_version, len(units), resumed, stats, seconds, extra=extra)


def _download_once(store: Store, cfg: DownloadConfig, show_progress: bool, concurrency: int | None) -> StageResult:
    """Plan, fetch (resumable), commit once; raises lance's ``CommitConflictError`` on a race."""
    t0 = time.perf_counter()
    ds = store.open()
    read_version = ds.version
    units = _plan(ds, pending_filter(cfg.retry_errors))
    if not units:
        console.print("download: no row to fetch (every http(s) row has its image or an error; --retry-errors fetches failed ones)")
        return _result("skipped", read_version, read_version, [], 0, Stats(), t0)
    ckpt = Checkpoints(store.state_dir / "checkpoints" / f"download-{_fingerprint(cfg, read_version)}", "fragment_id")
    done, resumed = _fetch_units(store, cfg, read_version, units, ckpt, show_progress=show_progress, concurrency=concurrency)
    stats = sum((Stats.from_dict(rec["stats"]) for rec in done.values()), Stats())
    from lance.commit import CommitConflictError

    try:
        new = _commit(store, read_version, done)
    except CommitConflictError:
        ckpt.clear()  # raced: the fragments must be fetched against the new version
        raise
    ckpt.clear()
    result = _result("committed", new.version, read_version, units, resumed, stats, t0)
    result.stats_path = str(store.write_json(f"stats/download-v{new.version}.json", result.to_dict()))
    return result


def download(
    store: Store, cfg: DownloadConfig, *, show_progress: bool = True, concurrency: int | None = None, max_conflict_retries: int = 3
) -> list[StageResult]:
    """Fetch every pending URL row and commit once; then recompute ``exact_dup`` (as ingest does).
    One download at a time per dataset (a second waits); a concurrent commit of another job
    makes it fetch again against the new version."""
    from lance.commit import CommitConflictError

    with store.lock("download", on_wait=lambda h: console.print(f"download: another download is running ({h}); waiting", markup=False)):
        for _ in range(max_conflict_retries + 1):
            try:
                result = _download_once(store, cfg, show_progress, concurrency)
                break
            except CommitConflictError:
                console.print("download: another job committed first; fetching again on the new version")
        else:
            raise RuntimeError(f"download: gave up after {max_conflict_retries} commit conflicts")
    results = [result]
    if result.status == "committed" and cfg.flag_exact_duplicates and result.extra["downloaded"]:
        from curation.runner import run_stage
        from pipelines.basic_stages import ExactDupStage

        results.append(run_stage(store, ExactDupStage(), overwrite=True, show_progress=show_progress))
    return results


@register_step(
    "download",
    DownloadConfig,
    doc="fetch the http(s) images of URL rows (retries, limits, checks) into the dataset",
    writes=frozenset(SAMPLES_SCHEMA.names),
)
def _download_step(ctx, cfg: DownloadConfig) -> StageResult:
    results = download(ctx.store, cfg, show_progress=ctx.show_progress)
    first = results[0]
    first.version = results[-1].version  # the pipeline's summary shows where the dataset now is
    first.seconds = sum(r.seconds for r in results)
    return first
