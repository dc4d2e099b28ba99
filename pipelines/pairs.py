"""``curate pairs render --dataset DS``: text-editing pairs with exact ground truth (issue #17).

Each pair is made from one photo of the dataset by ``engines.pairs.render``: sign-like text in
English or Chinese drawn on a flat part of the photo, then replaced by other text, removed (the
target is the clean photo itself) or added. The pairs go to a separate Lance table, the *pair
table* (``PAIRS_SCHEMA``), by default ``<dataset>/_curation/pairs/pairs.lance``; the samples table
is only read.

How it runs, and why:

- The driver reads the light columns (``id``, ``image_sha256``, ``error``) and ranks the rows
  with a stored image and no error by ``sha1(seed:id)``: a deterministic sample spread over the
  whole dataset. Pair ``i`` uses photo ``i mod photos`` (so ``--n`` may exceed the photo count),
  kind ``kinds[i mod len(kinds)]`` and alternates English and Chinese, so every kind gets both.
  Its ``pair_id`` is a hash of (render version, seed, i, kind, row id): a re-run with the same
  options finds every id in the table and adds nothing, and ``--n 200`` after ``--n 100`` adds the
  100 new ones.
- Units of ``batch_size`` pairs run on Ray Data actors (``execute_units``): the actor ``take``s its
  photos at the pinned dataset version, renders, encodes (PNG by default: lossless, so the exact
  ground-truth claims hold after decoding) and writes Lance fragments of the pair table. The
  driver only holds fragment metadata and counters, never image bytes.
- Each finished unit is checkpointed; one commit (``Overwrite`` for a new table, ``Append``
  otherwise) makes a new version of the pair table. A killed job re-run with the same options
  resumes from the checkpoints.

``curate pairs synth --dataset DS --annotations FILE``: object edits (recolour, remove, move,
resize) made by ``engines.pairs.synth`` from COCO instance masks, into the same schema (default
table ``<dataset>/_curation/pairs/synth.lance``). The samples table carries no annotations: the
driver reads the COCO instances file and matches rows to its images by the file name of
``source_key`` (or ``image_uri``), with or without its extension (a folder ingest keeps
``images/000000000139.jpg``, a tar ``000000000139``), and by size where the row has one. Rows with
no match are skipped and counted. Planning, ids, units, checkpoints and the one commit work as for
render; each pair's unit carries its object's segmentation, so workers need no annotation file.

``curate pairs mine --dataset DS``: pairs of *real* images of one scene that differ meaningfully,
from the ``curate knn`` graph (``engines.pairs.mine``): neighbours whose similarity lies in a band
(not duplicates, not unrelated), capped per image and per group, then aligned (ORB + RANSAC
homography) and scored (changed area, regions, global / local, caption difference) on Ray workers,
into the same schema with kind ``mined`` (default table ``<dataset>/_curation/pairs/mined.lance``).
No instruction unless a plug-in is configured. Pairs the workers drop (cannot be aligned, nothing
changed) are remembered next to the dataset, so a re-run does not score them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curation.runner import Checkpoints, StageResult, console, execute_units
from curation.stage import StageConfig, Stats
from curation.store import Store, is_remote, storage_options_from_env
from engines.pairs.render import KINDS, RENDER_VERSION
from engines.pairs.synth import SYNTH_KINDS, SYNTH_VERSION

__all__ = [
    "PairsConfig",
    "SynthConfig",
    "PAIRS_SCHEMA",
    "render_pairs",
    "synth_pairs",
    "plan_pairs",
    "plan_synth",
    "pending",
    "pending_synth",
    "eligible_photos",
    "load_annotations",
    "match_photos",
    "default_out",
    "default_synth_out",
    "check_out",
    "PairExportConfig",
    "pair_shard_schema",
    "pair_shard_rows",
    "pair_tables",
    "export_pairs",
    "MineConfig",
    "mine_pairs",
    "plan_mine",
    "pending_mine",
    "default_mined_out",
    "open_graph",
    "mined_fields",
    "why_no_candidate",
]

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),  # the samples-table row id of the photo
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


def _check_kinds(v: list[str], known) -> list[str]:
    """The ``kinds`` option of either job: known names, at least one, each once, in order."""
    v = [k.strip() for k in v if k.strip()]
    bad = [k for k in v if k not in known]
    if bad:
        raise ValueError(f"unknown kind {bad[0]!r}; use {', '.join(known)}")
    if not v:
        raise ValueError(f"no kind given; use {', '.join(known)}")
    return list(dict.fromkeys(v))


class PairsConfig(StageConfig):
    """What to render (``curate pairs render`` options)."""

    n: int = Field(100, ge=1, le=10_000_000, description="pairs to make (photos are reused when there are fewer)")
    seed: int = Field(0, ge=0, description="picks photos, words, styles, placements and instructions")
    kinds: list[str] = Field(list(KINDS), description="kinds of edit, dealt in turn: replace, remove, add")
    out: str | None = Field(None, description="the pair table (default <dataset>/_curation/pairs/pairs.lance)")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless (exact ground truth); jpeg is smaller")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_side: int = Field(1024, ge=64, le=8192, description="larger photos are shrunk to this longest side first")
    batch_size: int = Field(16, ge=1, le=4096, description="pairs per unit of work (one actor call, one checkpoint)")
    num_cpus: float = Field(1.0, gt=0)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        return _check_kinds(v, KINDS)


class SynthConfig(StageConfig):
    """What to synthesise (``curate pairs synth`` options)."""

    annotations: str = Field(description="a COCO instances JSON (images, annotations with segmentations, categories)")
    n: int = Field(100, ge=1, le=10_000_000, description="pairs to make (objects are reused when there are fewer)")
    seed: int = Field(0, ge=0, description="picks photos, objects, colours, shifts, scales and instructions")
    kinds: list[str] = Field(list(SYNTH_KINDS), description="kinds of edit, dealt in turn: recolour, remove, move, resize")
    out: str | None = Field(None, description="the pair table (default <dataset>/_curation/pairs/synth.lance)")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless (exact ground truth); jpeg is smaller")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_side: int = Field(1024, ge=64, le=8192, description="larger photos (and their masks) are shrunk to this longest side first")
    min_area: float = Field(0.02, gt=0, lt=1, description="smallest object (with what is attached to it), as a share of the image")
    max_area: float = Field(0.4, gt=0, le=1, description="largest object (with what is attached to it), as a share of the image")
    batch_size: int = Field(16, ge=1, le=4096, description="pairs per unit of work (one actor call, one checkpoint)")
    num_cpus: float = Field(1.0, gt=0)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        return _check_kinds(v, SYNTH_KINDS)

    @field_validator("max_area")
    @classmethod
    def _area_range(cls, v: float, info) -> float:
        lo = info.data.get("min_area")
        if lo is not None and v <= lo:
            raise ValueError(f"max_area {v} must be larger than min_area {lo}")
        return v


def default_out(store: Store) -> str:
    return str(store.state_dir / "pairs" / "pairs.lance")


def default_synth_out(store: Store) -> str:
    return str(store.state_dir / "pairs" / "synth.lance")


def _open_out(uri: str):
    """The pair table, or None when there is none yet."""
    import lance

    try:
        return lance.dataset(uri, storage_options=storage_options_from_env(uri) or None)
    except (ValueError, FileNotFoundError, OSError):
        return None


def check_out(uri: str) -> str | None:
    """Why ``uri`` cannot be the pair table (None when it can): an existing folder that is not a
    Lance dataset, or a Lance dataset with other columns."""
    from pathlib import Path

    ds = _open_out(uri)
    if ds is None:
        if not is_remote(uri) and Path(uri).exists() and (not Path(uri).is_dir() or any(Path(uri).iterdir())):
            return f"--out {uri} exists and is not a Lance dataset"
        return None
    if ds.schema.names != PAIRS_SCHEMA.names:
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


def _resolve_out(store: Store, cfg: StageConfig) -> str:
    default = default_synth_out if isinstance(cfg, SynthConfig) else default_mined_out if isinstance(cfg, MineConfig) else default_out
    out_uri = cfg.out or default(store)
    if not is_remote(out_uri):
        from pathlib import Path

        out_uri = str(Path(out_uri).expanduser().resolve())
    return out_uri


def _existing_ids(out_ds) -> set[str]:
    return set(out_ds.to_table(columns=["pair_id"]).column("pair_id").to_pylist()) if out_ds is not None else set()


def pending(store: Store, cfg: PairsConfig) -> tuple[int, int]:
    """(pairs to render, pairs the table already has): what ``render_pairs`` would do, read
    without Ray (the command checks it before starting Ray)."""
    units, skipped = plan_pairs(store.open(), cfg, _existing_ids(_open_out(_resolve_out(store, cfg))))
    return sum(len(json.loads(u["pairs"])) for u in units), skipped


def _pair_id(seed: int, i: int, kind: str, source_id: str) -> str:
    return hashlib.sha1(f"{RENDER_VERSION}:{seed}:{i}:{kind}:{source_id}".encode()).hexdigest()[:24]


def plan_pairs(ds, cfg: PairsConfig, existing: set[str] = frozenset()) -> tuple[list[dict[str, Any]], int]:  # type: ignore[assignment]
    """(units of pairs to render, pairs skipped because the table has them). Each pair: its
    index ``i``, ``pair_id``, the photo's ``source_id`` and ``pos`` (row offset), ``kind``, ``lang``."""
    ids, positions = eligible_photos(ds)
    if not ids:
        return [], 0
    order = sorted(range(len(ids)), key=lambda j: hashlib.sha1(f"{cfg.seed}:{ids[j]}".encode()).digest())
    k = len(cfg.kinds)
    todo, skipped = [], 0
    for i in range(cfg.n):
        j = order[i % len(order)]
        kind = cfg.kinds[i % k]
        pid = _pair_id(cfg.seed, i, kind, ids[j])
        if pid in existing:
            skipped += 1
            continue
        todo.append({"i": i, "pair_id": pid, "source_id": ids[j], "pos": positions[j], "kind": kind, "lang": ("en", "zh")[(i // k) % 2]})
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, skipped


class _PairWorker:
    """A Ray actor: makes the pairs of whole units and writes them as pair-table fragments
    (``_unit`` is the kind of pair)."""

    config_cls: type[StageConfig] = PairsConfig

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


class _RenderWorker(_PairWorker):
    """Renders text-editing pairs (``engines.pairs.render``)."""

    config_cls = PairsConfig

    def __init__(self, *args, font: str, **kw):
        super().__init__(*args, **kw)
        self.font = font

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        from engines.pairs.render import encode_image, render_pair

        counters: Counter = Counter()
        uniq = sorted({p["pos"] for p in pairs})
        rows = self.ds.take(np.asarray(uniq, np.int64), columns=["id", "image", "image_uri"]).to_pylist()
        by_pos = dict(zip(uniq, rows, strict=True))
        photos: dict[int, Any] = {}
        out: list[dict] = []
        for p in pairs:
            row = by_pos[p["pos"]]
            if row["id"] != p["source_id"]:  # cannot happen at a pinned version; guard against a planning bug
                raise RuntimeError(f"row {p['pos']} is {row['id']}, planned {p['source_id']}")
            if p["pos"] not in photos:
                photos[p["pos"]] = self._photo(row["image"], row["image_uri"])
            photo = photos[p["pos"]]
            if isinstance(photo, str):
                counters[f"skipped_decode_{photo}"] += 1
                continue
            pair = render_pair(photo, p["kind"], [self.cfg.seed, p["i"]], lang=p["lang"], font_path=self.font)
            if pair is None:
                counters["skipped_too_small"] += 1
                continue
            fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
            out.append(
                {
                    "pair_id": p["pair_id"],
                    "source_id": p["source_id"],
                    "kind": pair.kind,
                    "src_image": encode_image(pair.source, fmt, q),
                    "tgt_image": encode_image(pair.target, fmt, q),
                    "instruction_en": pair.instruction_en,
                    "instruction_zh": pair.instruction_zh,
                    "src_text": pair.src_text,
                    "tgt_text": pair.tgt_text,
                    "box": list(pair.box),
                    "changed_fraction": pair.changed_fraction,
                    "lang": pair.lang,
                    "style": pair.style,
                    "width": int(photo.shape[1]),
                    "height": int(photo.shape[0]),
                    "provenance": self.provenance,
                    "created_at": self.created_at,
                }
            )
            counters[f"kind_{pair.kind}"] += 1
            counters[f"lang_{pair.lang}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters


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


def render_pairs(
    store: Store, cfg: PairsConfig, *, show_progress: bool = True, concurrency: int | None = None, font: str | None = None
) -> StageResult:
    """Render ``cfg.n`` pairs from the dataset's photos into the pair table; one new version of it.
    One render job per dataset at a time (a second waits). ``extra`` has the table's path
    (``out``), pairs written, counts by kind and language, and pairs per second (job wall time,
    set-up of the Ray workers included)."""
    from engines.pairs.render import find_font

    t0 = time.perf_counter()
    font = font or find_font()

    def plan(ds, existing):
        units, skipped = plan_pairs(ds, cfg, existing)
        return units, skipped, {}, "no row with an image and no error"

    def tally(c: Counter) -> dict[str, Any]:
        return {"by_kind": {k: c.get(f"kind_{k}", 0) for k in cfg.kinds}, "by_lang": {k: c.get(f"lang_{k}", 0) for k in ("en", "zh")}}

    return _run_job(
        store, cfg, "render", plan, _RenderWorker, {"font": font}, f"{RENDER_VERSION} seed={cfg.seed}", tally,
        t0=t0, show_progress=show_progress, concurrency=concurrency,
    )  # fmt: skip


def _run_job(
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
    out_uri = _resolve_out(store, cfg)
    problem = check_out(out_uri)
    if problem:
        raise ValueError(problem)
    with store.lock(f"pairs-{job}", on_wait=lambda h: console.print(f"pairs: another {job} job is running ({h}); waiting")):
        ds = store.open()
        read_version = ds.version
        out_ds = _open_out(out_uri)
        units, skipped, plan_extra, nothing = plan(ds, _existing_ids(out_ds))
        extra: dict[str, Any] = {"out": out_uri, "pairs": 0, "already_there": skipped, **plan_extra}
        if not units:
            why = "every planned pair is already in the table" if skipped else nothing
            console.print(f"pairs: nothing to {job} ({why})")
            version = out_ds.version if out_ds is not None else 0
            return StageResult(name, "skipped", version, read_version, seconds=time.perf_counter() - t0, extra=extra)
        prefix = "pairs" if job == "render" else f"pairs-{job}"  # render's checkpoint folder name predates synth
        fp = _fingerprint(cfg, read_version, out_uri, out_ds and out_ds.version, salt)
        ckpt = Checkpoints(store.state_dir / "checkpoints" / f"{prefix}-{fp}", "unit")
        done = ckpt.load()
        resumed = sum(1 for u in units if u["unit"] in done)
        if resumed:
            console.print(f"pairs: resuming, {resumed} of {len(units)} units already done")
        created = datetime.now(UTC)
        ctor = {"uri": store.uri, "storage_options": store.storage_options, "version": read_version, "out_uri": out_uri}
        ctor |= {"cfg": cfg.model_dump(mode="json"), "provenance": f"{provenance} dataset={store.uri}@v{read_version}"}
        ctor |= {"created_at": created, **worker_kw}

        def on_result(row: dict[str, Any]) -> None:
            rec = {"unit": row["unit"], "fragments": json.loads(row["fragments"]), "stats": json.loads(row["stats"])}
            rec["dropped"] = json.loads(row.get("dropped") or "[]")
            ckpt.save(rec)
            done[row["unit"]] = rec

        todo = [u for u in units if u["unit"] not in done]
        execute_units(
            todo, worker, ctor, ray_options={"num_cpus": cfg.num_cpus}, on_result=on_result,
            description=f"{name} (units)", concurrency=concurrency, show_progress=show_progress,
        )  # fmt: skip
        missing = [u["unit"] for u in units if u["unit"] not in done]
        if missing:
            raise RuntimeError(f"pairs: units {missing} produced no result")
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


# --- synth: object edits from COCO instance masks ------------------------------------------------


def load_annotations(path: str) -> tuple[dict[str, dict], str]:
    """(``engines.pairs.synth.index_annotations`` of the COCO instances file at ``path``, the first
    12 hex digits of its SHA-1). ``ValueError`` with a one-line reason when it is not one."""
    from pathlib import Path

    from engines.pairs.synth import index_annotations

    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--annotations {path}: no such file")
    if not p.is_file():
        raise ValueError(f"--annotations {path} is not a file (a COCO instances JSON, e.g. instances_train2017.json)")
    data = p.read_bytes()
    try:
        coco = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--annotations {path} is not JSON: {e}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"--annotations {path} is not a COCO instances file (it needs images, annotations and categories lists)")
    try:
        return index_annotations(coco), hashlib.sha1(data).hexdigest()[:12]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"--annotations {path}: a malformed image or annotation entry ({type(e).__name__}: {e})") from None


def _base(name: str | None) -> str | None:
    return name.replace("\\", "/").rsplit("/", 1)[-1] if name else None


def match_photos(ds, index: dict[str, dict]) -> tuple[list[dict[str, Any]], Counter]:
    """The rows with a stored image and no error that have an entry in ``index`` (the COCO file
    names): ``[{"id", "pos", "file_name"}]`` in row order, and counters ``unmatched`` (no such
    file name) and ``size_mismatch`` (the name matches, the row's width x height does not)."""
    import pyarrow.compute as pc

    cols = [c for c in ("id", "image_sha256", "error", "source_key", "image_uri", "width", "height") if c in ds.schema.names]
    t = ds.to_table(columns=cols)
    ok = pc.and_(pc.is_valid(t.column("image_sha256")), pc.is_null(t.column("error"))).to_numpy(zero_copy_only=False)
    stems: dict[str, str | None] = {}
    for fn in index:
        stem = fn.rsplit(".", 1)[0]
        stems[stem] = None if stem in stems and stems[stem] != fn else fn  # an ambiguous stem matches nothing
    n = t.num_rows
    get = {c: t.column(c).to_pylist() if c in t.column_names else [None] * n for c in ("id", "source_key", "image_uri", "width", "height")}
    out, counts = [], Counter()
    for pos in np.flatnonzero(ok).tolist():
        fn = None
        for name in (_base(get["source_key"][pos]), _base(get["image_uri"][pos])):
            if not name:
                continue
            fn = name if name in index else stems.get(name) or stems.get(name.rsplit(".", 1)[0])
            if fn:
                break
        if fn is None:
            counts["unmatched"] += 1
            continue
        w, h = get["width"][pos], get["height"][pos]
        if w is not None and h is not None and (w, h) != (index[fn]["width"], index[fn]["height"]):
            counts["size_mismatch"] += 1
            continue
        out.append({"id": get["id"][pos], "pos": pos, "file_name": fn})
    return out, counts


def _synth_pair_id(seed: int, i: int, kind: str, source_id: str, ann_id: Any, digest: str) -> str:
    return hashlib.sha1(f"{SYNTH_VERSION}:{seed}:{i}:{kind}:{source_id}:{ann_id}:{digest}".encode()).hexdigest()[:24]


def plan_synth(
    ds,
    cfg: SynthConfig,
    index: dict[str, dict],
    digest: str,
    existing: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """(units of pairs to make, pairs skipped because the table has them, what matching found).

    The matched photos are ranked by ``sha1(seed:id)``, the objects of each photo by
    ``sha1(seed:ann_id)``; a kind's candidates are the first object of every photo, then the
    second, ... Pair ``i`` has kind ``kinds[i mod k]`` and is that kind's ``j = i div k``-th pair:
    candidate ``(j + kind_index * len / k) mod len`` (each kind starts at another photo)."""
    from engines.pairs.synth import eligible_objects, refer

    matched, counts = match_photos(ds, index)
    rank = sorted(matched, key=lambda r: hashlib.sha1(f"{cfg.seed}:{r['id']}".encode()).digest())
    cands: dict[str, list[tuple[dict, dict]]] = {}
    no_object = 0
    for kind in cfg.kinds:
        per_photo = []
        for r in rank:
            objs = eligible_objects(index[r["file_name"]], kind, cfg.min_area, cfg.max_area)
            per_photo.append(sorted(objs, key=lambda o: hashlib.sha1(f"{cfg.seed}:{o['ann_id']}".encode()).digest()))
        deep = max((len(o) for o in per_photo), default=0)
        cands[kind] = [(r, objs[d]) for d in range(deep) for r, objs in zip(rank, per_photo, strict=True) if d < len(objs)]
    for r in rank:
        entry = index[r["file_name"]]
        no_object += not any(eligible_objects(entry, kind, cfg.min_area, cfg.max_area) for kind in cfg.kinds)
    info = {
        "photos_matched": len(matched),
        "photos_unmatched": counts["unmatched"],
        "photos_size_mismatch": counts["size_mismatch"],
        "photos_without_object": no_object,
        "objects": {k: len(v) for k, v in cands.items()},
    }
    k = len(cfg.kinds)
    todo, skipped = [], 0
    for i in range(cfg.n):
        ki, j = i % k, i // k
        kind = cfg.kinds[ki]
        pool = cands[kind]
        if not pool:
            continue
        r, o = pool[(j + ki * len(pool) // k) % len(pool)]
        entry = index[r["file_name"]]
        pid = _synth_pair_id(cfg.seed, i, kind, r["id"], o["ann_id"], digest)
        if pid in existing:
            skipped += 1
            continue
        peers = [p["bbox"] for p in entry["objects"] if p["category"] == o["category"] and p["ann_id"] != o["ann_id"]]
        obj_en, obj_zh = refer(o["category"], o["bbox"], peers, entry["width"], entry["height"])
        todo.append(
            {
                "i": i,
                "pair_id": pid,
                "source_id": r["id"],
                "pos": r["pos"],
                "kind": kind,
                "width": entry["width"],
                "height": entry["height"],
                "category": o["category"],
                "refer": [obj_en, obj_zh],
                "ann_ids": [o["ann_id"], *(a["ann_id"] for a in o["with"])],
                "segmentations": [o["segmentation"], *(a["segmentation"] for a in o["with"])],
            }
        )
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, skipped, info


def pending_synth(store: Store, cfg: SynthConfig, loaded: tuple[dict, str] | None = None) -> tuple[int, int, dict[str, Any]]:
    """(pairs to make, pairs the table already has, what matching found): what ``synth_pairs``
    would do, read without Ray (the command checks it before starting Ray). ``loaded``: what
    ``load_annotations(cfg.annotations)`` returned, if the caller has it (a full COCO file takes
    seconds to parse)."""
    index, digest = loaded or load_annotations(cfg.annotations)
    existing = _existing_ids(_open_out(_resolve_out(store, cfg)))
    units, skipped, info = plan_synth(store.open(), cfg, index, digest, existing)
    return sum(len(json.loads(u["pairs"])) for u in units), skipped, info


class _SynthWorker(_PairWorker):
    """Makes object-editing pairs (``engines.pairs.synth``) from the masks the units carry."""

    config_cls = SynthConfig

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        import cv2

        from engines.pairs.render import encode_image
        from engines.pairs.synth import Skip, decode_segmentation, synth_pair

        counters: Counter = Counter()
        uniq = sorted({p["pos"] for p in pairs})
        rows = self.ds.take(np.asarray(uniq, np.int64), columns=["id", "image", "image_uri"]).to_pylist()
        by_pos = dict(zip(uniq, rows, strict=True))
        photos: dict[int, Any] = {}
        out: list[dict] = []
        for p in pairs:
            row = by_pos[p["pos"]]
            if row["id"] != p["source_id"]:  # cannot happen at a pinned version; guard against a planning bug
                raise RuntimeError(f"row {p['pos']} is {row['id']}, planned {p['source_id']}")
            if p["pos"] not in photos:
                rgb = self._decode(row["image"], row["image_uri"])
                photos[p["pos"]] = rgb if isinstance(rgb, str) else (rgb.size, self._shrink(rgb))
            got = photos[p["pos"]]
            if isinstance(got, str):
                counters[f"skipped_decode_{got}"] += 1
                continue
            (w, h), photo = got
            if (w, h) != (p["width"], p["height"]):
                counters["skipped_size_mismatch"] += 1
                continue
            segs = p["segmentations"][:1] if p["kind"] == "recolour" else p["segmentations"]
            mask = np.zeros((h, w), dtype=bool)
            for seg in segs:
                mask |= decode_segmentation(seg, h, w)
            if photo.shape[:2] != (h, w):  # shrunk to max_side: the mask follows
                small = cv2.resize(mask.astype(np.float32), (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_AREA)
                mask = small >= 0.5
            try:
                pair = synth_pair(photo, mask, p["kind"], [self.cfg.seed, p["i"]], tuple(p["refer"]))
            except Skip as e:
                counters[f"skipped_{e.reason}"] += 1
                continue
            fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
            ann = "+".join(str(a) for a in (p["ann_ids"][:1] if p["kind"] == "recolour" else p["ann_ids"]))
            out.append(
                {
                    "pair_id": p["pair_id"],
                    "source_id": p["source_id"],
                    "kind": pair.kind,
                    "src_image": encode_image(pair.source, fmt, q),
                    "tgt_image": encode_image(pair.target, fmt, q),
                    "instruction_en": pair.instruction_en,
                    "instruction_zh": pair.instruction_zh,
                    "src_text": p["category"],
                    "tgt_text": pair.detail,
                    "box": list(pair.box),
                    "changed_fraction": pair.changed_fraction,
                    "lang": None,
                    "style": pair.params,
                    "width": int(photo.shape[1]),
                    "height": int(photo.shape[0]),
                    "provenance": f"{self.provenance} ann={ann}",
                    "created_at": self.created_at,
                }
            )
            counters[f"kind_{pair.kind}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters


def synth_pairs(
    store: Store,
    cfg: SynthConfig,
    *,
    show_progress: bool = True,
    concurrency: int | None = None,
    loaded: tuple[dict, str] | None = None,
) -> StageResult:
    """Make ``cfg.n`` object-editing pairs from the dataset's photos and the COCO masks of
    ``cfg.annotations`` into the pair table; one new version of it. ``extra`` has the table's path
    (``out``), pairs written, counts by kind, what matching found (``photos_matched``,
    ``photos_unmatched``, ...) and pairs per second (job wall time, set-up of the Ray workers
    included; and the parsing of the annotations unless ``loaded`` gives it)."""
    from pathlib import Path

    t0 = time.perf_counter()
    index, digest = loaded or load_annotations(cfg.annotations)

    def plan(ds, existing):
        units, skipped, info = plan_synth(ds, cfg, index, digest, existing)
        nothing = (
            "no row with an image and no error matches a file name of the annotations"
            if not info["photos_matched"]
            else f"no object of {cfg.min_area:.0%}-{cfg.max_area:.0%} of its image fits the kinds {', '.join(cfg.kinds)}"
        )
        return units, skipped, info, nothing

    def tally(c: Counter) -> dict[str, Any]:
        return {"by_kind": {k: c.get(f"kind_{k}", 0) for k in cfg.kinds}}

    provenance = f"{SYNTH_VERSION} seed={cfg.seed} annotations={Path(cfg.annotations).name}#{digest}"
    return _run_job(
        store, cfg, "synth", plan, _SynthWorker, {}, provenance, tally,
        t0=t0, show_progress=show_progress, concurrency=concurrency, salt=digest,
    )  # fmt: skip


# --- mine: pairs of real images of one scene from the k-NN graph -------------------------------


class MineConfig(StageConfig):
    """What to mine (``curate pairs mine`` options). The band is calibrated for ``vec_desc``."""

    column: str = Field("vec_desc", description="the embedding column whose `curate knn` graph gives the candidates")
    min_similarity: float = Field(0.9, ge=-1, le=1, description="less similar neighbours are unrelated photos")
    max_similarity: float = Field(0.9999, ge=-1, le=1.0001, description="this similar or more is a duplicate (exclusive)")
    max_per_image: int = Field(3, ge=1, description="an image takes part in at most this many pairs (as source or target)")
    max_per_group: int = Field(20, ge=1, description="a group (connected neighbours in the band) yields at most this many pairs")
    unaligned: Literal["drop", "global"] = Field("drop", description="pairs no homography aligns: dropped, or kept as global changes")
    min_inliers: int = Field(20, ge=4, description="fewer RANSAC inliers: the pair cannot be aligned")
    diff_threshold: int = Field(32, ge=1, le=255, description="a pixel changed when a channel differs by more (after a 5x5 blur)")
    min_changed: float = Field(0.002, ge=0, lt=1, description="less changed area is a near duplicate: dropped (no_change)")
    global_fraction: float = Field(0.4, gt=0, le=1, description="this much changed area or more is a global change")
    instructor: str | None = Field(None, description="instruction plug-in `module:function` (a local captioning / VLM model)")
    out: str | None = Field(None, description="the pair table (default <dataset>/_curation/pairs/mined.lance)")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless; jpeg is smaller")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_side: int = Field(1024, ge=64, le=8192, description="larger photos are shrunk to this longest side first")
    batch_size: int = Field(16, ge=1, le=4096, description="pairs per unit of work (one actor call, one checkpoint)")
    num_cpus: float = Field(1.0, gt=0)

    @field_validator("max_similarity")
    @classmethod
    def _band(cls, v: float, info) -> float:
        lo = info.data.get("min_similarity")
        if lo is not None and v <= lo:
            raise ValueError(f"max_similarity {v} must be larger than min_similarity {lo}")
        return v

    def params(self):
        from engines.pairs.mine import MineParams

        return MineParams(
            min_inliers=self.min_inliers, diff_threshold=self.diff_threshold,
            min_changed=self.min_changed, global_fraction=self.global_fraction,
        )  # fmt: skip


def default_mined_out(store: Store) -> str:
    return str(store.state_dir / "pairs" / "mined.lance")


def open_graph(store: Store, ds, column: str):
    """The ``curate knn`` graph of ``column``, refused (``ValueError``, one line with the fix) when
    there is none or it was built from other rows or values of the column than the dataset's now:
    mined pairs from a stale graph would miss new rows and name rows that changed."""
    from engines.vector.index import VectorError, column_fingerprint
    from pipelines.knn import open_knn

    fix = f"run `curate index build --dataset {store.uri} --column {column}` and `curate knn --dataset {store.uri} --column {column}`"
    summary = store.read_json(f"vector/knn-{column}.json")
    try:
        graph = open_knn(store, column) if summary else None
    except (ValueError, OSError, FileNotFoundError):
        graph = None
    if graph is None:
        raise ValueError(f"no k-NN graph of {column!r} for {store.uri} yet: {fix}")
    try:
        fp = column_fingerprint(ds, column)
    except VectorError as e:
        raise ValueError(f"{e}; make it first (`curate stage vec_visual` for vec_desc)") from None
    if summary.get("fingerprint") != fp:
        raise ValueError(
            f"the k-NN graph of {column!r} (dataset v{summary.get('dataset_version')}) is older than the dataset "
            f"(v{ds.version}: rows or {column!r} changed since): {fix}"
        )
    return graph


def _mine_pair_id(column: str, source_id: str, target_id: str) -> str:
    from engines.pairs.mine import MINE_VERSION

    return hashlib.sha1(f"{MINE_VERSION}:{column}:{source_id}:{target_id}".encode()).hexdigest()[:24]


def _candidates(graph, cfg: MineConfig) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The graph's edges in the band, each pair once (filtered in Lance: only those leave it)."""
    from engines.pairs.mine import canonical_pairs

    flt = f"similarity >= {float(cfg.min_similarity)!r} AND similarity < {float(cfg.max_similarity)!r}"
    t = graph.to_table(columns=["source_id", "neighbour_id", "similarity"], filter=flt)
    sim = t.column("similarity").to_numpy().astype(np.float64)
    return canonical_pairs(t.column("source_id").to_pylist(), t.column("neighbour_id").to_pylist(), sim)


def _dropped_key(store: Store, cfg: MineConfig, out_uri: str) -> str:
    """The pairs dropped before hold for this table and these scoring options only."""
    what = cfg.model_dump(mode="json", include={"column", "unaligned", "min_inliers", "diff_threshold", "min_changed", "max_side"})
    return hashlib.sha1(json.dumps({"out": out_uri, **what}, sort_keys=True).encode()).hexdigest()[:12]


def _load_dropped(store: Store, cfg: MineConfig, out_uri: str) -> dict[str, str]:
    got = store.read_json("pairs/mine-dropped.json") or {}
    return got.get("dropped", {}) if got.get("key") == _dropped_key(store, cfg, out_uri) else {}


def _save_dropped(store: Store, cfg: MineConfig, out_uri: str, new: list) -> None:
    dropped = _load_dropped(store, cfg, out_uri) | {pid: why for pid, why in new}
    (store.state_dir / "pairs").mkdir(parents=True, exist_ok=True)
    store.write_json("pairs/mine-dropped.json", {"key": _dropped_key(store, cfg, out_uri), "dropped": dropped})


def plan_mine(ds, graph, cfg: MineConfig, existing: set[str], dropped: dict[str, str]) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """(units of pairs to score, pairs already decided: in the table or dropped before, counts).
    Candidates: band, each pair once, rows with an image and no error, then the cap (by
    similarity: the likeliest shots of one scene first). The cap comes before scoring, so a pair
    dropped later is not replaced by another of its image or group."""
    from engines.pairs.mine import cap_pairs

    pairs, sim = _candidates(graph, cfg)
    ids, positions = eligible_photos(ds)
    pos = dict(zip(ids, positions, strict=True))
    ok = [i for i, (a, b) in enumerate(pairs) if a in pos and b in pos]
    pairs, sim = [pairs[i] for i in ok], sim[ok]
    keep = cap_pairs(pairs, sim, cfg.max_per_image, cfg.max_per_group)
    info = {"candidates": len(pairs), "capped": len(pairs) - len(keep)}
    todo, decided = [], 0
    for i in keep:
        a, b = pairs[i]
        pid = _mine_pair_id(cfg.column, a, b)
        if pid in existing or pid in dropped:
            decided += 1
            continue
        todo.append({"pair_id": pid, "source_id": a, "target_id": b, "spos": pos[a], "tpos": pos[b], "sim": float(sim[i])})
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, decided, info


def pending_mine(store: Store, cfg: MineConfig) -> tuple[int, int, dict[str, Any]]:
    """(pairs to score, pairs already decided, counts): what ``mine_pairs`` would do, without Ray.
    Raises the one-line ``ValueError``s of ``open_graph``."""
    ds = store.open()
    out_uri = _resolve_out(store, cfg)
    units, decided, info = plan_mine(
        ds, open_graph(store, ds, cfg.column), cfg, _existing_ids(_open_out(out_uri)), _load_dropped(store, cfg, out_uri)
    )
    return sum(len(json.loads(u["pairs"])) for u in units), decided, info


def mined_fields(text: str | None) -> dict[str, str]:
    """The ``key=value`` words of a mined pair's ``provenance`` or ``style`` (``target``, ``sim``,
    ``instruction_source``; ``align``, ``changed``, ``regions``, ``change``, ...)."""
    return dict(w.split("=", 1) for w in (text or "").split() if "=" in w)


def _first_caption(caps) -> str:
    return next((c["text"] for c in caps or [] if (c.get("text") or "").strip()), "")


class _MineWorker(_PairWorker):
    """Aligns and scores candidate pairs (``engines.pairs.mine``); drops what is no edit."""

    config_cls = MineConfig

    def __init__(self, *args, **kw):
        from engines.pairs.mine import load_instructor

        super().__init__(*args, **kw)
        self.instructor = load_instructor(self.cfg.instructor) if self.cfg.instructor else None

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        counters: Counter = Counter()
        uniq = sorted({p[k] for p in pairs for k in ("spos", "tpos")})
        cols = ["id", "image", "image_uri"] + (["captions"] if "captions" in self.ds.schema.names else [])
        rows = dict(zip(uniq, self.ds.take(np.asarray(uniq, np.int64), columns=cols).to_pylist(), strict=True))
        photos = {pos: self._photo(r["image"], r["image_uri"]) for pos, r in rows.items()}
        out = []
        for p in pairs:
            if (rows[p["spos"]]["id"], rows[p["tpos"]]["id"]) != (p["source_id"], p["target_id"]):
                raise RuntimeError(f"rows {p['spos']}, {p['tpos']} are not the planned {p['source_id']}, {p['target_id']}")
            row, why = self._score(p, photos[p["spos"]], photos[p["tpos"]], rows[p["spos"]], rows[p["tpos"]])
            if row is None:
                counters[f"skipped_{why}"] += 1
                self.dropped.append([p["pair_id"], why])
                continue
            out.append(row)
            counters[f"change_{mined_fields(row['style'])['change']}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters

    def _score(self, p: dict, src, tgt, srow: dict, trow: dict) -> tuple[dict | None, str]:
        """One pair's row, or (None, why it is dropped)."""
        from engines.pairs.mine import DiffScore, align, caption_difference, diff_score, warp_to

        if isinstance(src, str) or isinstance(tgt, str):
            return None, "decode"
        al = align(src, tgt, self.cfg.params())
        if al is None and self.cfg.unaligned == "drop":
            return None, "unaligned"
        if al is None:
            import cv2

            warped = cv2.resize(tgt, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
            h, w = src.shape[:2]
            score = DiffScore(1.0, 0, (0, 0, w, h), 1.0, "global", np.ones((1, 1), bool))
        else:
            warped, valid = warp_to(tgt, al, src.shape)
            score = diff_score(src, warped, valid, self.cfg.params())
            if score.change == "none":
                return None, "no_change"
        caps = (_first_caption(srow.get("captions")), _first_caption(trow.get("captions")))
        return self._row(p, src, warped, al, score, caps, caption_difference(*caps)), ""

    def _row(self, p: dict, src, warped, al, score, caps: tuple[str, str], cap_diff: float | None) -> dict:
        from engines.pairs.render import encode_image

        en = zh = None
        source = "none"
        if self.instructor is not None:
            en, zh = self.instructor(src, warped, caps[0], caps[1], score)
            source = f"plugin:{self.cfg.instructor}" if (en or zh) else f"plugin-none:{self.cfg.instructor}"
        align_how = "none" if al is None else "identity" if al.identity else "homography"
        style = f"align={align_how} inliers={al.inliers if al else 0} overlap={score.overlap:.3f} changed={score.changed_fraction:.4f}"
        style += f" regions={score.regions} change={score.change}" + ("" if cap_diff is None else f" caption_diff={cap_diff:.3f}")
        if al is not None and not al.identity:
            style += " h=" + ",".join(f"{v:.6g}" for v in al.h.ravel()[:8])
        fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
        prov = f"{self.provenance} target={p['target_id']} sim={p['sim']:.5f} instruction_source={source}"
        return {
            "pair_id": p["pair_id"], "source_id": p["source_id"], "kind": "mined",
            "src_image": encode_image(src, fmt, q), "tgt_image": encode_image(warped, fmt, q),
            "instruction_en": en, "instruction_zh": zh, "src_text": caps[0], "tgt_text": caps[1],
            "box": list(score.box), "changed_fraction": score.changed_fraction, "lang": None, "style": style,
            "width": int(src.shape[1]), "height": int(src.shape[0]), "provenance": prov, "created_at": self.created_at,
        }  # fmt: skip


def mine_pairs(store: Store, cfg: MineConfig, *, show_progress: bool = True, concurrency: int | None = None) -> StageResult:
    """Mine candidate editing pairs from the ``curate knn`` graph of ``cfg.column`` into the mined
    pair table; one new version of it. ``ValueError`` (one line) with no graph, a stale one, or no
    candidate in the band. ``extra``: ``out``, pairs written, counts by change (local / global),
    ``candidates``, ``capped``, and pairs dropped by reason (``skipped_unaligned``, ...)."""
    from engines.vector.retrieval import check_random_weights

    t0 = time.perf_counter()
    check_random_weights(store, [cfg.column], consumer=f"pairs mine over {cfg.column!r}")
    out_uri = _resolve_out(store, cfg)

    def plan(ds, existing):
        units, decided, info = plan_mine(ds, open_graph(store, ds, cfg.column), cfg, existing, _load_dropped(store, cfg, out_uri))
        if not units and not decided:
            raise ValueError(why_no_candidate(cfg, info))
        return units, decided, info, "no candidate pair"

    def tally(c: Counter) -> dict[str, Any]:
        return {
            "by_kind": {"mined": c.get("change_local", 0) + c.get("change_global", 0)},
            "by_change": {k: c.get(f"change_{k}", 0) for k in ("local", "global")},
        }

    from engines.pairs.mine import MINE_VERSION

    prov = f"{MINE_VERSION} column={cfg.column} band={cfg.min_similarity:g}-{cfg.max_similarity:g}"
    return _run_job(
        store, cfg, "mine", plan, _MineWorker, {}, prov, tally, t0=t0, show_progress=show_progress, concurrency=concurrency,
        salt=_dropped_key(store, cfg, out_uri), on_dropped=lambda d: _save_dropped(store, cfg, out_uri, d),
    )  # fmt: skip


def why_no_candidate(cfg: MineConfig, info: dict[str, Any]) -> str:
    """The one-line error when the band holds no pair (``info`` from ``plan_mine``)."""
    if not info["candidates"]:
        return (
            f"no neighbour pair on the k-NN graph of {cfg.column!r} has a similarity in "
            f"[{cfg.min_similarity:g}, {cfg.max_similarity:g}): nothing to mine (widen the band, or add more shots per scene)"
        )
    return "no candidate pair left after the cap"


# --- export: pair shards for training ------------------------------------------------------------

PAIR_SHARD_EXTRA = [
    pa.field("kind", pa.string()),  # the pair table's kind of edit
    pa.field("source_id", pa.string()),  # the samples-table row the pair was made from
    pa.field("src_image", pa.large_binary()),  # the source image's bytes, as in the pair table
    pa.field("src_width", pa.int32()),
    pa.field("src_height", pa.int32()),
    pa.field("src_bucket_w", pa.int32()),  # the source's crop size (same bucketing as the target)
    pa.field("src_bucket_h", pa.int32()),
    pa.field("src_image_tokens", pa.int32()),
    pa.field("provenance", pa.string()),  # the pair table's provenance, plus "table=URI@vN"
]


def pair_shard_schema() -> pa.Schema:
    """A training shard (``curation.shards.SHARD_SCHEMA``) whose image is the pair's *target* and
    whose caption variants are its instructions, plus the source (``PAIR_SHARD_EXTRA``). A superset,
    so the loader's planning, bucketing and decoding of the target are the single-image ones."""
    from curation.shards import SHARD_SCHEMA

    return pa.schema([*SHARD_SCHEMA, *PAIR_SHARD_EXTRA])


class PairExportConfig(StageConfig):
    """``curate pairs export`` options. The bucketing fields mean what they mean for ``curate export``."""

    out: str = Field(description="path or s3:// URI of the pair shards to write")
    tables: list[str] = Field(
        default_factory=list, description="pair tables to export (default: the dataset's pairs.lance and synth.lance that exist)"
    )
    resolution: Literal[256, 512, 1024] = Field(512, description="target training resolution (side of the square of equal area)")
    max_upscale: float = Field(1.25, ge=1.0, description="smaller images train at a lower level rather than upscaled more than this")
    max_ratio: float = Field(4.0, ge=1.0, description="most elongated bucket")
    min_side: int = Field(64, ge=1, description="pairs with an image whose shorter side is smaller are excluded (too_small)")
    min_kept_fraction: float = Field(0.5, gt=0, le=1, description="pairs whose crop keeps less of an image are excluded (extreme_aspect)")
    langs: list[Literal["en", "zh"]] = Field(["en", "zh"], min_length=1, description="instruction languages to write as text variants")
    max_caption_tokens: int = Field(512, ge=1, description="instruction token counts are capped here (the trainer truncates)")
    tokenizer: str | None = Field(None, description="local path of a Hugging Face tokenizer for exact instruction token counts")
    allow_empty: bool = Field(False, description="an export that keeps no pair is an error unless this is set")
    rows_per_unit: int = Field(256, ge=1, le=1_000_000, description="pairs per unit of Ray work")
    overwrite: bool = Field(False, description="replace existing pair shards at --out (a new version of them)")


def pair_tables(store: Store, cfg: PairExportConfig) -> list[str]:
    """The pair tables to export: ``cfg.tables``, else the dataset's default render and synth
    tables that exist. ``ValueError`` (one line) when there is none or one is not a pair table."""
    uris = cfg.tables or [u for u in (default_out(store), default_synth_out(store)) if _open_out(u) is not None]
    if not uris:
        raise ValueError(
            f"no pair table next to {store.uri} (looked for pairs/pairs.lance and pairs/synth.lance under its _curation folder); "
            "make one with `curate pairs render` or `curate pairs synth`, or name one with --table"
        )
    for uri in uris:
        ds = _open_out(uri)
        if ds is None:
            raise ValueError(f"--table {uri}: no Lance dataset there; make one with `curate pairs render` or `curate pairs synth`")
        if ds.schema.names != PAIRS_SCHEMA.names:
            raise ValueError(f"--table {uri} is a Lance dataset but not a pair table (its columns differ from PAIRS_SCHEMA)")
    return uris


def _image_size(data: bytes | None) -> tuple[int, int] | str:
    """(width, height) from the image header, or why the bytes are not a shard image (no decode)."""
    import io

    from PIL import Image, UnidentifiedImageError

    from curation.shards import SHARD_IMAGE_FORMATS

    if not data:
        return "no_image"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in SHARD_IMAGE_FORMATS or im.mode != "RGB":
                return f"unreadable_image: {im.format} {im.mode} (a pair table holds RGB PNG or JPEG)"
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        return f"unreadable_image: {type(e).__name__}"


def _bucketed(data: bytes | None, cfg: PairExportConfig) -> dict[str, int] | str:
    """Size, bucket and tokens of one image of a pair (``pipelines.export.bucket_of``), or why not."""
    from curation.buckets import image_tokens
    from pipelines.export import bucket_of

    size = _image_size(data)
    if isinstance(size, str):
        return size
    w, h = size
    if min(w, h) < cfg.min_side:
        return "too_small"
    res, bw, bh, kept = bucket_of(w, h, cfg)
    if kept < cfg.min_kept_fraction:
        return "extreme_aspect"
    return {"width": w, "height": h, "resolution": res, "bucket_w": bw, "bucket_h": bh, "image_tokens": image_tokens(bw, bh)}


def pair_shard_rows(t: pa.Table, cfg: PairExportConfig, count_tokens, provenance: str) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Pair-table rows -> pair-shard rows (``pair_shard_schema``) and (pair_id, reason) of pairs
    left out (``no_image``, ``unreadable_image``, ``too_small``, ``extreme_aspect``,
    ``no_instruction``; ``source:`` marks the source image). Image bytes are copied as they are."""
    out, excluded = [], []
    for row in t.to_pylist():
        tgt, src = _bucketed(row["tgt_image"], cfg), _bucketed(row["src_image"], cfg)
        caps = [
            {"text": row[f"instruction_{lang}"].strip(), "kind": f"instruction_{lang}", "lang": lang}
            for lang in cfg.langs
            if (row.get(f"instruction_{lang}") or "").strip()
        ]
        why = tgt if isinstance(tgt, str) else f"source: {src}" if isinstance(src, str) else None if caps else "no_instruction"
        if why:
            excluded.append((row["pair_id"], why))
            continue
        out.append(
            {
                "id": row["pair_id"],
                "image": row["tgt_image"],
                "captions": caps,
                "caption_tokens": [min(count_tokens(c["text"]), cfg.max_caption_tokens) for c in caps],
                **tgt,
                "weight": 1.0,
                "curriculum_stage": None,
                "kind": row["kind"],
                "source_id": row["source_id"],
                "src_image": row["src_image"],
                **{f"src_{k}": src[k] for k in ("width", "height", "bucket_w", "bucket_h", "image_tokens")},
                "provenance": f"{row['provenance']} {provenance}",
            }
        )
    return pa.Table.from_pylist(out, schema=pair_shard_schema()), excluded


class _PairExportWorker:
    """A Ray actor: reads a unit's pair-table rows at the pinned version, writes pair-shard fragments."""

    def __init__(self, tables: list[list], out_uri: str, cfg: dict):
        import lance

        from pipelines.export import _count_tokens_fn

        self.tables = [lance.dataset(u, version=v, storage_options=storage_options_from_env(u) or None) for u, v in tables]
        self.where = [f"table={u}@v{v}" for u, v in tables]
        self.out_uri, self.out_options = out_uri, storage_options_from_env(out_uri)
        self.cfg = PairExportConfig(**cfg)
        self.count_tokens = _count_tokens_fn(self.cfg.tokenizer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        out: dict[str, list] = {"unit": [], "fragments": [], "excluded": []}
        for unit in batch.to_pylist():
            k = unit["table"]
            rows = self.tables[k].take(np.asarray(unit["positions"], np.int64))
            table, excluded = pair_shard_rows(rows, self.cfg, self.count_tokens, self.where[k])
            frags = []
            if table.num_rows:
                frags = write_fragments(
                    table, self.out_uri, schema=table.schema, max_rows_per_file=1 << 20, storage_options=self.out_options or None
                )
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["excluded"].append(json.dumps(excluded))
        return pa.table(out)


def export_pairs(store: Store, cfg: PairExportConfig, *, show_progress: bool = True, concurrency: int | None = None) -> StageResult:
    """Write the pair tables' pairs as pair shards at ``cfg.out``: one commit, resumable per unit.

    The same export of the same table versions is kept ("skipped"); a different one is an error
    unless ``cfg.overwrite`` (then a new version of the shards). Keeping no pair is an error unless
    ``cfg.allow_empty``. ``extra``: ``out``, ``kept``, ``excluded`` and the counts by reason."""
    t0 = time.perf_counter()
    out = Store(cfg.out)
    uris = [_resolve_table(u) for u in pair_tables(store, cfg)]
    if out.uri in uris or out.uri == store.uri:
        raise ValueError("--out must differ from the dataset and the pair tables: export writes new shards")
    pinned = [[u, _open_out(u).version] for u in uris]
    manifest = {"tables": pinned, "config": cfg.model_dump(mode="json", exclude={"overwrite"})}
    if out.exists() and not cfg.overwrite:
        return _keep_existing_pairs(out, manifest)
    sizes = [_open_out(u).count_rows() for u in uris]
    if not sum(sizes):
        _refuse_no_pairs(cfg, Counter(), uris)
    fp = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    ckpt = Checkpoints(out.state_dir / "checkpoints" / f"pairs-export-{fp}", "unit")
    records = _export_units(out, pinned, sizes, cfg, ckpt, show_progress=show_progress, concurrency=concurrency)
    frags, excluded = _gather_pair_units(records)
    by_reason = Counter(_reason_key(why) for _, why in excluded)
    kept = sum(f.physical_rows for f in frags)
    if not kept:
        ckpt.clear()
        _refuse_no_pairs(cfg, by_reason, uris)
    manifest |= {"rows": kept, "excluded": dict(by_reason.most_common()), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    new = _commit_pair_shards(out, frags, manifest)
    ckpt.clear()
    _write_pair_summary(out, manifest, excluded)
    seconds = time.perf_counter() - t0
    extra = {"out": out.uri, "kept": kept, "excluded": len(excluded), "by_reason": dict(by_reason), "tables": pinned}
    return StageResult("pairs export", "committed", new.version, 0, len(records), 0, Stats(sum(sizes)), seconds, extra=extra)


def _resolve_table(uri: str) -> str:
    from pathlib import Path

    return uri if is_remote(uri) else str(Path(uri).expanduser().resolve())


def _reason_key(why: str) -> str:
    """A reason as counted: details dropped (``unreadable_image: ...`` -> ``unreadable_image``),
    the side kept (``source: too_small``)."""
    side = "source: " if why.startswith("source: ") else ""
    return side + why.removeprefix(side).split(":", 1)[0]


def _refuse_no_pairs(cfg: PairExportConfig, by_reason: Counter, uris: list[str]) -> None:
    """Keeping no pair is almost always the wrong table or options: stop and say why pairs went."""
    if cfg.allow_empty:
        return
    why = ", ".join(f"{k} {v}" for k, v in by_reason.most_common(6)) or f"the pair tables have no rows: {', '.join(uris)}"
    raise ValueError(f"the pair export would keep no pair (excluded: {why}); pass --allow-empty to write it anyway")


def _keep_existing_pairs(out: Store, manifest: dict[str, Any]) -> StageResult:
    """``out`` holds pair shards: "skipped" when they are this export (same tables, versions and
    options), else an error, so a changed option never silently mixes two exports."""
    from curation.shards import MANIFEST_KEY

    raw = (out.open().schema.metadata or {}).get(MANIFEST_KEY.encode())
    prev = json.loads(raw) if raw else {}
    if prev.get("tables") != manifest["tables"] or prev.get("config") != manifest["config"]:
        raise ValueError(
            f"{out.uri} already holds other shards (other tables, versions or options); pass --overwrite to write a new version"
        )
    console.print(f"pairs export: {out.uri} already holds this export; skipped (pass --overwrite to redo)")
    ds = out.open()
    return StageResult("pairs export", "skipped", ds.version, 0, extra={"out": out.uri, "kept": ds.count_rows(), "excluded": 0})


def _export_units(out: Store, pinned, sizes, cfg, ckpt: Checkpoints, *, show_progress: bool, concurrency) -> list[dict]:
    """Ray actors write ``cfg.rows_per_unit`` pairs a unit; units in ``ckpt`` are not redone."""
    units = [
        {"unit": 0, "table": k, "positions": list(range(s, min(s + cfg.rows_per_unit, n)))}
        for k, n in enumerate(sizes)
        for s in range(0, n, cfg.rows_per_unit)
    ]
    for i, u in enumerate(units):
        u["unit"] = i
    done = ckpt.load()
    if done:
        console.print(f"pairs export: resuming, {len(done)} of {len(units)} units already written")

    def on_result(row: dict[str, Any]) -> None:
        rec = {"unit": row["unit"], "fragments": json.loads(row["fragments"]), "excluded": json.loads(row["excluded"])}
        ckpt.save(rec)
        done[row["unit"]] = rec

    todo = [u for u in units if u["unit"] not in done]
    ctor = {"tables": pinned, "out_uri": out.uri, "cfg": cfg.model_dump(mode="json")}
    execute_units(
        todo, _PairExportWorker, ctor, ray_options={"num_cpus": 1}, on_result=on_result,
        description="pairs export (units)", concurrency=concurrency, show_progress=show_progress,
    )  # fmt: skip
    missing = [u["unit"] for u in units if u["unit"] not in done]
    if missing:
        raise RuntimeError(f"pairs export: units {missing} produced no result")
    return [done[u["unit"]] for u in units]


def _gather_pair_units(records: list[dict]) -> tuple[list, list[tuple[str, str]]]:
    from lance.fragment import FragmentMetadata

    frags = [FragmentMetadata.from_json(json.dumps(f)) for rec in records for f in rec["fragments"]]
    return frags, [tuple(x) for rec in records for x in rec["excluded"]]


def _commit_pair_shards(out: Store, frags: list, manifest: dict[str, Any]):
    """One Lance commit of every fragment (a new version of ``out``), the manifest in the schema metadata."""
    from lance import LanceDataset, LanceOperation

    from curation.shards import MANIFEST_KEY

    schema = pair_shard_schema().with_metadata({MANIFEST_KEY: json.dumps(manifest)})
    return LanceDataset.commit(out.uri, LanceOperation.Overwrite(schema, frags), storage_options=out.storage_options or None)


def _write_pair_summary(out: Store, manifest: dict[str, Any], excluded: list[tuple[str, str]]) -> None:
    """The manifest and the excluded pairs with their reasons, next to the shards (as ``curate export``)."""
    import pyarrow.parquet as pq

    d = out.state_dir / "export"
    d.mkdir(parents=True, exist_ok=True)
    out.write_json("export/manifest.json", manifest)
    ids, why = [e[0] for e in excluded], [e[1] for e in excluded]
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "reason": pa.array(why, pa.string())}), d / "excluded.parquet")
