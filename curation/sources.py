"""Reading sources into sample rows: image folders with sidecars, WebDataset tars, Parquet/JSONL.

Pure Python, no Ray: ``plan_units`` lists the units of work (a slice of a folder, one tar, a
byte range of a JSONL file, row groups of a Parquet file) and ``read_unit`` turns one unit into
rows, streaming, so memory is bounded by the unit and not by the source. Every input becomes a
row: a file that cannot be used becomes a row with an ``error`` reason, never a silent skip.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from curation.schema import CAPTION_KINDS, sample_id, sha256_hex
from curation.text import MAX_CAPTION_CHARS, CaptionDecodeError, decode_caption, detect_lang

__all__ = ["IMAGE_EXTS", "ReadOptions", "plan_units", "read_unit", "inspect_image", "make_row"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TABLE_EXTS = {".jsonl", ".parquet", ".ndjson"}
_IMAGE_KEYS = ("image", "image_path", "path", "file", "file_name", "filename", "url", "image_url", "jpg", "png", "bytes", "image_bytes")
_KEY_KEYS = ("key", "id", "uid", "sample_id")


@dataclass(frozen=True)
class ReadOptions:
    """Limits that keep hostile input from hurting the job (all overridable in the ingest config)."""

    max_pixels: int = 178_956_970  # PIL's own bomb threshold (2x its warning level)
    max_file_bytes: int = 64 * 1024 * 1024  # bigger files are rows with an error, bytes not stored
    shard_size: int = 256  # images per folder unit / rows per batch
    jsonl_chunk_bytes: int = 4 * 1024 * 1024
    allow_paths_outside_source: bool = False


# --- images ---------------------------------------------------------------------------------


def inspect_image(data: bytes, max_pixels: int) -> tuple[int | None, int | None, str | None, str | None]:
    """(width, height, format, error) of encoded bytes, checking the pixel count from the header
    *before* decoding (a decompression bomb never allocates), then decoding fully to catch
    truncated and corrupt files. Errors are ``reason: detail``."""
    if not data:
        return None, None, None, "empty_file: zero bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return None, None, None, f"decompression_bomb: {e}"
    except Image.DecompressionBombWarning as e:
        return None, None, None, f"decompression_bomb: {e}"
    except Exception as e:  # PIL raises many kinds for garbage
        return None, None, None, f"not_an_image: {type(e).__name__}: {str(e)[:200]}"
    with im:
        w, h, fmt = im.size[0], im.size[1], im.format
        if w * h > max_pixels:
            return w, h, fmt, f"decompression_bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}"
        if w < 1 or h < 1:
            return w, h, fmt, f"corrupt: zero size {w}x{h}"
        try:
            im.load()  # first frame only, for animations
        except OSError as e:
            reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
            return w, h, fmt, f"{reason}: {str(e)[:200]}"
        except Exception as e:
            return w, h, fmt, f"corrupt: {type(e).__name__}: {str(e)[:200]}"
    return w, h, fmt, None


def _caption(text: str, kind: str, lang: str | None = None) -> dict[str, str]:
    return {"text": text, "kind": kind if kind in CAPTION_KINDS else "short", "lang": lang or detect_lang(text)}


def make_row(
    source: str,
    key: str,
    data: bytes | None,
    captions: list[dict[str, str]],
    opts: ReadOptions,
    *,
    uri: str | None = None,
    error: str | None = None,
    stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One samples row. The first error wins (an image error is reported before a caption one)."""
    stats = stats if stats is not None else {}
    w = h = fmt = None
    img_err = None
    sha = None
    if data is not None:
        if len(data) > opts.max_file_bytes:
            img_err = f"file_too_large: {len(data)} bytes > {opts.max_file_bytes}"
            sha = sha256_hex(data)
            data = None
        else:
            sha = sha256_hex(data)
            w, h, fmt, img_err = inspect_image(data, opts.max_pixels)
    elif uri is None and error is None:
        img_err = "missing_image: no image file for this key"
    clean: list[dict[str, str]] = []
    seen = set()
    for c in captions:
        text = (c.get("text") or "").strip()
        if not text:
            continue
        if len(text) > MAX_CAPTION_CHARS:
            text = text[:MAX_CAPTION_CHARS]
            stats["caption_truncated"] = stats.get("caption_truncated", 0) + 1
        ident = (text, c.get("kind"))
        if ident in seen:
            continue
        seen.add(ident)
        clean.append(_caption(text, c.get("kind") or "short", c.get("lang")))
    err = img_err or error
    if err:
        reason = err.split(":", 1)[0]
        stats[f"error_{reason}"] = stats.get(f"error_{reason}", 0) + 1
    return {
        "id": sample_id(source, key),
        "image": data,
        "image_uri": uri,
        "image_sha256": sha,
        "source": source,
        "source_key": key,
        "captions": clean,
        "width": w,
        "height": h,
        "format": fmt,
        "error": err,
    }


# --- captions from sidecars and records --------------------------------------------------------


def captions_from_json(obj: Any, default_kind: str) -> list[dict[str, str]]:
    """Captions from a JSON sidecar or a table record: ``captions`` (strings or {text, kind, lang}),
    ``caption``/``text``/``alt``, ``caption_en``/``caption_zh``/``zh``, and ``tags``."""
    caps: list[dict[str, str]] = []
    if not isinstance(obj, dict):
        return caps
    for c in obj.get("captions") or []:
        if isinstance(c, str):
            caps.append({"text": c, "kind": default_kind})
        elif isinstance(c, dict) and isinstance(c.get("text"), str):
            caps.append({"text": c["text"], "kind": c.get("kind") or default_kind, "lang": c.get("lang")})
    for k, kind in (
        ("caption", default_kind),
        ("text", default_kind),
        ("alt", "alt"),
        ("caption_en", default_kind),
        ("caption_zh", default_kind),
        ("zh", default_kind),
        ("long_caption", "long"),
    ):
        v = obj.get(k)
        if isinstance(v, str):
            caps.append({"text": v, "kind": kind})
    tags = obj.get("tags")
    if isinstance(tags, list) and tags:
        caps.append({"text": ", ".join(str(t) for t in tags), "kind": "tags"})
    elif isinstance(tags, str) and tags:
        caps.append({"text": tags, "kind": "tags"})
    return caps


def _sidecar_captions(name: str, data: bytes, default_kind: str) -> list[dict[str, str]]:
    """Captions from one sidecar file (raises CaptionDecodeError / ValueError with a reason)."""
    text = decode_caption(data)
    if name.endswith(".json"):
        try:
            obj = json.loads(text) if text else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"caption_json_invalid: {e.msg} at line {e.lineno}") from None
        return captions_from_json(obj, default_kind)
    # name.txt -> default kind; name.<kind>.txt -> that kind
    parts = name.rsplit(".", 2)
    kind = parts[-2] if len(parts) == 3 and parts[-2] in CAPTION_KINDS else default_kind
    return [{"text": text, "kind": kind}]


def _read_sidecars(sidecars: list[tuple[str, bytes]], default_kind: str) -> tuple[list[dict], str | None]:
    caps: list[dict[str, str]] = []
    error = None
    for name, data in sidecars:
        try:
            caps.extend(_sidecar_captions(name, data, default_kind))
        except CaptionDecodeError as e:
            error = error or f"caption_encoding: {name}: {e}"
        except ValueError as e:
            error = error or (str(e) if ":" in str(e) else f"caption_invalid: {e}")
    return caps, error


# --- planning ----------------------------------------------------------------------------------


def _source_name(path: Path) -> str:
    return str(path.resolve())


def plan_units(sources: list[str], opts: ReadOptions) -> list[dict[str, Any]]:
    """Units of work over all sources, in a deterministic order (so ids and row order are stable).

    A directory is walked: tars and table files (.jsonl/.parquet) are their own units; image files
    form folder units of ``shard_size`` images, except under a directory that holds a table file
    (those images are the table's, referenced by path)."""
    units: list[dict[str, Any]] = []
    for src in sources:
        p = Path(src)
        if "://" in src:
            raise ValueError(f"{src}: remote sources are read through Parquet/JSONL listing their URIs")
        if not p.exists():
            raise FileNotFoundError(f"source not found: {src}")
        if p.is_file():
            units.extend(_file_units(p, p.parent, opts))
            continue
        root = p.resolve()
        images: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            filenames.sort()
            d = Path(dirpath)
            if any(Path(f).suffix.lower() in TABLE_EXTS for f in filenames):
                dirnames[:] = []  # this subtree's images belong to its table files
                for f in filenames:
                    if Path(f).suffix.lower() in TABLE_EXTS or f.endswith(".tar"):
                        units.extend(_file_units(d / f, root, opts))
                continue
            for f in filenames:
                fp = d / f
                if f.endswith(".tar"):
                    units.extend(_file_units(fp, root, opts))
                elif fp.suffix.lower() in IMAGE_EXTS:
                    images.append(str(fp.relative_to(root)))
        for i in range(0, len(images), opts.shard_size):
            units.append({"kind": "folder", "source": _source_name(root), "files": images[i : i + opts.shard_size]})
    for i, u in enumerate(units):
        u["unit"] = i
    return units


def _file_units(p: Path, root: Path, opts: ReadOptions) -> list[dict[str, Any]]:
    ext = p.suffix.lower()
    src = _source_name(p)
    if p.name.endswith(".tar"):
        return [{"kind": "tar", "source": src}]
    if ext in (".jsonl", ".ndjson"):
        size = p.stat().st_size
        step = max(opts.jsonl_chunk_bytes, 1)
        return [{"kind": "jsonl", "source": src, "start": s, "end": min(s + step, size)} for s in range(0, max(size, 1), step)]
    if ext == ".parquet":
        import pyarrow.parquet as pq

        n = pq.ParquetFile(p).num_row_groups
        return [{"kind": "parquet", "source": src, "row_groups": [g]} for g in range(max(n, 1))]
    if ext in IMAGE_EXTS:
        return [{"kind": "folder", "source": str(p.parent.resolve()), "files": [p.name]}]
    raise ValueError(f"{p}: unsupported source file type {ext!r} (folders, .tar, .jsonl, .parquet, images)")


# --- reading one unit ------------------------------------------------------------------------


def read_unit(unit: dict[str, Any], opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Rows of one unit, streamed."""
    kind = unit["kind"]
    if kind == "folder":
        yield from _read_folder(unit, opts, stats)
    elif kind == "tar":
        yield from _read_tar(unit, opts, stats)
    elif kind == "jsonl":
        yield from _read_jsonl(unit, opts, stats)
    elif kind == "parquet":
        yield from _read_parquet(unit, opts, stats)
    else:
        raise ValueError(f"unknown unit kind {kind!r}")


def _read_folder(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    root = Path(unit["source"])
    for rel in unit["files"]:
        fp = root / rel
        stem = fp.name[: -len(fp.suffix)]
        sidecars = []
        for cand in sorted(fp.parent.glob(f"{_glob_escape(stem)}.*")):
            if cand != fp and (cand.suffix in (".txt", ".json")) and cand.is_file():
                # <stem>.txt, <stem>.json, <stem>.<kind>.txt; not <stem>.other.jpg
                middle = cand.name[len(stem) + 1 : -len(cand.suffix)]
                if middle == "" or middle in CAPTION_KINDS:
                    sidecars.append((cand.name, cand.read_bytes()))
        caps, cerr = _read_sidecars(sidecars, "short")
        try:
            data = fp.read_bytes()
        except OSError as e:
            yield make_row(unit["source"], rel, None, caps, opts, error=f"unreadable: {e}", stats=stats)
            continue
        yield make_row(unit["source"], rel, data, caps, opts, error=cerr, stats=stats)


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


def _wds_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _read_tar(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    src = unit["source"]
    seen: dict[str, int] = {}

    def emit(key: str, files: dict[str, bytes], dup_ext: bool) -> dict:
        n = seen.get(key, 0)
        seen[key] = n + 1
        row_key = key if n == 0 else f"{key}#{n + 1}"
        img_ext = next((e for e in files if "." + e.split(".")[-1] in IMAGE_EXTS), None)
        sidecars = [(f"{key}.{e}", files[e]) for e in sorted(files) if e.split(".")[-1] in ("txt", "json")]
        caps, cerr = _read_sidecars(sidecars, "alt")
        error = None
        if n > 0 or dup_ext:
            error = f"duplicate_key: key {key!r} appears more than once in the tar"
        return make_row(src, row_key, files.get(img_ext) if img_ext else None, caps, opts, error=error or cerr, stats=stats)

    try:
        with tarfile.open(src, mode="r|*") as tf:
            cur_key, files, dup_ext = None, {}, False
            for m in tf:
                if not m.isfile():
                    stats["tar_member_skipped"] = stats.get("tar_member_skipped", 0) + 1
                    continue
                key, ext = _wds_key(m.name)
                if key != cur_key and cur_key is not None:
                    yield emit(cur_key, files, dup_ext)
                    files, dup_ext = {}, False
                cur_key = key
                f = tf.extractfile(m)
                data = f.read(opts.max_file_bytes + 1) if f else b""
                if ext in files:
                    dup_ext = True
                files.setdefault(ext, data)
            if cur_key is not None:
                yield emit(cur_key, files, dup_ext)
    except (tarfile.TarError, OSError, EOFError) as e:
        # a broken tar: rows already read are kept; the break itself is a row with a reason
        yield make_row(src, f"<tar-error-after-{sum(seen.values())}-samples>", None, [], opts, error=f"corrupt_tar: {e}", stats=stats)


def _resolve_image(value: Any, base: Path, opts: ReadOptions) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, uri, error) from a table cell: bytes, {bytes|path} structs, a path or a URI."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None, None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None, None
    if not isinstance(value, str) or not value:
        return None, None, "missing_image: no image path or bytes in the record"
    if "://" in value and not value.startswith("file://"):
        return None, value, None
    path = Path(value.removeprefix("file://"))
    full = (path if path.is_absolute() else base / path).resolve()
    if not opts.allow_paths_outside_source and not full.is_relative_to(base.resolve()):
        return None, None, f"path_outside_source: {value!r} resolves outside {base}"
    try:
        with open(full, "rb") as f:
            return f.read(opts.max_file_bytes + 1), None, None
    except OSError as e:
        return None, None, f"unreadable: {value!r}: {e.strerror or e}"


def _record_row(rec: Any, source: str, key: str, base: Path, opts: ReadOptions, stats: dict[str, int]) -> dict:
    if not isinstance(rec, dict):
        return make_row(source, key, None, [], opts, error="bad_record: not an object", stats=stats)
    for k in _KEY_KEYS:
        if isinstance(rec.get(k), (str, int)) and str(rec[k]):
            key = f"{key}:{rec[k]}"
            break
    img = next((rec[k] for k in _IMAGE_KEYS if rec.get(k) is not None), None)
    data, uri, err = _resolve_image(img, base, opts)
    if uri:
        stats["remote_uri"] = stats.get("remote_uri", 0) + 1
    return make_row(source, key, data, captions_from_json(rec, "short"), opts, uri=uri, error=err, stats=stats)


def _read_jsonl(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    src, start, end = unit["source"], unit["start"], unit["end"]
    base = Path(src).parent
    with open(src, "rb") as f:
        f.seek(start)
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the partial line belongs to the previous unit
        while f.tell() < end or (start == end == 0):
            pos = f.tell()
            line = f.readline()
            if not line:
                break
            if not line.strip():
                continue
            key = f"@{pos}"
            try:
                rec = json.loads(decode_caption(line))
            except (CaptionDecodeError, json.JSONDecodeError) as e:
                yield make_row(src, key, None, [], opts, error=f"bad_record: {str(e)[:200]}", stats=stats)
                continue
            yield _record_row(rec, src, key, base, opts, stats)


def _read_parquet(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    src = unit["source"]
    pf = pq.ParquetFile(src)
    offset = sum(pf.metadata.row_group(g).num_rows for g in range(unit["row_groups"][0]))
    for batch in pf.iter_batches(batch_size=opts.shard_size, row_groups=unit["row_groups"]):
        for rec in batch.to_pylist():
            yield _record_row(rec, src, f"#{offset}", Path(src).parent, opts, stats)
            offset += 1
