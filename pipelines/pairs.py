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

__all__ = ["PairsConfig", "PAIRS_SCHEMA", "render_pairs", "plan_pairs", "pending", "eligible_photos", "default_out", "check_out"]

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),  # the samples-table row id of the photo
        pa.field("kind", pa.string()),  # replace | remove | add
        pa.field("src_image", pa.large_binary()),
        pa.field("tgt_image", pa.large_binary()),
        pa.field("instruction_en", pa.string()),
        pa.field("instruction_zh", pa.string()),
        pa.field("src_text", pa.string()),  # "" for add
        pa.field("tgt_text", pa.string()),  # "" for remove
        pa.field("box", pa.list_(pa.int32())),  # x0, y0, x1, y1 (exclusive), pixels of both images
        pa.field("changed_fraction", pa.float32()),  # share of pixels that differ between the images
        pa.field("lang", pa.string()),  # en | zh: the script of the texts
        pa.field("style", pa.string()),  # sign | plain
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("provenance", pa.string()),  # "render v1 seed=S dataset=URI@vN"
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

_SCHEDULING = ("batch_size", "num_cpus")


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
        v = [k.strip() for k in v if k.strip()]
        bad = [k for k in v if k not in KINDS]
        if bad:
            raise ValueError(f"unknown kind {bad[0]!r}; use {', '.join(KINDS)}")
        if not v:
            raise ValueError(f"no kind given; use {', '.join(KINDS)}")
        return list(dict.fromkeys(v))


def default_out(store: Store) -> str:
    return str(store.state_dir / "pairs" / "pairs.lance")


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


def _resolve_out(store: Store, cfg: PairsConfig) -> str:
    out_uri = cfg.out or default_out(store)
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


class _RenderWorker:
    """A Ray actor: renders the pairs of whole units and writes them as pair-table fragments."""

    def __init__(self, uri: str, storage_options: dict, version: int, out_uri: str, cfg: dict, font: str, provenance: str, created_at):
        import lance

        self.ds = lance.dataset(uri, version=version, storage_options=storage_options or None)
        self.out_uri, self.out_options = out_uri, storage_options_from_env(out_uri)
        self.cfg, self.font, self.provenance, self.created_at = PairsConfig(**cfg), font, provenance, created_at

    def _photo(self, image: bytes | None, uri: str | None):
        from PIL import Image

        from engines.profiling.decode import DecodeOptions, decode_image, image_bytes_of

        opts = DecodeOptions(max_side=None)
        data = image_bytes_of(image, uri, opts.max_file_bytes)
        got = data if not isinstance(data, bytes) else decode_image(data, opts)
        if not hasattr(got, "rgb"):
            return got.reason
        rgb = got.rgb
        if max(rgb.size) > self.cfg.max_side:
            rgb = rgb.copy()
            rgb.thumbnail((self.cfg.max_side, self.cfg.max_side), Image.Resampling.LANCZOS)
        return np.asarray(rgb)

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

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        out: dict[str, list] = {"unit": [], "fragments": [], "stats": []}
        for unit in batch.to_pylist():
            t0 = time.perf_counter()
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
        return pa.table(out)


def _fingerprint(cfg: PairsConfig, read_version: int, out_uri: str, out_version: int | None) -> str:
    what = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _SCHEDULING}
    payload = json.dumps({"cfg": what, "v": read_version, "out": out_uri, "out_v": out_version}, sort_keys=True)
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
    from lance.fragment import FragmentMetadata

    from engines.pairs.render import find_font

    t0 = time.perf_counter()
    font = font or find_font()
    out_uri = _resolve_out(store, cfg)
    problem = check_out(out_uri)
    if problem:
        raise ValueError(problem)
    with store.lock("pairs-render", on_wait=lambda h: console.print(f"pairs: another render job is running ({h}); waiting")):
        ds = store.open()
        read_version = ds.version
        out_ds = _open_out(out_uri)
        units, skipped = plan_pairs(ds, cfg, _existing_ids(out_ds))
        extra: dict[str, Any] = {"out": out_uri, "pairs": 0, "already_there": skipped}
        if not units:
            why = "every planned pair is already in the table" if skipped else "no row with an image and no error"
            console.print(f"pairs: nothing to render ({why})")
            version = out_ds.version if out_ds is not None else 0
            return StageResult("pairs render", "skipped", version, read_version, seconds=time.perf_counter() - t0, extra=extra)
        ckpt = Checkpoints(
            store.state_dir / "checkpoints" / f"pairs-{_fingerprint(cfg, read_version, out_uri, out_ds and out_ds.version)}", "unit"
        )
        done = ckpt.load()
        resumed = sum(1 for u in units if u["unit"] in done)
        if resumed:
            console.print(f"pairs: resuming, {resumed} of {len(units)} units already rendered")
        provenance = f"{RENDER_VERSION} seed={cfg.seed} dataset={store.uri}@v{read_version}"
        created = datetime.now(UTC)
        ctor = {"uri": store.uri, "storage_options": store.storage_options, "version": read_version, "out_uri": out_uri}
        ctor |= {"cfg": cfg.model_dump(mode="json"), "font": font, "provenance": provenance, "created_at": created}

        def on_result(row: dict[str, Any]) -> None:
            rec = {"unit": row["unit"], "fragments": json.loads(row["fragments"]), "stats": json.loads(row["stats"])}
            ckpt.save(rec)
            done[row["unit"]] = rec

        todo = [u for u in units if u["unit"] not in done]
        execute_units(
            todo, _RenderWorker, ctor, ray_options={"num_cpus": cfg.num_cpus}, on_result=on_result,
            description="pairs render (units)", concurrency=concurrency, show_progress=show_progress,
        )  # fmt: skip
        missing = [u["unit"] for u in units if u["unit"] not in done]
        if missing:
            raise RuntimeError(f"pairs: units {missing} produced no result")
        records = [done[u["unit"]] for u in units]
        frags = [FragmentMetadata.from_json(json.dumps(f)) for rec in records for f in rec["fragments"]]
        stats = sum((Stats.from_dict(rec["stats"]) for rec in records), Stats())
        if not frags:
            ckpt.clear()
            console.print("pairs: no pair could be rendered (see the counters)")
            version = out_ds.version if out_ds is not None else 0
            return StageResult(
                "pairs render", "empty", version, read_version, len(units), resumed, stats, time.perf_counter() - t0, extra=extra
            )
        new = _commit(out_uri, out_ds, frags, f"pairs render seed={cfg.seed} n={cfg.n}")
        ckpt.clear()
    seconds = time.perf_counter() - t0
    c = stats.counters
    extra |= {
        "pairs": stats.rows,
        "by_kind": {k: c.get(f"kind_{k}", 0) for k in cfg.kinds},
        "by_lang": {k: c.get(f"lang_{k}", 0) for k in ("en", "zh")},
        "pairs_per_second": round(stats.rows / seconds, 2) if seconds > 0 else None,
        "render_seconds": round(stats.seconds, 3),
    }
    result = StageResult("pairs render", "committed", new.version, read_version, len(units), resumed, stats, seconds, extra=extra)
    result.stats_path = str(store.write_json(f"stats/pairs-render-v{read_version}-{new.version}.json", result.to_dict()))
    return result
