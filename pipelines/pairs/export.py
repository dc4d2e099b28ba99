"""``curate pairs export``: pair shards for training (see docs/pairs.md)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.runner import Checkpoints, StageResult, console, execute_resumable, json_record
from curation.stage import StageConfig, Stats
from curation.store import Store, is_remote, storage_options_from_env
from pipelines.pairs.common import check_pair_tables, open_out
from pipelines.pairs.render import default_out
from pipelines.pairs.synth import default_synth_out

# --- export: pair shards for training ------------------------------------------------------------

PAIR_SHARD_EXTRA = [
    pa.field("kind", pa.string()),  # the pair table's kind of edit
    pa.field("source_id", pa.string()),  # the samples-table row the pair was made from
    pa.field("target_id", pa.string()),  # a mined pair's target row; null when the target was made (render, synth)
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
    uris = cfg.tables or [u for u in (default_out(store), default_synth_out(store)) if open_out(u) is not None]
    if not uris:
        raise ValueError(
            f"no pair table next to {store.uri} (looked for pairs/pairs.lance and pairs/synth.lance under its _curation folder); "
            "make one with `curate pairs render` or `curate pairs synth`, or name one with --table"
        )
    check_pair_tables(uris, "--table", "curate pairs render` or `curate pairs synth")
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
    ``no_instruction``; ``source:`` marks the source image; ``review_drop``: dropped in human
    review, ``pipelines.pairs.review``). Image bytes are copied as they are."""
    out, excluded = [], []
    for row in t.to_pylist():
        if row.get("review") == "drop":  # dropped in human review (``curate review apply``)
            excluded.append((row["pair_id"], "review_drop"))
            continue
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
                "target_id": row.get("target_id"),
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
    pinned = [[u, open_out(u).version] for u in uris]
    manifest = {"tables": pinned, "config": cfg.model_dump(mode="json", exclude={"overwrite"})}
    if out.exists() and not cfg.overwrite:
        return _keep_existing_pairs(out, manifest)
    sizes = [open_out(u).count_rows() for u in uris]
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
    console.print(f"pairs export: {out.uri} already holds this export; skipped (pass --overwrite to redo)", markup=False)
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
    done, _ = execute_resumable(
        units,
        ckpt,
        _PairExportWorker,
        {"tables": pinned, "out_uri": out.uri, "cfg": cfg.model_dump(mode="json")},
        record=json_record("unit", "fragments", "excluded"),
        job="pairs export",
        ray_options={"num_cpus": 1},
        concurrency=concurrency,
        show_progress=show_progress,
        already="written",
    )
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
