"""What the pair jobs share: the pair table's schema, its output table, the worker base, and the
one job runner (plan, units on Ray, checkpoints, one commit) that render, synth and mine use."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.runner import Checkpoints, StageResult, console, execute_resumable
from curation.stage import StageConfig, Stats
from curation.store import Store, is_remote, storage_options_from_env

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),  # the samples-table row id of the photo
        pa.field("target_id", pa.string()),  # mined: the target's row id; null when made here (render, synth)
        pa.field("kind", pa.string()),  # replace | remove | add (render); recolour | remove | move | resize (synth)
        pa.field("src_image", pa.large_binary()),
        pa.field("tgt_image", pa.large_binary()),
        pa.field("instruction_en", pa.string()),
        pa.field("instruction_zh", pa.string()),
        pa.field("src_text", pa.string()),  # "" for add; synth: the object's COCO category
        pa.field("tgt_text", pa.string()),  # "" for remove; synth: the colour, left / right, bigger / smaller
        pa.field("box", pa.list_(pa.int32())),  # x0, y0, x1, y1 (exclusive), pixels of both images
        pa.field("changed_fraction", pa.float32()),  # share of pixels that differ between the images
        pa.field("lang", pa.string()),  # en | zh: the script of the texts; null for synth
        pa.field("style", pa.string()),  # sign | plain; synth: the edit's parameters ("hue=0 ...", "scale=.. dx=..")
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("provenance", pa.string()),  # "render v1 seed=S dataset=URI@vN"; synth adds annotations=F#sha ann=ID[+ID]
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

_SCHEDULING = ("batch_size", "num_cpus")

PAIR_REVIEW_COLUMNS = ("review", "instruction_en_orig", "instruction_zh_orig")
"""What ``curate review apply`` adds to a pair table (``pipelines.pairs.review``): a reviewed
table is still a pair table, and the jobs append to it (Lance fills the new columns with null)."""


def is_pair_schema(names: list[str]) -> bool:
    """``PAIRS_SCHEMA``'s columns plus none or some of the review columns. In any order: a table
    written before ``target_id`` existed gets it as its last column (``upgrade_pair_table``)."""
    return set(PAIRS_SCHEMA.names) <= set(names) and all(c in PAIR_REVIEW_COLUMNS for c in set(names) - set(PAIRS_SCHEMA.names))


def is_legacy_pair_schema(names: list[str]) -> bool:
    """A pair table written before ``target_id`` was a column (sessions before it: a mined pair's
    target id only in ``provenance``)."""
    return "target_id" not in names and is_pair_schema([*names, "target_id"])


def target_of(provenance: str | None) -> str | None:
    """The target's row id a mined pair names in its ``provenance`` (``target=ID``), else None."""
    m = re.search(r"(?:^| )target=(\S+)", provenance or "")
    return m.group(1) if m else None


def upgrade_pair_table(uri: str, ds):
    """``ds`` itself, or for a table of the legacy layout (``is_legacy_pair_schema``) a new version
    of it with ``target_id`` added from each row's provenance (null for rendered and synthetic
    pairs, whose target is made here). Why in place and not on the fly: every job, export and
    review then reads one layout; the old version stays readable (Lance versions)."""
    if ds is None or not is_legacy_pair_schema(ds.schema.names):
        return ds

    def target_ids(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = [target_of(p) for p in batch.column("provenance").to_pylist()]
        return pa.RecordBatch.from_arrays([pa.array(ids, pa.string())], names=["target_id"])

    ds.add_columns(target_ids, read_columns=["provenance"])
    ds = open_out(uri)
    console.print(f"pairs: {uri} predates the target_id column; added it from provenance (version {ds.version})", markup=False)
    return ds


def check_kinds(v: list[str], known) -> list[str]:
    """The ``kinds`` option of either job: known names, at least one, each once, in order."""
    v = [k.strip() for k in v if k.strip()]
    bad = [k for k in v if k not in known]
    if bad:
        raise ValueError(f"unknown kind {bad[0]!r}; use {', '.join(known)}")
    if not v:
        raise ValueError(f"no kind given; use {', '.join(known)}")
    return list(dict.fromkeys(v))


def open_out(uri: str):
    """The pair table, or None when there is none yet."""
    import lance

    try:
        return lance.dataset(uri, storage_options=storage_options_from_env(uri) or None)
    except (ValueError, FileNotFoundError, OSError):
        return None


def check_pair_tables(uris: list[str], option: str, make: str) -> None:
    """Each of ``uris`` holds a pair table, or ``ValueError`` (one line) naming the ``option`` it
    came from and the command (``make``) that writes one. Shared by export and review. A legacy
    table is upgraded first (``upgrade_pair_table``)."""
    for uri in uris:
        ds = open_out(uri)
        if ds is None:
            raise ValueError(f"{option} {uri}: no Lance dataset there; make one with `{make}`")
        ds = upgrade_pair_table(uri, ds)
        if not is_pair_schema(ds.schema.names):
            raise ValueError(f"{option} {uri} is a Lance dataset but not a pair table (its columns differ from PAIRS_SCHEMA)")


def check_out(uri: str) -> str | None:
    """Why ``uri`` cannot be the pair table (None when it can): an existing folder that is not a
    Lance dataset, or a Lance dataset with other columns."""
    from pathlib import Path

    ds = open_out(uri)
    if ds is None:
        if not is_remote(uri) and Path(uri).exists() and (not Path(uri).is_dir() or any(Path(uri).iterdir())):
            return f"--out {uri} exists and is not a Lance dataset"
        return None
    if not (is_pair_schema(ds.schema.names) or is_legacy_pair_schema(ds.schema.names)):
        return f"--out {uri} is a Lance dataset with other columns than a pair table"
    return None


def eligible_photos(ds) -> tuple[list[str], list[int]]:
    """(ids, positions) of the rows with a stored image and no error (light columns only)."""
    t = ds.to_table(columns=["id", "image_sha256", "error"])
    import pyarrow.compute as pc

    ok = pc.and_(pc.is_valid(t.column("image_sha256")), pc.is_null(t.column("error")))
    pos = np.flatnonzero(ok.to_numpy())
    ids = t.column("id").take(pa.array(pos)).to_pylist()
    return ids, pos.tolist()


class PairJobConfig(StageConfig):
    """What every job that writes a pair table takes: where, how images are encoded, how big they
    may be, and how the work is cut. Each kind adds its own fields and names its default table."""

    table: ClassVar[str]  # the default pair table: <dataset>/_curation/pairs/<table>.lance

    out: str | None = Field(None, description="the pair table (default <dataset>/_curation/pairs/<table>.lance)")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless (exact ground truth); jpeg is smaller")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_side: int = Field(1024, ge=64, le=8192, description="larger photos (and masks) are shrunk to this longest side first")
    batch_size: int = Field(16, ge=1, le=4096, description="pairs per unit of work (one actor call, one checkpoint)")
    num_cpus: float = Field(1.0, gt=0)


def table_path(store: Store, name: str) -> str:
    """Where a pair table lives by default: ``<dataset>/_curation/pairs/<name>.lance``."""
    return str(store.state_dir / "pairs" / f"{name}.lance")


def resolve_out(store: Store, cfg: StageConfig) -> str:
    """The pair table a job writes: ``--out``, else its kind's default table (``cfg.table``)."""
    out_uri = cfg.out or table_path(store, cfg.table)
    if not is_remote(out_uri):
        from pathlib import Path

        out_uri = str(Path(out_uri).expanduser().resolve())
    return out_uri


def existing_ids(out_ds) -> set[str]:
    return set(out_ds.to_table(columns=["pair_id"]).column("pair_id").to_pylist()) if out_ds is not None else set()


class PairWorker:
    """A Ray actor: makes the pairs of whole units and writes them as pair-table fragments
    (``_unit`` is the kind of pair)."""

    config_cls: type[StageConfig] = StageConfig  # each kind's worker names its config

    def __init__(self, uri: str, storage_options: dict, version: int, out_uri: str, cfg: dict, provenance: str, created_at, **kw):
        import lance

        self.ds = lance.dataset(uri, version=version, storage_options=storage_options or None)
        self.out_uri, self.out_options = out_uri, storage_options_from_env(out_uri)
        self.cfg, self.provenance, self.created_at = self.config_cls(**cfg), provenance, created_at
        self.dropped: list[list[str]] = []  # (pair_id, reason) of pairs a unit decided not to write (mine)

    def _decode(self, image: bytes | None, uri: str | None):
        """The photo as a PIL RGB image at full size, or why it could not be read."""
        from engines.profiling.decode import DecodeOptions, decode_image, image_bytes_of

        opts = DecodeOptions(max_side=None)
        data = image_bytes_of(image, uri, opts.max_file_bytes)
        got = data if not isinstance(data, bytes) else decode_image(data, opts)
        return got.rgb if hasattr(got, "rgb") else got.reason

    def _shrink(self, rgb) -> np.ndarray:
        from PIL import Image

        if max(rgb.size) > self.cfg.max_side:
            rgb = rgb.copy()
            rgb.thumbnail((self.cfg.max_side, self.cfg.max_side), Image.Resampling.LANCZOS)
        return np.asarray(rgb)

    def _photo(self, image: bytes | None, uri: str | None):
        rgb = self._decode(image, uri)
        return rgb if isinstance(rgb, str) else self._shrink(rgb)

    def _planned_rows(self, pairs: list[dict]) -> dict[int, dict]:
        """The dataset rows (id, image, image_uri) the unit's pairs were planned on, by position
        (``pos``). The version is pinned, so a row that is not the planned ``source_id`` is a
        planning bug: ``RuntimeError``."""
        uniq = sorted({p["pos"] for p in pairs})
        rows = self.ds.take(np.asarray(uniq, np.int64), columns=["id", "image", "image_uri"]).to_pylist()
        by_pos = dict(zip(uniq, rows, strict=True))
        for p in pairs:
            if by_pos[p["pos"]]["id"] != p["source_id"]:
                raise RuntimeError(f"row {p['pos']} is {by_pos[p['pos']]['id']}, planned {p['source_id']}")
        return by_pos

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        out: dict[str, list] = {"unit": [], "fragments": [], "stats": [], "dropped": []}
        for unit in batch.to_pylist():
            t0 = time.perf_counter()
            self.dropped = []
            table, counters = self._unit(json.loads(unit["pairs"]))
            frags = []
            if table.num_rows:
                frags = write_fragments(
                    table, self.out_uri, schema=PAIRS_SCHEMA, max_rows_per_file=1 << 20, storage_options=self.out_options or None
                )
            stats = Stats(table.num_rows, counters, time.perf_counter() - t0)
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["stats"].append(json.dumps(stats.to_dict()))
            out["dropped"].append(json.dumps(self.dropped))
        return pa.table(out)


def _fingerprint(cfg: StageConfig, read_version: int, out_uri: str, out_version: int | None, salt: str = "") -> str:
    what = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _SCHEDULING}
    payload = json.dumps({"cfg": what, "v": read_version, "out": out_uri, "out_v": out_version}, sort_keys=True) + salt
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _commit(out_uri: str, out_ds, frags: list, message: str):
    from lance import LanceDataset, LanceOperation

    opts = storage_options_from_env(out_uri) or None
    if out_ds is None:
        return LanceDataset.commit(out_uri, LanceOperation.Overwrite(PAIRS_SCHEMA, frags), storage_options=opts, commit_message=message)
    op = LanceOperation.Append(frags)
    return LanceDataset.commit(out_uri, op, read_version=out_ds.version, storage_options=opts, commit_message=message)


def _unit_record(row: dict[str, Any]) -> dict[str, Any]:
    """A pair unit's checkpoint: its fragments, counters and the pairs it decided not to write."""
    rec = {"unit": row["unit"], "fragments": json.loads(row["fragments"]), "stats": json.loads(row["stats"])}
    return rec | {"dropped": json.loads(row.get("dropped") or "[]")}


def run_job(
    store: Store,
    cfg: StageConfig,
    job: str,
    plan,
    worker: type,
    worker_kw: dict[str, Any],
    provenance: str,
    tally,
    *,
    t0: float,
    show_progress: bool,
    concurrency: int | None,
    salt: str = "",
    on_dropped=None,
) -> StageResult:
    """The job around a pair maker: plan under the job's lock, run the units on Ray actors with
    checkpoints, commit once. ``plan(ds, existing)`` -> (units, skipped, extra, why-nothing);
    ``tally(counters)`` -> the counts ``extra`` reports; ``on_dropped(pairs)`` gets the (pair_id,
    reason) of pairs the workers decided not to write, before the commit (mine remembers them)."""
    from lance.fragment import FragmentMetadata

    name = f"pairs {job}"
    out_uri = resolve_out(store, cfg)
    problem = check_out(out_uri)
    if problem:
        raise ValueError(problem)
    with store.lock(f"pairs-{job}", on_wait=lambda h: console.print(f"pairs: another {job} job is running ({h}); waiting", markup=False)):
        ds = store.open()
        read_version = ds.version
        out_ds = upgrade_pair_table(out_uri, open_out(out_uri))
        units, skipped, plan_extra, nothing = plan(ds, existing_ids(out_ds))
        extra: dict[str, Any] = {"out": out_uri, "pairs": 0, "already_there": skipped, **plan_extra}
        if not units:
            why = "every planned pair is already in the table" if skipped else nothing
            console.print(f"pairs: nothing to {job} ({why})")
            version = out_ds.version if out_ds is not None else 0
            return StageResult(name, "skipped", version, read_version, seconds=time.perf_counter() - t0, extra=extra)
        prefix = "pairs" if job == "render" else f"pairs-{job}"  # render's checkpoint folder name predates synth
        fp = _fingerprint(cfg, read_version, out_uri, out_ds and out_ds.version, salt)
        ckpt = Checkpoints(store.state_dir / "checkpoints" / f"{prefix}-{fp}", "unit")
        created = datetime.now(UTC)
        ctor = {"uri": store.uri, "storage_options": store.storage_options, "version": read_version, "out_uri": out_uri}
        ctor |= {"cfg": cfg.model_dump(mode="json"), "provenance": f"{provenance} dataset={store.uri}@v{read_version}"}
        ctor |= {"created_at": created, **worker_kw}
        done, resumed = execute_resumable(
            units, ckpt, worker, ctor, record=_unit_record, job="pairs", ray_options={"num_cpus": cfg.num_cpus},
            description=f"{name} (units)", concurrency=concurrency, show_progress=show_progress,
        )  # fmt: skip
        records = [done[u["unit"]] for u in units]
        frags = [FragmentMetadata.from_json(json.dumps(f)) for rec in records for f in rec["fragments"]]
        stats = sum((Stats.from_dict(rec["stats"]) for rec in records), Stats())
        if on_dropped is not None:
            on_dropped([d for rec in records for d in rec.get("dropped", [])])
        if not frags:
            ckpt.clear()
            console.print(f"pairs: no pair could be made by {job} (see the counters)")
            version = out_ds.version if out_ds is not None else 0
            return StageResult(name, "empty", version, read_version, len(units), resumed, stats, time.perf_counter() - t0, extra=extra)
        new = _commit(out_uri, out_ds, frags, f"{name} seed={getattr(cfg, 'seed', '-')} n={getattr(cfg, 'n', len(units))}")
        ckpt.clear()
    seconds = time.perf_counter() - t0
    extra |= {
        "pairs": stats.rows,
        **tally(stats.counters),
        "pairs_per_second": round(stats.rows / seconds, 2) if seconds > 0 else None,
        f"{job}_seconds": round(stats.seconds, 3),
    }
    result = StageResult(name, "committed", new.version, read_version, len(units), resumed, stats, seconds, extra=extra)
    result.stats_path = str(store.write_json(f"stats/pairs-{job}-v{read_version}-{new.version}.json", result.to_dict()))
    return result
