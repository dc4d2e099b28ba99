"""``curate export --dataset DS --out SHARDS``: the rows a trainer should see, as a Lance training set.

Selection runs on the driver over light columns only (never image bytes) and gives every excluded
row one reason, first match wins, in this order:

  error (ingest), decode_error (profiling), exact_duplicate, duplicate: exact|near|semantic (the
  vector engine's ``dup_keep`` / ``dup_reason``), review_rejected (``rev_decision`` drop),
  rule:<name> (configured SQL rules), zero_weight (``rs_weight`` 0)

A reviewer's accept overrides the rules (a person looked at it) but not errors or duplicates.
Checks whose columns do not exist in the dataset are skipped and listed as such in the summary:
export works on a freshly ingested dataset as well as on a fully profiled, deduplicated,
tagged and reviewed one.

Ray workers then read the kept rows in chunks (random-access ``take`` on the pinned source
version), compute the bucket, image tokens and caption token estimates (``curation.buckets``),
and write Lance fragments; a few more reasons are found there (no_image, unreadable_image,
too_small, extreme_aspect, no_caption). The driver commits the fragments once, with a provenance
manifest (source URI and version, config, counts) in the shard's schema metadata and next to it.
Every source row is accounted for: kept, or in ``_curation/export/excluded.parquet`` with its reason.
``default_exclusions`` gives the same reasons from the columns alone (no images): resampling uses
it to give copies only to rows export keeps.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape

from curation.buckets import assign_bucket, choose_resolution, crop_sizes, estimate_caption_tokens, image_tokens
from curation.errors import UserError
from curation.registry import register_step
from curation.runner import Checkpoints, StageResult, console, execute_resumable, json_record
from curation.stage import StageConfig, Stats
from curation.store import Store

__all__ = [
    "ExportError",
    "ExportRule",
    "ExportConfig",
    "Roles",
    "resolve_roles",
    "select_rows",
    "default_exclusions",
    "size_reason",
    "bucket_of",
    "shard_rows",
    "export",
]

WEIGHT_COLUMNS = ("rs_weight", "sampling_weight", "weight")
CURRICULUM_COLUMNS = ("rs_stage", "curriculum_stage", "prof_curriculum")


class ExportError(UserError, ValueError):
    """An export that cannot be written as configured (a rule on a column the dataset lacks, a
    column that is not there, an output that holds another export...); the message says the fix."""


class ExportRule(BaseModel):
    """Exclude rows matching a SQL condition over the samples table (Lance / DataFusion SQL)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="the reason recorded for excluded rows (rule:<name>)")
    where: str = Field(min_length=1, description="rows for which this is true are excluded, e.g. 'prof_nsfw >= 0.8'")
    optional: bool = Field(
        False, description="when a column it names is absent, skip the rule (listed in the summary) instead of failing the export"
    )


class ExportConfig(StageConfig):
    out: str = Field(description="path or s3:// URI of the training dataset to write")
    resolution: Literal[256, 512, 1024] = Field(512, description="target training resolution (side of the square of equal area)")
    max_upscale: float = Field(
        1.25, ge=1.0, description="images smaller than the target train at a lower level (256/512) rather than upscaled more than this"
    )
    max_ratio: float = Field(4.0, ge=1.0, description="most elongated bucket, as in Lumina-Image-2.0")
    min_side: int = Field(64, ge=1, description="rows with a shorter side are excluded (too_small)")
    min_kept_fraction: float = Field(
        0.5, gt=0, le=1, description="rows whose crop to the nearest bucket keeps less of the image are excluded (extreme_aspect)"
    )
    exclude_errors: bool = Field(True, description="rows with an ingest error or a profiling decode error")
    exclude_exact_duplicates: bool = Field(True, description="rows with exact_dup_of set")
    exclude_near_duplicates: bool = Field(True, description="rows the vector engine did not keep in their duplicate group")
    apply_review: bool = Field(True, description="reviewer rejects are excluded; accepts override rules; reviewed captions are used")
    rules: list[ExportRule] = Field(
        default_factory=lambda: [ExportRule(name="nsfw", where="prof_nsfw >= 0.8")],
        description="SQL exclusion rules; a rule naming an absent column fails the export unless marked optional",
    )
    optional_rules: bool = Field(
        False, description="every rule optional: one whose column the dataset lacks is skipped with a note (as --optional-rules)"
    )
    allow_empty: bool = Field(False, description="an export that keeps no row is an error unless this is set")
    allow_random_weights: bool = Field(
        False, description="apply rules on scores made by randomly initialised weights (noise) instead of refusing them"
    )
    weight_column: Optional[str] = Field(None, description=f"sampling weight column; default: first present of {WEIGHT_COLUMNS}, else 1")
    curriculum_column: Optional[str] = Field(None, description=f"curriculum stage column; default: first present of {CURRICULUM_COLUMNS}")
    dedup_keep_column: Optional[str] = Field(
        None, description="boolean keep flag of duplicate groups; default: a dup_*/vec_* column ending in 'keep'"
    )
    review_decision_column: Optional[str] = Field(None, description="default: a rev_* column named like '*decision*'")
    review_caption_column: Optional[str] = Field(None, description="default: a rev_* column named like '*caption*'")
    reject_decisions: list[str] = Field(default_factory=lambda: ["reject", "rejected", "drop"])
    accept_decisions: list[str] = Field(default_factory=lambda: ["accept", "accepted", "keep"])
    caption_kinds: Optional[list[str]] = Field(None, description="caption kinds to export (default: all)")
    max_caption_tokens: int = Field(512, ge=1, description="caption token estimates are capped here (the trainer truncates)")
    tokenizer: Optional[str] = Field(None, description="local path of a Hugging Face tokenizer for exact caption token counts")
    vae_path: Optional[str] = Field(
        None,
        description="AutoencoderKL folder (Flux VAE, or a released repo with vae/): write pre-encoded latents of each row's centre crop",
    )
    text_encoder_path: Optional[str] = Field(
        None, description="Qwen3 folder (or a released repo with text_encoder/ + tokenizer/): write per-caption text features"
    )
    encode_batch_size: int = Field(16, ge=1, le=4096, description="images / captions per encoder call")
    feature_dtype: Literal["float32", "float16"] = Field("float32", description="storage type of latents and text features")
    encode_gpus: Optional[float] = Field(
        None, ge=0, description="GPUs per export worker when encoding (default: 1 when the Ray cluster has GPUs, else 0 = CPU)"
    )
    image_bytes: bool = Field(True, description="also keep the encoded image bytes next to pre-encoded latents")
    max_image_bytes: int = Field(64 << 20, ge=1, description="an image_uri whose file is larger is excluded (unreadable_uri)")
    max_pixels: int = Field(
        178_956_970, ge=1, description="an image with more pixels is excluded (unreadable_image), checked before decoding"
    )
    reencode_quality: int = Field(
        95,
        ge=50,
        le=100,
        description="JPEG quality of lossy images that must be re-encoded (CMYK, grey, rotated); lossless ones become PNG",
    )
    uri_fetch_threads: int = Field(
        16,
        ge=1,
        le=256,
        description="image_uri reads in flight per export worker "
        "(object-store reads are latency-bound: one at a time leaves the link idle)",
    )
    version: Optional[int] = Field(None, description="source version to export (default: latest)")
    rows_per_unit: int = Field(2048, ge=1, le=1_000_000, description="rows per unit of Ray work")
    overwrite: bool = Field(False, description="replace an existing training dataset at --out (a new version of it)")

    @property
    def checked_rules(self) -> list[ExportRule]:
        """The rules as export applies them: each optional when ``optional_rules`` is set."""
        return [r.model_copy(update={"optional": True}) for r in self.rules] if self.optional_rules else list(self.rules)


# --- which column plays which role -----------------------------------------------------------


class Roles(BaseModel):
    """Columns of this dataset that selection and export use (None: absent, check skipped)."""

    error: Optional[str] = None
    prof_error: Optional[str] = None
    exact_dup: Optional[str] = None
    dedup_keep: Optional[str] = None
    dedup_reason: Optional[str] = None
    review_decision: Optional[str] = None
    review_caption: Optional[str] = None
    weight: Optional[str] = None
    curriculum: Optional[str] = None


def _first(schema: pa.Schema, names, pattern: str | None = None, types=None) -> Optional[str]:
    for n in names:
        if n in schema.names:
            return n
    if pattern:
        for f in schema:
            if re.fullmatch(pattern, f.name) and (types is None or types(f.type)):
                return f.name
    return None


def resolve_roles(schema: pa.Schema, cfg: ExportConfig) -> Roles:
    def given(name: Optional[str]) -> Optional[str]:
        if name is not None and name not in schema.names:
            raise ExportError(f"column {name!r} named in the export config is not in the dataset; columns: {schema.names}")
        return name

    keep = given(cfg.dedup_keep_column) or _first(
        schema, ("dup_keep", "vec_dup_keep", "vec_keep"), r"(dup|vec)_\w*keep", pa.types.is_boolean
    )
    reason = None
    if keep:
        prefix = keep.split("_", 1)[0]
        reason = _first(schema, (f"{prefix}_reason", f"{prefix}_dup_reason"))
    return Roles(
        error="error" if "error" in schema.names else None,
        prof_error="prof_error" if "prof_error" in schema.names else None,
        exact_dup="exact_dup_of" if "exact_dup_of" in schema.names else None,
        dedup_keep=keep,
        dedup_reason=reason,
        review_decision=given(cfg.review_decision_column)
        or _first(schema, ("rev_decision",), r"rev_\w*decision\w*", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        review_caption=given(cfg.review_caption_column)
        or _first(schema, ("rev_caption",), r"rev_\w*caption\w*", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        weight=given(cfg.weight_column)
        or _first(schema, WEIGHT_COLUMNS, r"rs_\w*weight\w*", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
        curriculum=given(cfg.curriculum_column) or _first(schema, CURRICULUM_COLUMNS),
    )


# --- selection (driver, light columns) -------------------------------------------------------


def _mask(ds, expr: str) -> np.ndarray:
    """A boolean per row (dataset order) for a SQL expression; null counts as false."""
    col = ds.to_table(columns={"m": f"({expr})"}).column("m")
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool)


def check_rules(
    ds, rules: list[ExportRule], notes: list[str] | None = None, *, store: Store | None = None, allow_random: bool = False
) -> list[ExportRule]:
    """The rules to apply. Each is tried on one row first (cheap, no Ray): invalid SQL fails; a
    missing column fails too, unless the rule is ``optional`` (then it is skipped with a note),
    since a misspelt column or an unprofiled dataset would otherwise export everything. With the
    ``store``, a rule on a score made by random weights is refused (``check_random_weights``, the
    one check every consumer runs) unless ``allow_random``: it would drop rows by noise."""
    kept = []
    for rule in rules:
        if store is not None:
            _refuse_random_rule(store, ds.schema.names, rule, allow_random, notes)
        try:
            ds.to_table(columns={"id": "id", "m": f"({rule.where})"}, limit=1)  # a column too: "1 = 1" reads none
        except Exception as e:
            missing = re.search(r"No field named ([\w.\"]+)", str(e))
            if not missing:
                msg = re.sub(r",\s*/\S+\.rs:\d+(:\d+)?", "", str(e).splitlines()[0])[:240]  # not Lance's source location
                raise ExportError(f"export rule {rule.name!r} ({rule.where!r}) is not valid SQL here: {msg}") from None
            col = missing.group(1).strip('."')
            if not rule.optional:
                raise ExportError(_missing_column_message(rule, col, ds.schema.names)) from None
            if notes is not None:
                notes.append(f"rule:{rule.name}: not applied (column {col} missing; the rule is optional)")
            continue
        kept.append(rule)
    return kept


def _refuse_random_rule(store: Store, names: list[str], rule: ExportRule, allow: bool, notes: list[str] | None) -> None:
    from engines.vector.retrieval import check_random_weights

    cols = [c for c in names if re.search(rf"(?<![\w.]){re.escape(c)}(?![\w])", rule.where)]
    random = check_random_weights(store, cols, consumer=f"export rule {rule.name!r} ({rule.where!r})", allow=allow)
    if random and notes is not None:
        notes.append(f"rule:{rule.name}: RANDOM-DERIVED input ({', '.join(random)}): rows dropped by noise")


def _missing_column_message(rule: ExportRule, col: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(col, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    how = " (`curate profile`)" if col.startswith("prof_") else ""
    return (
        f"export rule {rule.name!r} ({rule.where!r}) needs column {col}, which this dataset does not have: {hint}"
        f"fix the name, compute the column first{how}, or mark the rule optional "
        f"(`optional: true` in the export config, or --optional-rules) to export without it"
    )


def select_rows(ds, cfg: ExportConfig, roles: Roles, store: Store | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Row positions to export, the reason per row (None = kept) and notes on checks skipped."""
    n = ds.count_rows()
    reason = np.full(n, None, dtype=object)
    notes: list[str] = []

    def apply(mask: np.ndarray, why) -> None:
        free = (reason == None) & mask  # noqa: E711 (elementwise)
        if isinstance(why, np.ndarray):
            reason[free] = why[free]
        else:
            reason[free] = why

    def skipped(check: str, why: str) -> None:
        notes.append(f"{check}: not applied ({why})")

    if cfg.exclude_errors:
        for col, label in ((roles.error, "error"), (roles.prof_error, "decode_error")):
            if col:
                t = ds.to_table(columns=[col]).column(col)
                mask = pc.is_valid(t).to_numpy(zero_copy_only=False)
                first = np.array([f"{label}: {(e or '').split(':', 1)[0]}" for e in t.to_pylist()], dtype=object)
                apply(mask, first if n else label)
            elif col is None and label == "decode_error":
                skipped("decode_error", "no profiling columns")
    if cfg.exclude_exact_duplicates:
        if roles.exact_dup:
            # the vector engine's groups include exact copies and keep the best row, not the first:
            # its flag decides where it has one; exact_dup_of covers rows it has not seen
            unseen = f" AND {roles.dedup_keep} IS NULL" if (roles.dedup_keep and cfg.exclude_near_duplicates) else ""
            apply(_mask(ds, f"{roles.exact_dup} IS NOT NULL{unseen}"), "exact_duplicate")
        else:
            skipped("exact_duplicate", "no exact_dup_of column; run `curate stage exact_dup`")
    if cfg.exclude_near_duplicates:
        if roles.dedup_keep:
            drop = ~_mask(ds, f"{roles.dedup_keep} IS NULL OR {roles.dedup_keep}")
            why: Any = "near_duplicate"
            if roles.dedup_reason:
                r = ds.to_table(columns=[roles.dedup_reason]).column(roles.dedup_reason).to_pylist()
                why = np.array([f"duplicate: {x}" if x else "near_duplicate" for x in r], dtype=object)
            apply(drop, why)
        else:
            skipped("near_duplicate", "no dedup keep flag; run `curate dedup`")
    accepted = np.zeros(n, bool)
    if cfg.apply_review:
        if roles.review_decision:
            dec = pc.utf8_lower(ds.to_table(columns=[roles.review_decision]).column(roles.review_decision))
            apply(pc.fill_null(pc.is_in(dec, pa.array(cfg.reject_decisions)), False).to_numpy(zero_copy_only=False), "review_rejected")
            accepted = pc.fill_null(pc.is_in(dec, pa.array(cfg.accept_decisions)), False).to_numpy(zero_copy_only=False)
        else:
            skipped("review", "no review decision column")
    for rule in check_rules(ds, cfg.checked_rules, notes, store=store, allow_random=cfg.allow_random_weights):
        apply(_mask(ds, rule.where) & ~accepted, f"rule:{rule.name}")
    if roles.weight:
        w = ds.to_table(columns=[roles.weight]).column(roles.weight)
        zero = pc.fill_null(pc.less_equal(w, 0), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(zero & (reason == None))  # noqa: E711
        # resampling gives 0 to rows a worker's check would drop: name that check, not the weight
        found = _column_checks(ds, cfg, roles, rows)
        reason[rows] = np.where(found == None, "zero_weight", found)  # noqa: E711
    keep = np.flatnonzero(reason == None).astype(np.int64)  # noqa: E711
    return keep, reason, notes


def default_exclusions(ds, cfg: ExportConfig | None = None) -> np.ndarray:
    """Why export would leave out each row of ``ds`` (dataset order; None: it keeps the row), with
    ``cfg`` or export's default config, as far as the columns tell without reading images: the
    selection of :func:`select_rows` (errors, duplicates, review, rules) and then the workers' row
    checks that the ``width``/``height`` (else ``prof_width``/``prof_height``) and caption columns
    decide (``too_small``, ``extreme_aspect``, ``no_caption``, as :func:`_shard_row` names them).
    Not applied: the sampling weight (``zero_weight``: resampling is what sets it) and rules naming
    an absent column (export refuses or skips those; they drop no row). Why: resampling gives
    copies only to rows export keeps, so its ``--target-size`` is the size of the trained set."""
    cfg = cfg or ExportConfig(out="")
    cfg = cfg.model_copy(update={"optional_rules": True})
    roles = resolve_roles(ds.schema, cfg).model_copy(update={"weight": None})
    _, reason, _ = select_rows(ds, cfg, roles)
    rows = np.flatnonzero(reason == None)  # noqa: E711
    reason[rows] = _column_checks(ds, cfg, roles, rows)
    return reason


def _column_checks(ds, cfg: ExportConfig, roles: Roles, rows: np.ndarray) -> np.ndarray:
    """The workers' row checks that the columns decide, for the rows at positions ``rows``:
    ``too_small`` / ``extreme_aspect`` from ``width``/``height`` (else ``prof_width``/``prof_height``),
    then ``no_caption``; None where they pass or the columns do not tell."""
    out = np.full(len(rows), None, dtype=object)
    names = ds.schema.names
    cols = [c for c in ("width", "height", "prof_width", "prof_height", "captions", roles.review_caption) if c and c in names]
    if not len(rows) or not cols:
        return out
    cols = list(dict.fromkeys(cols))
    # a few rows (zero weights): random access; most of them (resampling's check): one scan
    t = ds.take(rows, columns=cols) if len(rows) < ds.count_rows() // 10 else ds.to_table(columns=cols).take(pa.array(rows))

    def column(*options: str) -> list:
        got = [t.column(c).to_pylist() for c in options if c in t.schema.names]
        return [next((v for v in vals if v is not None), None) for vals in zip(*got)] if got else [None] * t.num_rows

    for k, (w, h, row) in enumerate(zip(column("width", "prof_width"), column("height", "prof_height"), t.to_pylist())):
        if w and h and (why := size_reason(w, h, cfg)):
            out[k] = why
        elif "captions" in t.schema.names and not _shard_captions(row, cfg, roles):
            out[k] = "no_caption"
    return out


# --- shard rows (worker, pure) ---------------------------------------------------------------


def _count_tokens_fn(tokenizer_path: Optional[str]):
    if not tokenizer_path:
        return estimate_caption_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    return lambda text: len(tok(text or "", add_special_tokens=False)["input_ids"])


def read_uri(uri: str, storage_options: Optional[dict] = None, max_bytes: int = 64 << 20) -> bytes:
    """The bytes behind an ``image_uri``: a local path (or ``file://``), ``s3://`` (options as
    Lance takes them: ``aws_endpoint``, ``aws_access_key_id``, ... default from the environment,
    see ``curation.store.storage_options_from_env``) or any scheme pyarrow's filesystems know.
    Raises ``OSError`` / ``ValueError`` with the reason; the export worker turns that into an
    ``unreadable_uri`` exclusion."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri[7:] if uri.startswith("file://") else uri)
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{size} bytes, over max_image_bytes={max_bytes}")
        return path.read_bytes()
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri, storage_options or {})
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {uri}")
    if info.size is not None and info.size > max_bytes:
        raise ValueError(f"{info.size} bytes, over max_image_bytes={max_bytes}")
    with fs.open_input_stream(path) as f:
        return f.read()


def _filesystem(uri: str, options: dict) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a remote URI. S3 clients come from
    ``curation.store.s3_filesystem`` (one per options, reused: building one per image costs more
    than reading a small object); other schemes are resolved by pyarrow per call."""
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3", "s3a"):
        from curation.store import s3_filesystem, storage_options_from_env

        return s3_filesystem({**storage_options_from_env(uri), **options}), rest
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def fetch_all(uris: list[str], fetch, threads: int) -> list[bytes | BaseException]:
    """``fetch(uri)`` for every URI, up to ``threads`` at a time, in order; a failure is returned
    in its place (one unreadable image is one row's problem). Object-store reads are latency-bound
    (tens of ms for a small object, the link idle meanwhile) and pyarrow's reads release the GIL,
    so threads, not processes, fill the link."""

    def one(u: str) -> bytes | BaseException:
        try:
            return fetch(u)
        except Exception as e:  # missing file, no permission, network
            return e

    if threads <= 1 or len(uris) <= 1:
        return [one(u) for u in uris]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(uris)), thread_name_prefix="image-uri") as pool:
        return list(pool.map(one, uris))


def bucket_of(width: int, height: int, cfg) -> tuple[int, int, int, float]:
    """(resolution level, bucket width, bucket height, share of the image the crop keeps) of an
    image, under the bucketing options of ``cfg`` (``resolution``, ``max_upscale``, ``max_ratio``).
    One function for the single-image and the pair export, so a pair's target lands in the bucket
    the same photo would get as a plain sample."""
    res = choose_resolution(width, height, cfg.resolution, max_upscale=cfg.max_upscale)
    bw, bh = assign_bucket(width, height, crop_sizes(res, max_ratio=cfg.max_ratio))
    return res, bw, bh, float(np.exp(-abs(np.log((bw / bh) / (width / height)))))


def shard_rows(
    t: pa.Table, cfg: ExportConfig, roles: Roles, count_tokens=estimate_caption_tokens, *, fetch=None, counts: Counter | None = None
) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Samples-table rows -> training rows (``SHARD_SCHEMA``) and (id, reason) of rows left out.

    Image bytes go through ``curation.shards.normalise_image``: CMYK, palette, 16-bit, grey, GIF,
    TIFF, BMP or EXIF-rotated images are re-encoded as 8-bit RGB (counted in ``counts`` as
    ``reencoded_<what>``), so the sizes written are those of the pixels the loader will decode.

    A row without inline bytes but with an ``image_uri`` has its bytes read by ``fetch(uri)``
    (default: :func:`read_uri` with options from the environment); a URI that cannot be read
    excludes the row as ``unreadable_uri: <why>``, it never stops the export."""
    from curation.shards import SHARD_SCHEMA

    fetch = fetch or (lambda uri: read_uri(uri, max_bytes=cfg.max_image_bytes))
    out: list[dict] = []
    excluded: list[tuple[str, str]] = []
    rows = t.to_pylist()
    need = [i for i, row in enumerate(rows) if row.get("image") is None and row.get("image_uri")]
    fetched = dict(zip(need, fetch_all([rows[i]["image_uri"] for i in need], fetch, cfg.uri_fetch_threads)))
    for i, row in enumerate(rows):
        rid = row["id"]
        if i in fetched:
            got = fetched.pop(i)
            if isinstance(got, BaseException):
                excluded.append((rid, f"unreadable_uri: {type(got).__name__}: {str(got)[:160]}"))
                continue
            row["image"] = got
        made = _shard_row(row, cfg, roles, count_tokens, counts)
        if isinstance(made, str):
            excluded.append((rid, made))
        else:
            out.append(made)
    return pa.Table.from_pylist(out, schema=SHARD_SCHEMA), excluded


def _shard_row(row: dict, cfg: ExportConfig, roles: Roles, count_tokens, counts: Counter | None) -> dict | str:
    """One samples-table row (its bytes already fetched) -> its training row, or the reason it is
    left out: the checks run in the order that names the first reason a row fails."""
    from curation.shards import normalise_image

    rid = row["id"]
    if row.get("image") is None:
        return "no_image"
    try:  # RGB JPEG/PNG/WebP with the orientation applied: what the loader expects
        img = normalise_image(row["image"], max_pixels=cfg.max_pixels, quality=cfg.reencode_quality)
    except ValueError as e:
        return f"unreadable_image: {e}"
    if img.converted is not None and counts is not None:
        counts[f"reencoded_{img.converted}"] += 1
    w, h = img.width, img.height
    if why := size_reason(w, h, cfg):
        return why
    res, bw, bh, _ = bucket_of(w, h, cfg)
    caps = _shard_captions(row, cfg, roles)
    if not caps:
        return "no_caption"
    weight = row.get(roles.weight) if roles.weight else None
    stage = row.get(roles.curriculum) if roles.curriculum else None
    return {
        "id": rid,
        "image": img.data,
        "captions": caps,
        "caption_tokens": [min(count_tokens(c["text"]), cfg.max_caption_tokens) for c in caps],
        "width": w,
        "height": h,
        "resolution": res,
        "bucket_w": bw,
        "bucket_h": bh,
        "image_tokens": image_tokens(bw, bh),
        "weight": 1.0 if weight is None else float(weight),
        "curriculum_stage": None if stage is None else int(stage),
    }


def size_reason(width: int, height: int, cfg: ExportConfig) -> str | None:
    """Why an image of this size is left out (``too_small``, ``extreme_aspect``), None if it is not."""
    if min(width, height) < cfg.min_side:
        return "too_small"
    if bucket_of(width, height, cfg)[3] < cfg.min_kept_fraction:
        return "extreme_aspect"
    return None


def _shard_captions(row: dict, cfg: ExportConfig, roles: Roles) -> list[dict]:
    """The caption variants a training row keeps: the non-empty ones of the configured kinds, or
    (``apply_review``) the reviewer's fix alone, since it replaces the captions it corrects."""
    caps = [
        c
        for c in (row.get("captions") or [])
        if (c.get("text") or "").strip() and (cfg.caption_kinds is None or c.get("kind") in cfg.caption_kinds)
    ]
    reviewed = row.get(roles.review_caption) if (cfg.apply_review and roles.review_caption) else None
    if reviewed and reviewed.strip():  # a reviewer's fix replaces the captions it corrects
        from curation.text import detect_lang

        caps = [{"text": reviewed.strip(), "kind": "reviewed", "lang": detect_lang(reviewed)}]
    return caps


def load_encoders(cfg: ExportConfig, device: str = "cpu"):
    """The export's encoders from their local folders (``training.encoders``), or None when none is set."""
    if not (cfg.vae_path or cfg.text_encoder_path):
        return None
    from training.encoders import Encoders, LatentEncoder, TextEncoder

    return Encoders(
        LatentEncoder.from_pretrained(cfg.vae_path, device) if cfg.vae_path else None,
        TextEncoder.from_pretrained(cfg.text_encoder_path, device, max_tokens=cfg.max_caption_tokens) if cfg.text_encoder_path else None,
    )


def encoder_manifest(cfg: ExportConfig) -> dict[str, Any]:
    """What the manifest records about the encoders (read from their config files, no model loaded);
    fails early, on the driver, when a configured folder is missing."""
    out: dict[str, Any] = {}
    for key, path, sub in (("vae", cfg.vae_path, "vae"), ("text_encoder", cfg.text_encoder_path, "text_encoder")):
        if not path:
            continue
        p = Path(path)
        d = p / sub if (p / sub).is_dir() else p
        if not (d / "config.json").exists():
            raise ExportError(
                f"{key} folder {path!r} has no config.json (expected a diffusers / transformers folder "
                "saved with save_pretrained, or a released repository)"
            )
        c = json.loads((d / "config.json").read_text())
        if key == "vae":
            from training.encoders import VAE_SCALE

            out[key] = {
                "path": str(p.resolve()),
                "class": c.get("_class_name", "AutoencoderKL"),
                "latent_channels": c.get("latent_channels"),
                "scaling_factor": c.get("scaling_factor") or VAE_SCALE,
                "shift_factor": c.get("shift_factor") or 0.0,
                "crop": "centre crop to the bucket (the loader's random_crop=false)",
                "column": "latents (C x bucket_h/8 x bucket_w/8, flattened)",
            }
        else:
            out[key] = {
                "path": str(p.resolve()),
                "class": (c.get("architectures") or [c.get("model_type")])[0],
                "hidden_size": c.get("hidden_size"),
                "num_hidden_layers": c.get("num_hidden_layers"),
                "hidden_state": "second-to-last (hidden_states[-2])",
                "max_tokens": cfg.max_caption_tokens,
                "column": "cap_feats (per caption variant: tokens x hidden_size, flattened); "
                "cap_feat_tokens; caption_tokens are the exact counts",
            }
    if out:
        out["feature_dtype"] = cfg.feature_dtype
    return out


def encode_rows(table: pa.Table, encoders, cfg: ExportConfig) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Add pre-encoded columns to training rows (``training.loader.shard_schema``): the VAE latent
    of each row's centre crop to its bucket (what the loader yields with ``random_crop=False``) and
    the text features of every caption variant, in batches of ``encode_batch_size`` (same-size crops
    together, captions sorted by length). Rows whose image does not decode are returned as
    (id, ``decode_error: ...``) and left out."""
    import torch

    from curation.shards import shard_schema
    from training.loader import decode_and_crop

    np_dtype = np.float16 if cfg.feature_dtype == "float16" else np.float32
    excluded: list[tuple[str, str]] = []
    keep = np.ones(table.num_rows, bool)
    cols: dict[str, pa.Array] = {}
    ids = table.column("id").to_pylist()
    if encoders.vae is not None:
        bw, bh = table.column("bucket_w").to_pylist(), table.column("bucket_h").to_pylist()
        images = table.column("image").to_pylist()
        crops: dict[int, np.ndarray] = {}
        for i, data in enumerate(images):
            try:
                crops[i] = decode_and_crop(data, bw[i], bh[i], None)
            except Exception as e:
                excluded.append((ids[i], f"decode_error: {type(e).__name__}: {str(e)[:120]}"))
                keep[i] = False
        order = sorted(crops, key=lambda i: (bw[i], bh[i]))
        lat: dict[int, np.ndarray] = {}
        for s in range(0, len(order), cfg.encode_batch_size):
            chunk = order[s : s + cfg.encode_batch_size]
            for i, z in zip(chunk, encoders.vae.encode([crops[i] for i in chunk])):
                lat[i] = z.cpu().numpy().astype(np_dtype).ravel()
        vals = [lat.get(i, np.zeros(0, np_dtype)) for i in range(table.num_rows)]
        offs = np.concatenate([[0], np.cumsum([len(v) for v in vals])]).astype(np.int64)
        cols["latents"] = pa.LargeListArray.from_arrays(pa.array(offs), pa.array(np.concatenate(vals) if vals else np.zeros(0, np_dtype)))
    if encoders.text is not None:
        caps = [[c["text"] for c in row] for row in table.column("captions").to_pylist()]
        flat = [(i, j, t) for i, row in enumerate(caps) for j, t in enumerate(row)]
        order = sorted(range(len(flat)), key=lambda k: len(flat[k][2]))
        feats: list[Optional[np.ndarray]] = [None] * len(flat)
        for s in range(0, len(order), cfg.encode_batch_size):
            chunk = order[s : s + cfg.encode_batch_size]
            with torch.no_grad():
                for k, f in zip(chunk, encoders.text.encode([flat[k][2] for k in chunk])):
                    feats[k] = f.cpu().numpy().astype(np_dtype)
        tokens = [[0] * len(row) for row in caps]
        for (i, j, _), f in zip(flat, feats):
            tokens[i][j] = len(f)
        inner_offs = np.concatenate([[0], np.cumsum([f.size for f in feats])]).astype(np.int64)
        values = np.concatenate([f.ravel() for f in feats]) if feats else np.zeros(0, np_dtype)
        inner = pa.LargeListArray.from_arrays(pa.array(inner_offs), pa.array(values))
        outer_offs = np.concatenate([[0], np.cumsum([len(r) for r in caps])]).astype(np.int32)
        cols["cap_feats"] = pa.ListArray.from_arrays(pa.array(outer_offs), inner)
        cols["cap_feat_tokens"] = pa.array(tokens, pa.list_(pa.int32()))
        # the exact sequence cost of each variant, for the loader's token budget
        cols["caption_tokens"] = cols["cap_feat_tokens"]
    schema = shard_schema("latents" in cols, "cap_feats" in cols, cfg.feature_dtype)
    arrays = [cols[f.name] if f.name in cols else table.column(f.name).combine_chunks() for f in schema]
    if not cfg.image_bytes and "latents" in cols:
        arrays[schema.get_field_index("image")] = pa.nulls(table.num_rows, pa.large_binary())
    out = pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, schema)], schema=schema)
    return out.filter(pa.array(keep)), excluded


class _ExportWorker:
    """A Ray actor: reads a chunk of kept rows from the pinned source version, writes shard fragments."""

    def __init__(self, src: Store, version: int, out_uri: str, out_options: dict, cfg: ExportConfig, roles: Roles):
        self.ds = src.open(version)
        self.out_uri, self.out_options, self.cfg, self.roles = out_uri, out_options, cfg, roles
        self.count_tokens = _count_tokens_fn(cfg.tokenizer)
        self.src_options = src.storage_options
        self.encoders = None
        if cfg.vae_path or cfg.text_encoder_path:
            import torch

            self.encoders = load_encoders(cfg, "cuda" if torch.cuda.is_available() else "cpu")
        names = set(self.ds.schema.names)
        wanted = [
            "id",
            "image",
            "image_uri",
            "captions",
            roles.review_caption,
            roles.weight,
            roles.curriculum,
        ]
        self.columns = [c for c in dict.fromkeys(wanted) if c and c in names]

    def _uri_options(self, uri: str) -> Optional[dict]:
        """The source dataset's object-store options when the image lives on the same kind of store."""
        same = uri.split("://", 1)[0] == self.ds.uri.split("://", 1)[0] if "://" in self.ds.uri else False
        return self.src_options if same else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        from curation.shards import SHARD_SCHEMA

        out: dict[str, list] = {"unit": [], "fragments": [], "excluded": [], "stats": []}
        for unit in batch.to_pylist():
            t0 = time.perf_counter()
            rows = self.ds.take(np.asarray(unit["positions"], np.int64), columns=self.columns)
            reencoded: Counter = Counter()
            table, excluded = shard_rows(
                rows,
                self.cfg,
                self.roles,
                self.count_tokens,
                fetch=lambda uri: read_uri(uri, self._uri_options(uri), self.cfg.max_image_bytes),
                counts=reencoded,
            )
            schema = SHARD_SCHEMA
            if self.encoders is not None:
                table, bad = encode_rows(table, self.encoders, self.cfg)
                excluded += bad
                schema = table.schema
            frags = []
            if table.num_rows:
                frags = write_fragments(
                    table, self.out_uri, schema=schema, max_rows_per_file=1 << 20, storage_options=self.out_options or None
                )
            stats = Stats(rows.num_rows, Counter(f"excluded_{r}" for _, r in excluded) + reencoded, time.perf_counter() - t0)
            out["unit"].append(unit["unit"])
            out["fragments"].append(json.dumps([f.to_json() for f in frags]))
            out["excluded"].append(json.dumps(excluded))
            out["stats"].append(json.dumps(stats.to_dict()))
        return pa.table(out)


# --- the job ---------------------------------------------------------------------------------


def _fingerprint(cfg: ExportConfig, src: Store, version: int) -> str:
    payload = json.dumps({"cfg": cfg.model_dump(mode="json"), "src": src.uri, "v": version}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def export(
    src: Store, cfg: ExportConfig, *, show_progress: bool = True, concurrency: int | None = None, replace_stale: bool = False
) -> StageResult:
    """Select, bucket and write the training dataset at ``cfg.out``; resumable per unit.

    An existing export of the same source version and config is kept (skipped). A different one is
    an error unless ``cfg.overwrite`` or ``replace_stale`` (a pipeline re-run after upstream steps
    changed the dataset): then a new version of the training dataset is written (the old one stays
    in its Lance history)."""
    t_start = time.perf_counter()
    out = Store(cfg.out)
    if out.uri == src.uri:
        raise ExportError("--out must differ from --dataset: export writes a new dataset")
    ds = src.open(cfg.version)
    version = ds.version
    if out.exists() and not cfg.overwrite:
        kept = _keep_existing(src, out, cfg, version, replace_stale=replace_stale)
        if kept is not None:
            return kept
    encoders = encoder_manifest(cfg)  # checks the encoder folders before any work starts
    roles = resolve_roles(ds.schema, cfg)
    keep, reason, notes = select_rows(ds, cfg, roles, store=src)
    ids = ds.to_table(columns=["id"]).column("id").to_pylist()
    console.print(
        f"export: {len(keep):,} of {len(reason):,} rows of {src.uri} v{version} pass the column checks; the workers check their images",
        markup=False,
    )
    for note in notes:
        console.print(f"  [yellow]{escape(note)}[/]")
    if not len(keep):
        _refuse_empty(cfg, Counter(_reason_key(r) for r in reason if r is not None))

    ckpt = Checkpoints(out.state_dir / "checkpoints" / f"export-{_fingerprint(cfg, src, version)}", "unit")
    done = _write_units(src, out, version, cfg, roles, keep, ckpt, show_progress=show_progress, concurrency=concurrency)
    frags, worker_stats, excluded_ids, excluded_reasons = _gather_units(done, ids, reason)
    seconds = worker_stats.seconds
    by_reason = Counter(_reason_key(r) for r in excluded_reasons)
    reencoded = {k.removeprefix("reencoded_"): v for k, v in sorted(worker_stats.counters.items()) if k.startswith("reencoded_")}
    kept_rows = sum(f.physical_rows for f in frags)
    top = ", ".join(f"{k} {v}" for k, v in by_reason.most_common(6))
    console.print(f"export: {kept_rows:,} of {len(reason):,} rows kept, {len(excluded_ids):,} excluded ({top or 'none'})", markup=False)
    if kept_rows == 0:
        ckpt.clear()
        _refuse_empty(cfg, by_reason)
    manifest = {
        "source": {"uri": src.uri, "version": version, "rows": len(reason)},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": kept_rows,
        "excluded": dict(by_reason.most_common()),
        "reencoded": reencoded,
        "checks_skipped": notes,
        "columns_used": roles.model_dump(),
        "config": cfg.model_dump(mode="json"),
        "encoders": encoders,
    }
    new = _commit_export(out, frags, manifest, cfg)
    ckpt.clear()
    summary = _summarise(out, new.version, manifest, excluded_ids, excluded_reasons)
    stats = Stats(len(reason), Counter({f"excluded_{k}": v for k, v in by_reason.items()}), seconds)
    result = StageResult(
        "export",
        "committed",
        new.version,
        version,
        len(frags),
        0,
        stats,
        time.perf_counter() - t_start,
        extra={"out": out.uri, "kept": kept_rows, "excluded": len(excluded_ids), **summary},
    )
    out.write_json(f"stats/export-v{new.version}.json", result.to_dict())
    return result


def _reason_key(reason: str) -> str:
    """The reason as counted: ``error: truncated: ...`` -> ``error`` (details vary per row), while
    ``rule:nsfw`` and ``duplicate: near`` stay whole."""
    detailed = ("error", "decode_error", "unreadable_uri", "unreadable_image")
    return reason.split(":", 1)[0] if reason.startswith(detailed) else reason


def _refuse_empty(cfg: ExportConfig, by_reason: Counter) -> None:
    """An export that keeps nothing is almost always a wrong rule or dataset: stop, say why rows went."""
    if cfg.allow_empty:
        return
    reasons = ", ".join(f"{k} {v}" for k, v in by_reason.most_common(8)) or "the dataset has no rows"
    raise ExportError(f"the export would keep no row (excluded: {reasons}); check the rules, or pass --allow-empty to write it anyway")


def _keep_existing(src: Store, out: Store, cfg: ExportConfig, version: int, *, replace_stale: bool) -> StageResult | None:
    """``out`` already holds an export: a "skipped" result when it is this one (same source version
    and config), None when a new version should replace it, else an error."""
    prev = _manifest(out)
    same = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "overwrite"}
    try:  # an export by an older version lacks newer fields: compare with their defaults filled in
        prev_cfg = ExportConfig.model_validate(prev.get("config", {})).model_dump(mode="json")
    except Exception:
        prev_cfg = prev.get("config", {})
    if (
        prev.get("source", {}).get("uri") == src.uri
        and prev["source"].get("version") == version
        and {k: v for k, v in prev_cfg.items() if k != "overwrite"} == same
    ):
        console.print(f"export: {out.uri} already holds this export of v{version}; skipped (pass --overwrite to redo)", markup=False)
        return StageResult(
            "export",
            "skipped",
            out.open().version,
            version,
            extra={
                "out": out.uri,
                "kept": out.open().count_rows(),
                "excluded": sum(prev["excluded"].values()),
                "report": str(out.state_dir / "export" / "report.html"),
                "by_resolution": _by_resolution(out.open()),
            },
        )
    if not replace_stale:
        raise ExportError(
            f"{out.uri} already holds a different export (another source, version or config); pass --overwrite to write a new version of it"
        )
    console.print(
        f"export: the dataset or export config changed since {out.uri} was written "
        f"(source v{prev.get('source', {}).get('version')} -> v{version}); writing a new version"
    )
    return None


def _write_units(
    src: Store,
    out: Store,
    version: int,
    cfg: ExportConfig,
    roles: Roles,
    keep: np.ndarray,
    ckpt: Checkpoints,
    *,
    show_progress: bool,
    concurrency: int | None,
) -> list[dict[str, Any]]:
    """Ray workers write the kept rows as shard fragments, ``cfg.rows_per_unit`` rows a unit; units
    already in ``ckpt`` are not redone. Returns every unit's record, in unit order."""
    units = [
        {"unit": i, "positions": keep[s : s + cfg.rows_per_unit].tolist()} for i, s in enumerate(range(0, len(keep), cfg.rows_per_unit))
    ]
    done, _ = execute_resumable(
        units,
        ckpt,
        _ExportWorker,
        {"src": src, "version": version, "out_uri": out.uri, "out_options": out.storage_options, "cfg": cfg, "roles": roles},
        record=json_record("unit", "fragments", "excluded", "stats"),
        job="export",
        ray_options=_ray_options(cfg),
        concurrency=concurrency,
        show_progress=show_progress,
        already="written",
    )
    return [done[u["unit"]] for u in units]


def _gather_units(records: list[dict[str, Any]], ids: list[str], reason: np.ndarray) -> tuple[list, Stats, list[str], list[str]]:
    """(fragments, the workers' summed stats, excluded ids, their reasons): the driver's exclusions
    first, then the workers', unit by unit."""
    from lance.fragment import FragmentMetadata

    frags = [FragmentMetadata.from_json(json.dumps(f)) for rec in records for f in rec["fragments"]]
    stats = Stats()
    excluded_ids, excluded_reasons = [], []
    for i in np.flatnonzero(reason != None):  # noqa: E711
        excluded_ids.append(ids[i])
        excluded_reasons.append(reason[i])
    for rec in records:
        stats = stats + Stats.from_dict(rec["stats"])
        for rid, why in rec["excluded"]:
            excluded_ids.append(rid)
            excluded_reasons.append(why)
    return frags, stats, excluded_ids, excluded_reasons


def _commit_export(out: Store, frags: list, manifest: dict[str, Any], cfg: ExportConfig):
    """One Lance commit of all fragments, the manifest in the schema metadata."""
    from lance import LanceDataset, LanceOperation

    from curation.shards import MANIFEST_KEY, SHARD_SCHEMA, shard_schema

    encoders = manifest["encoders"]
    schema = shard_schema("vae" in encoders, "text_encoder" in encoders, cfg.feature_dtype) if encoders else SHARD_SCHEMA
    schema = schema.with_metadata({MANIFEST_KEY: json.dumps(manifest)})
    return LanceDataset.commit(out.uri, LanceOperation.Overwrite(schema, frags), storage_options=out.storage_options or None)


def _ray_options(cfg: ExportConfig) -> dict[str, Any]:
    """One CPU per export worker; with encoders, a GPU each when the cluster has GPUs (or as configured)."""
    gpus = cfg.encode_gpus
    if gpus is None and (cfg.vae_path or cfg.text_encoder_path):
        import ray

        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_cpus": 1, **({"num_gpus": gpus} if gpus else {})}


def _manifest(out: Store) -> dict[str, Any]:
    from curation.shards import MANIFEST_KEY

    raw = (out.open().schema.metadata or {}).get(MANIFEST_KEY.encode())
    return json.loads(raw) if raw else {}


def _summarise(out: Store, version: int, manifest: dict, ids: list[str], reasons: list[str]) -> dict[str, Any]:
    """Write the manifest, the excluded rows with reasons and an HTML report next to the shards."""
    import pyarrow.parquet as pq

    d = out.state_dir / "export"
    d.mkdir(parents=True, exist_ok=True)
    out.write_json("export/manifest.json", manifest)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "reason": pa.array(reasons, pa.string())}), d / "excluded.parquet")
    t = out.open(version).to_table(columns=["resolution", "bucket_w", "bucket_h", "image_tokens", "caption_tokens"])
    res = Counter(t.column("resolution").to_pylist())
    cap_mean = pc.list_value_length(t.column("caption_tokens"))  # variants per row
    report = d / "report.html"
    _write_report(report, manifest, t)
    return {
        "by_resolution": {str(k): v for k, v in sorted(res.items())},
        "caption_variants_mean": round(float(pc.mean(cap_mean).as_py() or 0), 2),
        "report": str(report),
    }


def _by_resolution(ds) -> dict[str, int]:
    """Rows per resolution of the shards ``ds`` (what a skipped re-export reports, as the first did)."""
    counts = pc.value_counts(ds.to_table(columns=["resolution"]).column("resolution")).to_pylist()
    return {str(c["values"]): c["counts"] for c in sorted(counts, key=lambda c: c["values"])}


def _write_report(path: Path, manifest: dict, t: pa.Table) -> None:
    """``report.html`` next to the manifest (``curation/templates/export_report.html``): why rows
    were left out, sequence lengths and buckets in one figure, and the checks that could not run.
    An empty export draws no figure: the page says that no rows passed the rules."""
    from curation.reports import render

    ex = manifest["excluded"]
    page = render(
        "export_report.html",
        source=manifest["source"],
        exported=manifest["rows"],
        excluded_total=sum(ex.values()),
        created=manifest["created"],
        plot=_report_plot(manifest, t) if t.num_rows else None,
        excluded=list(ex.items()),
        reencoded=list(manifest.get("reencoded", {}).items()),
        checks_skipped=list(manifest["checks_skipped"]),
    )
    path.write_text(page, encoding="utf-8")


def _report_plot(manifest: dict, t: pa.Table) -> str:
    """Excluded rows by reason, sequence lengths and buckets of the exported rows: one PNG ``data:`` URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation.reports import png_data_uri

    fig, ax = plt.subplots(1, 3, figsize=(15, 3.6))
    ex = manifest["excluded"]
    ax[0].barh(list(ex.keys())[::-1] or ["none"], list(ex.values())[::-1] or [0], color="#c44")
    ax[0].set_title(f"excluded rows by reason ({sum(ex.values())})")
    seq = (
        (
            t.column("image_tokens").to_numpy()
            + np.array([max(c) if c else 0 for c in t.column("caption_tokens").to_pylist()], dtype=np.int64)
        )
        if t.num_rows
        else np.zeros(0)
    )
    ax[1].hist(seq, bins=40, color="#36c")
    ax[1].set_title("sequence length (image + longest caption tokens)")
    buckets = Counter(f"{w}x{h}" for w, h in zip(t.column("bucket_w").to_pylist(), t.column("bucket_h").to_pylist()))
    top = buckets.most_common(15)
    ax[2].barh([k for k, _ in top][::-1], [v for _, v in top][::-1], color="#3a3")
    ax[2].set_title(f"top buckets ({len(buckets)} used)")
    fig.tight_layout()
    return png_data_uri(fig, dpi=80)


@register_step("export", ExportConfig, doc="select training rows, bucket them and write a Lance training dataset", writes=frozenset())
def _export_step(ctx, cfg: ExportConfig):
    if ctx.overwrite and not cfg.overwrite:
        cfg = cfg.model_copy(update={"overwrite": True})
    return export(ctx.store, cfg, show_progress=ctx.show_progress, replace_stale=True)
