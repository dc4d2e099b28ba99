"""Reading sources into sample rows: image folders with sidecars, WebDataset tars, Parquet/JSONL.

Pure Python, no Ray: ``plan_units`` lists the units of work (a slice of a folder, one tar, a
byte range of a JSONL file, row groups of a Parquet file) and ``read_unit`` turns one unit into
rows, streaming, so memory is bounded by the unit and not by the source. Every input becomes a
row: a file that cannot be used becomes a row with an ``error`` reason, never a silent skip, and
never a failed job. What is not a sample (a caption without an image, a file of another type, a
symlinked folder) is a counted skip (``skipped_*`` in the stats). Table columns are found by the
mapping in ``ReadOptions`` or by their usual names in any case; the other fields go to ``meta``.

Poison rules, the same for every source kind (docs/ingest.md):

- a symlink (on disk, or a link member of a tar) or a table path that resolves outside its source
  is refused, ``path_outside_source``, and its bytes are never read;
- a record or sidecar field of the wrong type, a duplicated JSON field, NUL or an unpaired surrogate
  in a caption, a name that is not valid UTF-8: an error row (``bad_record``, ``caption_invalid``,
  ``duplicate_key``, ``caption_encoding``, ``bad_name``), the other rows of that input stored;
- errors carry no object addresses, so two ingests of the same input store the same texts.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import stat
import tarfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from curation.errors import UserError
from curation.schema import CAPTION_KINDS, sample_id, sha256_hex
from curation.text import (
    MAX_CAPTION_CHARS,
    CaptionDecodeError,
    decode_caption,
    detect_lang,
    escape_surrogates,
    has_surrogates,
)

__all__ = ["IMAGE_EXTS", "ReadOptions", "plan_units", "read_unit", "inspect_image", "make_row", "stable_message"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TABLE_EXTS = {".jsonl", ".parquet", ".ndjson"}
SIDECAR_EXTS = (".txt", ".json")  # matched in any case, like image extensions (cameras write .TXT)
_IMAGE_KEYS = ("image", "image_path", "path", "file", "file_name", "filename", "jpg", "png", "bytes", "image_bytes")
_URL_KEYS = ("url", "image_url", "img_url")
_KEY_KEYS = ("key", "id", "uid", "sample_id")
_CAPTION_KEYS = ("captions", "caption", "text", "alt", "caption_en", "caption_zh", "zh", "long_caption", "tags")
MAX_META_CHARS = 65_536  # a record's extra fields above this (as JSON) are not kept, counted


@dataclass(frozen=True)
class ReadOptions:
    """Limits that keep hostile input from hurting the job (all overridable in the ingest config)."""

    max_pixels: int = 178_956_970  # PIL's own bomb threshold (2x its warning level)
    max_file_bytes: int = 64 * 1024 * 1024  # bigger files are rows with an error, bytes not stored
    max_caption_chars: int = MAX_CAPTION_CHARS  # longer captions are truncated, counted
    shard_size: int = 256  # images per folder unit / rows per batch
    jsonl_chunk_bytes: int = 4 * 1024 * 1024
    allow_paths_outside_source: bool = False
    image_column: str | None = None  # a table column holding image paths or bytes (else the usual names)
    caption_column: str | None = None  # the one column holding captions (else the usual names)
    url_column: str | None = None  # a column of remote URLs, used when the image column is empty


class SourceError(UserError, ValueError):
    """A named source that cannot be read at all (remote, not UTF-8, an unsupported file type)."""


class SourceNotFound(UserError, FileNotFoundError):
    """A named source that does not exist; relative paths are read from the current folder."""


class ColumnMappingError(UserError, ValueError):
    """A mapped column (``--image-column`` ...) that a table does not have: refused while planning,
    before any worker starts, with the columns the table does have, so a typo costs no cluster."""


_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def stable_message(msg: str, limit: int = 500) -> str:
    """An error text fit to store: no object addresses (PIL says ``<_io.BytesIO object at 0x7f..>``)
    and no unpaired surrogates, so two ingests of the same input store byte-identical errors; no
    trailing newline either (Arrow's texts end with one, which breaks one-line reports)."""
    return escape_surrogates(_ADDRESS.sub("the bytes", msg).strip())[:limit].rstrip()


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- images ---------------------------------------------------------------------------------

_PIL_LIMIT = threading.Lock()


@contextmanager
def _pil_pixel_limit(max_pixels: int):
    """PIL checks pixel counts against the process-global ``Image.MAX_IMAGE_PIXELS`` inside
    ``open()`` (and ``load()`` for GIF frames), before our own check: a ``max_pixels`` above its
    89,478,485 never took effect. It is set to ours while one image is read (a lock: threads of one
    process read one image at a time) and restored after, so other code in the worker keeps PIL's."""
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation as profiling reads it (engines/profiling/decode.py): 1 when absent,
    unreadable or out of range, so ingest and profile agree on width and height."""
    try:
        o = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # broken EXIF must not lose the picture
        return 1
    return o if 1 <= o <= 8 else 1


def inspect_image(data: bytes, max_pixels: int) -> tuple[int | None, int | None, str | None, str | None]:
    """(width, height, format, error) of encoded bytes, checking the pixel count from the header
    *before* decoding (a decompression bomb never allocates), then decoding fully to catch
    truncated and corrupt files. Width and height are as displayed (EXIF orientation applied).
    Errors are ``reason: detail``."""
    if not data:
        return None, None, None, "empty_file: zero bytes"
    with _pil_pixel_limit(max_pixels):
        try:
            im = _open_header(data, max_pixels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return None, None, None, f"decompression_bomb: {e}"
        except Exception as e:  # PIL raises many kinds for garbage
            return None, None, None, f"not_an_image: {type(e).__name__}: {str(e)[:200]}"
        with im:
            w, h, fmt = im.size[0], im.size[1], im.format
            ow, oh = (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
            if w * h > max_pixels:
                return ow, oh, fmt, f"decompression_bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}"
            if w < 1 or h < 1:
                return ow, oh, fmt, f"corrupt: zero size {w}x{h}"
            return ow, oh, fmt, _load_error(im)


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only, no pixel allocated) with PIL's own pixel cap lifted, so that
    our check reports the size read from the header and ``max_pixels`` itself: PIL's error fires
    at twice its limit, quoting the doubled number, and loses width and height. The cap is back
    to ``max_pixels`` for ``load`` (the caller holds the ``_pil_pixel_limit`` lock)."""
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _load_error(im: Image.Image) -> str | None:
    """Decode the first frame (animations: the rest are not training data); a failure's reason."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression_bomb: {e}"
    except OSError as e:
        reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
        return f"{reason}: {str(e)[:200]}"
    except Exception as e:
        return f"corrupt: {type(e).__name__}: {str(e)[:200]}"
    return None


def _caption(text: str, kind: str, lang: str | None = None) -> dict[str, str]:
    return {"text": text, "kind": kind, "lang": lang or detect_lang(text)}


def _image_fields(data: bytes, opts: ReadOptions) -> tuple[bytes | None, str, int | None, int | None, str | None, str | None]:
    """(bytes to store, sha256, width, height, format, error): an oversized file's bytes are dropped."""
    sha = sha256_hex(data)
    if len(data) > opts.max_file_bytes:
        return None, sha, None, None, None, f"file_too_large: {len(data)} bytes > {opts.max_file_bytes}"
    w, h, fmt, err = inspect_image(data, opts.max_pixels)
    return data, sha, w, h, fmt, err


def _storable_names(names: dict[str, str | None]) -> tuple[dict[str, str | None], str | None]:
    """Names (source, key, uri) with unpaired surrogates escaped, and the ``bad_name`` error if any
    had them: a file name that is not UTF-8 on disk, or a "\\udc80" escape in a record's key."""
    err = None
    out = dict(names)
    for field, v in names.items():
        if v is not None and has_surrogates(v):
            out[field] = escape_surrogates(v)
            err = err or f"bad_name: the {field} is not valid UTF-8 (stored with the bad bytes escaped)"
    return out, err


def _clean_captions(captions: list[dict], opts: ReadOptions, stats: dict[str, int]) -> tuple[list[dict[str, str]], str | None]:
    """Stripped, truncated to ``max_caption_chars``, deduplicated captions, and the first caption
    error: a caption holding NUL or an unpaired surrogate is not stored, whatever source it came from."""
    clean: list[dict[str, str]] = []
    seen, err = set(), None
    for c in captions:
        text = (c.get("text") or "").strip()
        lang = c.get("lang") if isinstance(c.get("lang"), str) else None
        if "\x00" in text or has_surrogates(text) or (lang and has_surrogates(lang)):
            what = "NUL character" if "\x00" in text else "unpaired surrogate"
            err = err or f"caption_encoding: {what} in caption"
            continue
        if not text:
            continue
        if len(text) > opts.max_caption_chars:
            text = text[: opts.max_caption_chars]
            stats["caption_truncated"] = stats.get("caption_truncated", 0) + 1
        kind = c.get("kind") if c.get("kind") in CAPTION_KINDS else "short"
        if (text, kind) not in seen:
            seen.add((text, kind))
            clean.append(_caption(text, kind, lang))
    return clean, err


def _json_safe(v: Any) -> Any:
    """A table cell as JSON can hold it: NaN as null, bytes as their length (the image column is
    stored already; a second copy in ``meta`` would double the dataset), strings storable."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, str):
        return escape_surrogates(v)
    if isinstance(v, dict):
        return {escape_surrogates(str(k)): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if v is None or isinstance(v, (bool, int, float)):
        return v
    return str(v)  # dates, decimals: their text, deterministic


def _meta_json(meta: dict[str, Any] | None, stats: dict[str, int]) -> str | None:
    """Extra fields as one JSON string with sorted keys (two ingests store the same bytes); too
    large a blob is not kept but counted, so one bloated record cannot grow every scan."""
    if not meta:
        return None
    text = json.dumps(_json_safe(meta), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_META_CHARS:
        stats["meta_too_large"] = stats.get("meta_too_large", 0) + 1
        return None
    return text


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
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One samples row; ``meta`` holds a record's fields that are not image, caption or key. The first error wins: image, then the caller's (path, sidecar, record),
    then a bad name, then a bad caption. Every string is made storable (no surrogates)."""
    stats = stats if stats is not None else {}
    names, name_err = _storable_names({"source": source, "key": key, "uri": uri})
    w = h = fmt = sha = img_err = None
    if data is not None:
        data, sha, w, h, fmt, img_err = _image_fields(data, opts)
    elif uri is None and error is None:
        img_err = "missing_image: no image file for this key"
    clean, cap_err = _clean_captions(captions, opts, stats)
    err = img_err or error or name_err or cap_err
    if err:
        err = stable_message(err)
        reason = err.split(":", 1)[0]
        stats[f"error_{reason}"] = stats.get(f"error_{reason}", 0) + 1
    return {
        "id": sample_id(names["source"], names["key"]),
        "meta": _meta_json(meta, stats),
        "image": data,
        "image_uri": names["uri"],
        "image_sha256": sha,
        "source": names["source"],
        "source_key": names["key"],
        "captions": clean,
        "width": w,
        "height": h,
        "format": fmt,
        "error": err,
    }


# --- captions from sidecars and records --------------------------------------------------------


class BadField(ValueError):
    """A caption field of the wrong type: the record or sidecar becomes an error row (a caption
    silently dropped, or a crash of the whole unit, would both lose data)."""


class DuplicateField(ValueError):
    """A JSON object naming a field twice: which value was meant is a guess, so neither is used."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise DuplicateField(f"field {k!r} appears more than once")
        obj[k] = v
    return obj


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate fields (Python keeps the last one, silently)."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


_SCALAR_FIELDS = (
    ("caption", None),
    ("text", None),
    ("alt", "alt"),
    ("caption_en", None),
    ("caption_zh", None),
    ("zh", None),
    ("long_caption", "long"),
)


def _listed_caption(i: int, c: Any, default_kind: str) -> dict[str, str] | None:
    if isinstance(c, str):
        return {"text": c, "kind": default_kind}
    if isinstance(c, dict) and c.get("kind") and isinstance(c["kind"], str) and c["kind"] not in CAPTION_KINDS:
        raise BadField(f"captions[{i}].kind {c['kind']!r} is not one of {', '.join(CAPTION_KINDS)}")
    if isinstance(c, dict) and all(c.get(f) is None or isinstance(c.get(f), str) for f in ("text", "kind", "lang")):
        return None if c.get("text") is None else {"text": c["text"], "kind": c.get("kind") or default_kind, "lang": c.get("lang")}
    if isinstance(c, dict):
        bad = next(f for f in ("text", "kind", "lang") if not isinstance(c.get(f), (str, type(None))))
        raise BadField(f"captions[{i}].{bad} must be a string, got {_tname(c.get(bad))}")
    raise BadField(f"captions[{i}] must be a string or {{text, kind, lang}}, got {_tname(c)}")


def _tags_caption(tags: Any) -> list[dict[str, str]]:
    if isinstance(tags, list) and tags:
        return [{"text": ", ".join(str(t) for t in tags), "kind": "tags"}]
    if isinstance(tags, str) and tags:
        return [{"text": tags, "kind": "tags"}]
    if tags is None or tags == [] or tags == "":
        return []
    raise BadField(f"field 'tags' must be a list or a string, got {_tname(tags)}")


def captions_from_json(obj: Any, default_kind: str) -> list[dict[str, str]]:
    """Captions from a JSON sidecar or a table record: ``captions`` (strings or {text, kind, lang}),
    ``caption``/``text``/``alt``, ``caption_en``/``caption_zh``/``zh``, and ``tags``. A caption
    field of the wrong type raises ``BadField``; other fields are not ours to judge."""
    if obj is None:
        return []
    if not isinstance(obj, dict):
        raise BadField(f"not a JSON object but {_tname(obj)}")
    listed = obj.get("captions")
    if listed is not None and not isinstance(listed, list):
        raise BadField(f"field 'captions' must be a list, got {_tname(listed)}")
    parsed = (_listed_caption(i, c, default_kind) for i, c in enumerate(listed or []))
    caps = [c for c in parsed if c is not None]
    for k, kind in _SCALAR_FIELDS:
        v = obj.get(k)
        if isinstance(v, str):
            caps.append({"text": v, "kind": kind or default_kind})
        elif v is not None:
            raise BadField(f"field {k!r} must be a string, got {_tname(v)}")
    return caps + _tags_caption(obj.get("tags"))


def _sidecar_captions(name: str, data: bytes, default_kind: str) -> list[dict[str, str]]:
    """Captions from one sidecar file (raises CaptionDecodeError / ValueError with a reason)."""
    text = decode_caption(data)
    if name.lower().endswith(".json"):
        try:
            obj = parse_json(text) if text else {}
        except DuplicateField as e:
            raise ValueError(f"duplicate_key: {name}: {e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"caption_json_invalid: {e.msg} at line {e.lineno}") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting 100,000 deep
            raise ValueError(f"caption_json_invalid: {name}: {str(e)[:200]}") from None
        try:
            return captions_from_json(obj, default_kind)
        except BadField as e:
            raise ValueError(f"caption_invalid: {name}: {e}") from None
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


# --- local files: one rule for symlinks and paths, every source kind -------------------------


def _outside_error(path: Path, shown: str, root: Path, opts: ReadOptions) -> str | None:
    """``path_outside_source`` when ``path``, symlinks resolved, leaves ``root`` (a folder source,
    or the folder of a table file): the same refusal and text for a symlinked image or sidecar, a
    table's path, and a tar's link member, so ``x.jpg -> /etc/passwd`` never stores those bytes."""
    try:
        full = path.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL in the name
        return f"unreadable: {shown!r}: {e}"
    if opts.allow_paths_outside_source or full.is_relative_to(root.resolve()):
        return None
    return f"path_outside_source: {shown!r} resolves outside {root}"


def _read_local(path: Path, shown: str, root: Path, opts: ReadOptions, what: str = "") -> tuple[bytes | None, str | None]:
    """(bytes, error) of a regular file inside ``root``, at most ``max_file_bytes + 1`` of them
    (a file that grows while read is still seen as too large; a FIFO or device would block or
    never end). A file above the limit is not read: its error gives its real size from ``stat``
    (the bounded read's length would report the limit + 1)."""
    err = _outside_error(path, shown, root, opts)
    if err:
        return None, err
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, f"unreadable: {shown!r} is not a regular file"
        if st.st_size > opts.max_file_bytes:
            return None, f"file_too_large: {what}{st.st_size} bytes > {opts.max_file_bytes}"
        with open(path, "rb") as f:
            return f.read(opts.max_file_bytes + 1), None
    except (OSError, ValueError) as e:
        return None, f"unreadable: {shown!r}: {getattr(e, 'strerror', None) or e}"


# --- planning ----------------------------------------------------------------------------------


def _source_name(path: Path) -> str:
    return str(path.resolve())


_RAW_NAME = "\x00raw:"


def _unit_name(rel: str) -> str:
    """A file name as a unit carries it. Units travel through Arrow (a worker reads its unit as a table) and JSON
    (checkpoints), which need valid Unicode; a name of non-UTF-8 bytes goes as the hex of its
    bytes behind a prefix no POSIX file name can hold (NUL)."""
    return _RAW_NAME + os.fsencode(rel).hex() if has_surrogates(rel) else rel


def _fs_name(name: str) -> str:
    return os.fsdecode(bytes.fromhex(name[len(_RAW_NAME) :])) if name.startswith(_RAW_NAME) else name


def plan_units(sources: list[str], opts: ReadOptions) -> list[dict[str, Any]]:
    """Units of work over all sources, in a deterministic order (so ids and row order are stable).

    A directory is walked: tars and table files (.jsonl/.parquet) are their own units; image files
    form folder units of ``shard_size`` images, except those a table file of the tree lists by
    path (they are that table's rows); a ``NNNNN.tar`` with its ``NNNNN.parquet`` is one
    img2dataset shard (the Parquet is metadata, joined by key). A source named twice, or inside a
    folder that is also a source, is read once. What is no sample (captions without an image,
    other file types, symlinked folders: never followed) is counted by a ``skipped`` unit."""
    units: list[dict[str, Any]] = []
    paths = [_checked_source(src) for src in sources]
    distinct = _distinct_sources(paths)
    for p in distinct:
        if p.is_file():
            units.extend(_file_units(p, opts))  # named explicitly: a symlink is trusted
        else:
            units.extend(_folder_units(p, opts))
    if len(distinct) < len(paths):
        units.append(
            {"kind": "skipped", "source": _source_name(distinct[0]), "counts": json.dumps({"repeated_source": len(paths) - len(distinct)})}
        )
    for i, u in enumerate(units):
        u["unit"] = i
    return units


def _checked_source(src: str) -> Path:
    """The resolved path of one named source, or the one-line reason it cannot be read."""
    p = Path(src)
    if "://" in src:
        raise SourceError(f"{src}: remote sources are read through Parquet/JSONL listing their URIs")
    if not p.exists():
        where = "" if p.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        raise SourceNotFound(f"source not found: {src}{where}")
    if has_surrogates(str(p.resolve())):
        raise SourceError(f"{escape_surrogates(src)}: the source path is not valid UTF-8; rename it")
    return p.resolve()


def _distinct_sources(paths: list[Path]) -> list[Path]:
    """Each input read once: a path named twice (a shell glob, a folder plus a tar in it) would
    store every sample twice under one row id. A path inside a folder source is dropped, not the
    folder, so the ids are those of the folder ingested alone."""
    folders = {p for p in paths if p.is_dir()}
    out: dict[Path, None] = {}  # ordered, each once
    for p in paths:
        if not any(f != p and p.is_relative_to(f) for f in folders):
            out.setdefault(p)
    return list(out)


def _walk(root: Path) -> tuple[list[tuple[Path, list[str], int]], int]:
    """(folder, sorted file names, symlinked sub-folders) for every folder of the tree, top down,
    and the number of Lance datasets found in it; symlinked folders are listed by ``os.walk`` but
    never entered, nor is a Lance dataset (a dataset made inside the pile, ``pile/ds.lance``: its
    data files and manifests are no samples)."""
    tree, datasets = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        lance_dirs = {n for n in dirnames if (d / n / "_versions").is_dir() and not (d / n).is_symlink()}
        datasets += len(lance_dirs)
        dirnames[:] = sorted(n for n in dirnames if n not in lance_dirs)
        tree.append((d, sorted(filenames), sum((d / n).is_symlink() for n in dirnames)))
    return tree, datasets


def _folder_units(root: Path, opts: ReadOptions) -> list[dict[str, Any]]:
    """Units of one folder tree. Every folder is walked, tables or not: an image is a folder row
    unless a table of the tree lists it (then it is that table's row), so a stray ``notes.jsonl``
    can no longer hide the rest of the tree."""
    units: list[dict[str, Any]] = []
    images: list[str] = []
    skipped: Counter = Counter()
    tree, datasets = _walk(root)
    skipped["lance_dataset"] += datasets
    listed = _listed_files(tree, opts)
    coco, coco_files = _coco_captions(tree, skipped)
    for d, filenames, symlinked in tree:
        skipped["symlinked_dir"] += symlinked
        pairs = _img2dataset_pairs(filenames)
        units.extend({"kind": "img2dataset", "source": _source_name(d / t), "meta": _source_name(d / m)} for t, m in pairs)
        paired = {f for pair in pairs for f in pair}
        tables = [f for f in filenames if f not in paired and (Path(f).suffix.lower() in TABLE_EXTS or f.endswith(".tar"))]
        units.extend(u for f in tables for u in _file_units(d / f, opts))
        found = [f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTS]
        own = [f for f in found if str(d / f) not in listed]
        images.extend(_unit_name(str((d / f).relative_to(root))) for f in own)
        ignored = paired | set(tables) | {t[:-4] + "_stats.json" for t, _ in pairs}  # img2dataset's stats: not a caption
        ignored |= {f for f in filenames if d / f in coco_files}
        skipped.update(_unclaimed([f for f in filenames if f not in ignored], own, [f for f in found if f not in own]))
    for i in range(0, len(images), opts.shard_size):
        unit = {"kind": "folder", "source": _source_name(root), "files": images[i : i + opts.shard_size]}
        if coco and (caps := {f: c for f in unit["files"] if (c := coco.get(_fs_name(f).rsplit("/", 1)[-1]))}):
            unit["coco"] = json.dumps(caps)  # this unit's share of the COCO captions, by file
        units.append(unit)
    if +skipped:
        units.append({"kind": "skipped", "source": _source_name(root), "counts": json.dumps(dict(sorted((+skipped).items())))})
    return units


def _coco_captions(tree: list[tuple[Path, list[str], int]], skipped: Counter) -> tuple[dict[str, list[str]], set[Path]]:
    """Captions by image file name from the tree's COCO caption files (``captions_train2017.json``:
    ``images`` with ``file_name``, ``annotations`` with ``image_id`` and ``caption``), and the
    COCO files found. Why: COCO's layout (and Flickr30k's and others' in it) keeps the captions
    of a folder of images in one JSON file, which a folder ingest counted as a caption without
    an image and left every image uncaptioned. A COCO file without captions (``instances_*``:
    object annotations, read by ``curate pairs synth --annotations``) is counted as such. Files
    above ``MAX_LISTING_SCAN_BYTES`` are not read on the driver."""
    out: dict[str, list[str]] = {}
    found: set[Path] = set()
    for d, filenames, _ in tree:
        for f in filenames:
            p = d / f
            if not f.lower().endswith(".json") or has_surrogates(f) or not p.is_file() or p.stat().st_size > MAX_LISTING_SCAN_BYTES:
                continue
            with open(p, "rb") as fh:
                if b'"images"' not in fh.read(1 << 16) and b'"annotations"' not in fh.read(1 << 16):
                    continue  # a caption sidecar or another JSON: not COCO (its first 128 KiB name neither key)
            try:
                obj = json.loads(p.read_bytes())
                names = {im["id"]: str(im["file_name"]).rsplit("/", 1)[-1] for im in obj["images"]}
                anns = obj["annotations"]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            found.add(p)
            caps = [(a.get("image_id"), a.get("caption")) for a in anns if isinstance(a, dict)]
            if not any(isinstance(c, str) for _, c in caps):
                skipped["coco_annotations_without_captions"] += 1
                continue
            for i, c in caps:
                if isinstance(c, str) and c.strip() and i in names:
                    out.setdefault(names[i], []).append(c.strip())
    return out, found


def _img2dataset_pairs(filenames: list[str]) -> list[tuple[str, str]]:
    """(shard.tar, shard.parquet) pairs, img2dataset's webdataset output: the Parquet is the
    shard's metadata (url, status, sizes, scores per key), not a second table of samples."""
    names = set(filenames)
    return [(f, f[:-4] + ".parquet") for f in filenames if f.endswith(".tar") and f[:-4] + ".parquet" in names]


def _stem(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix else name


def _sidecar_of(f: str, stems: set[str]) -> bool:
    """Whether ``f`` (a .txt/.json in any case) is <stem>.txt, <stem>.json or <stem>.<kind>.txt."""
    base = _stem(f)
    head, _, kind = base.rpartition(".")
    return base in stems or (kind in CAPTION_KINDS and head in stems)


def _unclaimed(filenames: list[str], images: list[str], listed: list[str] = ()) -> Counter:
    """Files of one folder that no image row claims: caption sidecars without their image, the
    sidecars of images a table lists (the table's captions are used), and files of other types.
    Counted, so a folder of orphan captions is reported, not silently empty."""
    stems, listed_stems, rows = {_stem(f) for f in images}, {_stem(f) for f in listed}, {*images, *listed}
    out: Counter = Counter()
    for f in filenames:
        if f in rows or f.endswith(".tar"):
            continue
        if Path(f).suffix.lower() not in SIDECAR_EXTS:
            out["unsupported_file"] += 1
        elif not _sidecar_of(f, stems):
            out["sidecar_of_listed_image" if _sidecar_of(f, listed_stems) else "caption_without_image"] += 1
    return out


# --- which images a folder's tables list ---------------------------------------------------------

MAX_LISTING_SCAN_BYTES = 256 * 1024 * 1024  # larger tables are not read while planning


def _listed_files(tree: list[tuple[Path, list[str], int]], opts: ReadOptions) -> set[str]:
    """Paths of the tree's files that its tables (not img2dataset metadata) reference and would
    read: those images are table rows, so the folder must not store them a second time. A table
    above ``MAX_LISTING_SCAN_BYTES`` is not read on the driver: images beside it stay folder rows
    (at worst stored twice, flagged by ``exact_dup``; never lost)."""
    listed: set[str] = set()
    for d, filenames, _ in tree:
        paired = {m for _, m in _img2dataset_pairs(filenames)}
        for f in filenames:
            p = d / f
            if f in paired or Path(f).suffix.lower() not in TABLE_EXTS or has_surrogates(f):
                continue
            try:
                if p.is_file() and p.stat().st_size <= MAX_LISTING_SCAN_BYTES:
                    listed.update(r for v in _table_image_cells(p, opts) if (r := _local_ref(v, d, opts)))
            except (OSError, ValueError):  # unreadable here: its own unit reports it
                continue
    return listed


def _local_ref(value: Any, base: Path, opts: ReadOptions) -> str | None:
    """The file a table cell names (as ``_resolve_image`` reads it), lexically normalised, when it
    is inside the table's folder (or outside reads are allowed); else None: a URL, bytes, a path
    that escapes (its row is ``path_outside_source``, so the file must stay a row of its own)."""
    if isinstance(value, dict):
        if isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
            return None
        value = value.get("path")
    if not isinstance(value, str) or not value or ("://" in value and not value.startswith("file://")):
        return None
    path = Path(value.removeprefix("file://"))
    full = os.path.normpath(path if path.is_absolute() else base / path)
    return full if opts.allow_paths_outside_source or Path(full).is_relative_to(base) else None


def _table_image_cells(p: Path, opts: ReadOptions) -> Iterator[Any]:
    """The image cell of each record of a table file, as its reader picks it."""
    if p.suffix.lower() == ".parquet":
        yield from _parquet_image_cells(p, opts)
        return
    with open(p, "rb") as f:
        while line := f.readline(opts.max_file_bytes + 1):
            if len(line) > opts.max_file_bytes:  # a bad_record row, no image read
                if not line.endswith(b"\n"):
                    _skip_line(f)
                continue
            try:
                rec = parse_json(decode_caption(line)) if line.strip() else None
            except (CaptionDecodeError, ValueError, RecursionError):
                continue  # an error row, whose image is never read
            if isinstance(rec, dict):
                yield _image_cell(rec, record_columns(list(rec), opts))


def _parquet_image_cells(p: Path, opts: ReadOptions) -> Iterator[Any]:
    """Image cells of a Parquet file, reading only path columns (a bytes column holds the images
    themselves; for a {bytes, path} struct only ``path`` is read, so a struct row is taken as
    listing its path even when it also carries the bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(p)
    schema = pf.schema_arrow
    if _duplicate_columns(schema.names):
        return  # every row is a duplicate_key error, no image read
    cols = record_columns(schema.names, opts)
    wanted = [_path_column(c, schema.field(c).type, pa) for c in cols["image"] + cols["url"]]
    wanted = [c for c in wanted if c]
    if not wanted:
        return
    for batch in pf.iter_batches(batch_size=65_536, columns=wanted):
        for rec in batch.to_pylist():
            yield next((v for v in rec.values() if v is not None), None)


def _path_column(name: str, typ: Any, pa: Any) -> str | None:
    """The column (or struct child) of ``name`` that can hold a path: strings, a struct's ``path``."""
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return name
    if pa.types.is_struct(typ) and typ.get_field_index("path") >= 0:
        return f"{name}.path"
    return None


def _image_cell(rec: dict, cols: dict[str, list[str]]) -> Any:
    """The cell a record's image comes from: the first non-null image column, else the URL one."""
    return next((rec[k] for k in cols["image"] + cols["url"] if rec.get(k) is not None), None)


def _error_unit(p: Path, error: str) -> dict[str, Any]:
    """A source file that cannot even be planned (a corrupt Parquet footer, a non-UTF-8 path)
    becomes a unit of one error row, not a failed job."""
    name = escape_surrogates(str(p))
    return {"kind": "error", "source": name, "key": p.name and escape_surrogates(p.name), "error": stable_message(error)}


def _file_units(p: Path, opts: ReadOptions) -> list[dict[str, Any]]:
    ext = p.suffix.lower()
    if has_surrogates(str(p)):
        return [_error_unit(p, "bad_name: the file path is not valid UTF-8")]
    src = _source_name(p)
    if p.name.endswith(".tar"):
        return [{"kind": "tar", "source": src}]
    if ext in (".jsonl", ".ndjson"):
        size = p.stat().st_size  # an empty file has no unit: nothing in it to account for
        step = max(opts.jsonl_chunk_bytes, 1)
        _check_jsonl_mapping(p, opts)
        return [{"kind": "jsonl", "source": src, "start": s, "end": min(s + step, size)} for s in range(0, size, step)]
    if ext == ".parquet":
        return _parquet_units(p, src, opts)
    if ext in IMAGE_EXTS:
        return [{"kind": "folder", "source": str(p.parent), "files": [p.name]}]
    raise SourceError(f"{p}: unsupported source file type {ext!r} (folders, .tar, .jsonl, .parquet, images)")


def _mapped(opts: ReadOptions) -> bool:
    return any(c is not None for c in (opts.image_column, opts.caption_column, opts.url_column))


def _check_jsonl_mapping(p: Path, opts: ReadOptions) -> None:
    """A mapped column must be a field of the file's first record (records may vary after it)."""
    if not _mapped(opts):
        return
    with open(p, "rb") as f:
        line = b""
        while not line.strip() and (line := f.readline(opts.max_file_bytes + 1)):
            pass
    try:
        rec = parse_json(decode_caption(line)) if line.strip() else {}
    except (CaptionDecodeError, ValueError, RecursionError):
        return  # a bad first line is its own error row; the mapping is checked on the rows
    if isinstance(rec, dict):
        check_mapping(list(rec), opts, str(p))


def _parquet_units(p: Path, src: str, opts: ReadOptions) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
        n = pf.num_row_groups
    except (pa.ArrowException, OSError) as e:
        return [_error_unit(p, f"corrupt_table: {type(e).__name__}: {str(e)[:200]}")]
    check_mapping(pf.schema_arrow.names, opts, str(p))
    return [{"kind": "parquet", "source": src, "row_groups": [g]} for g in range(n)]


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
    elif kind == "img2dataset":
        yield from _read_img2dataset(unit, opts, stats)
    elif kind == "skipped":
        for what, n in json.loads(unit["counts"]).items():
            stats[f"skipped_{what}"] = stats.get(f"skipped_{what}", 0) + n
    elif kind == "error":
        yield make_row(unit["source"], unit["key"], None, [], opts, error=unit["error"], stats=stats)
    else:
        raise ValueError(f"unknown unit kind {kind!r}")


def _read_folder(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    root = Path(unit["source"])
    coco = json.loads(unit["coco"]) if unit.get("coco") else {}
    for name in unit["files"]:
        rel = _fs_name(name)
        fp = root / rel
        sidecars, serr = _folder_sidecars(fp, root, opts)
        caps, cerr = _read_sidecars(sidecars, "short")
        caps += [{"text": c, "kind": "short"} for c in coco.get(name, [])]
        data, err = _read_local(fp, rel, root, opts)
        yield make_row(unit["source"], rel, data, caps, opts, error=err or serr or cerr, stats=stats)


def _folder_sidecars(fp: Path, root: Path, opts: ReadOptions) -> tuple[list[tuple[str, bytes]], str | None]:
    """<stem>.txt, <stem>.json, <stem>.<kind>.txt (not <stem>.other.jpg), read under the same rules
    as images: inside the source, regular files, bounded."""
    stem = fp.name[: -len(fp.suffix)]
    out, err = [], None
    for cand in sorted(fp.parent.glob(f"{_glob_escape(stem)}.*")):
        middle = cand.name[len(stem) + 1 : -len(cand.suffix)]
        if cand == fp or cand.suffix.lower() not in SIDECAR_EXTS or not (middle == "" or middle in CAPTION_KINDS):
            continue
        data, e = _read_local(cand, cand.name, root, opts, what=f"sidecar {cand.name!r}: ")
        if data is not None and len(data) > opts.max_file_bytes:
            data, e = None, f"file_too_large: sidecar {cand.name!r} > {opts.max_file_bytes} bytes"
        if data is None:
            err = err or e
        else:
            out.append((cand.name, data))
    return out, err


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


def _wds_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _tar_link_error(m: tarfile.TarInfo, src: str) -> str | None:
    """Link members are never followed (a stream cannot go back to their target; one to
    ``/etc/passwd`` must not be read at all). One that leaves the archive is refused with the same
    text as a symlink on disk; ``allow_paths_outside_source`` does not open a tar's links."""
    target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
    norm = posixpath.normpath(target)
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        return f"path_outside_source: {m.name!r} resolves outside {src}"
    return None


def _tar_groups(tf: tarfile.TarFile, src: str, opts: ReadOptions, stats: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """(key, {files, dup_ext, link_err}) per run of members sharing a WebDataset key."""
    cur, group = None, {}
    for m in tf:
        if not (m.isfile() or m.issym() or m.islnk()):
            stats["tar_member_skipped"] = stats.get("tar_member_skipped", 0) + 1
            continue
        key, ext = _wds_key(m.name)
        if key != cur:
            if cur is not None:
                yield cur, group
            cur, group = key, {"files": {}, "sizes": {}, "dup_ext": False, "link_err": None}
        if not m.isfile():  # a link: counted as skipped, its refusal on the sample's row
            stats["tar_member_skipped"] = stats.get("tar_member_skipped", 0) + 1
            group["link_err"] = group["link_err"] or _tar_link_error(m, src)
            continue
        f = tf.extractfile(m)
        data = f.read(opts.max_file_bytes + 1) if f else b""
        group["dup_ext"] = group["dup_ext"] or ext in group["files"]
        group["files"].setdefault(ext, data)
        group["sizes"].setdefault(ext, m.size)
    if cur is not None:
        yield cur, group


def _sidecar_extras(data: bytes | None) -> dict[str, Any] | None:
    """A tar sample's JSON sidecar fields other than captions (img2dataset writes url, status,
    sizes there); a sidecar that does not parse has its error on the row already."""
    try:
        obj = parse_json(decode_caption(data)) if data else None
    except (CaptionDecodeError, ValueError, RecursionError):
        return None
    return {k: v for k, v in obj.items() if k.lower() not in _CAPTION_KEYS} if isinstance(obj, dict) else None


def _tar_image(group: dict, ext: str | None, opts: ReadOptions) -> tuple[bytes | None, str | None]:
    """(image bytes, file_too_large error) of a tar sample: a member above the limit is read only
    to ``max_file_bytes + 1``, so its real size comes from the tar header, not from that read."""
    if ext is None:
        return None, None
    if group["sizes"][ext] > opts.max_file_bytes:
        return None, f"file_too_large: {group['sizes'][ext]} bytes > {opts.max_file_bytes}"
    return group["files"][ext], None


def _read_tar(unit: dict, opts: ReadOptions, stats: dict[str, int], records: dict[str, dict] | None = None) -> Iterator[dict]:
    """Samples of a tar; ``records`` (img2dataset's metadata by key) gives each its ``meta``."""
    src = unit["source"]
    seen: dict[str, int] = {}
    records = records if records is not None else {}

    def emit(key: str, group: dict) -> dict:
        n = seen.get(key, 0)
        seen[key] = n + 1
        row_key = key if n == 0 else f"{key}#{n + 1}"
        files = group["files"]
        img_ext = next((e for e in files if "." + e.split(".")[-1] in IMAGE_EXTS), None)
        sidecars = [(f"{key}.{e}", files[e]) for e in sorted(files) if e.split(".")[-1] in ("txt", "json")]
        caps, cerr = _read_sidecars(sidecars, "alt")
        error = None
        if n > 0 or group["dup_ext"]:
            error = f"duplicate_key: key {key!r} appears more than once in the tar"
        data, too_large = _tar_image(group, img_ext, opts)
        meta = records.pop(key, None) if n == 0 else None
        meta = meta if meta is not None else _sidecar_extras(files.get("json"))
        return make_row(src, row_key, data, caps, opts, error=too_large or error or group["link_err"] or cerr, stats=stats, meta=meta)

    try:
        with tarfile.open(src, mode="r|*") as tf:
            for key, group in _tar_groups(tf, src, opts, stats):
                yield emit(key, group)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        # a broken tar: rows already read are kept; the break itself is a row with a reason
        yield make_row(src, f"<tar-error-after-{sum(seen.values())}-samples>", None, [], opts, error=f"corrupt_tar: {e}", stats=stats)


def _resolve_image(value: Any, base: Path, opts: ReadOptions) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, uri, error) from a table cell: bytes, {bytes|path} structs, a path or a URI."""
    if isinstance(value, dict):
        if isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
            return bytes(value["bytes"]), None, None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None, None
    if not isinstance(value, str) or not value:
        return None, None, "missing_image: no image path or bytes in the record"
    if "://" in value and not value.startswith("file://"):
        return None, value, None
    path = Path(value.removeprefix("file://"))
    data, err = _read_local(path if path.is_absolute() else base / path, value, base, opts)
    return data, None, err


def _find(names: list[str], wanted: str) -> str | None:
    """The column named ``wanted``: exact first, else the one whose name matches ignoring case
    (LAION's ``URL``/``TEXT``)."""
    if wanted in names:
        return wanted
    return next((n for n in names if n.lower() == wanted.lower()), None)


def _role(names: list[str], given: str | None, usual: tuple[str, ...]) -> list[str]:
    """Candidate columns for one role: the mapped one, or every usual name present."""
    if given is not None:
        found = _find(names, given)
        return [found] if found else []
    return [c for u in usual if (c := _find(names, u))]


def record_columns(names: list[str], opts: ReadOptions) -> dict[str, list[str]]:
    """Which columns of a table are the image, url, caption and key (by the mapping in ``opts``,
    else the usual names in any case); the rest are extra metadata."""
    return {
        "image": _role(names, opts.image_column, _IMAGE_KEYS),
        "url": _role(names, opts.url_column, _URL_KEYS),
        "caption": _role(names, opts.caption_column, _CAPTION_KEYS),
        "key": _role(names, None, _KEY_KEYS),
    }


def check_mapping(names: list[str], opts: ReadOptions, where: str) -> None:
    """Raise ``ColumnMappingError`` when a mapped column is not among ``names``."""
    for flag, given in (("image", opts.image_column), ("caption", opts.caption_column), ("url", opts.url_column)):
        if given is not None and _find(names, given) is None:
            raise ColumnMappingError(f"{where}: no column {given!r} (--{flag}-column); the columns are: {', '.join(names) or '(none)'}")


_POSITIONAL = ("@", "#", "<", "=")  # first characters of positional and synthetic keys


def _own_key(rec: dict, cols: list[str]) -> str | None:
    """The record's own key (``key``/``id``/``uid``/``sample_id``), the row key on its own: a
    key with the byte offset or row number in it changed whenever a line was added or fixed above
    it, so a re-ingest or ``--retry-errors`` stored the rest again. One that looks positional
    (``@12``) gets ``=`` in front, so it never meets a keyless record's key."""
    for k in cols:
        v = rec.get(k)
        if isinstance(v, (str, int)) and str(v):
            return "=" + str(v) if str(v).startswith(_POSITIONAL) else str(v)
    return None


def duplicate_key_error(key: str, source: str) -> str:
    """The one text for a key met twice in one table file (the reader and ingest's safety net)."""
    return f"duplicate_key: key {key!r} appears more than once in {Path(source).name}"


def _keyed(rec: dict, cols: list[str], source: str, position: str, seen: dict[str, int]) -> tuple[str, str | None]:
    """(row key, duplicate error): the own key, else the position; the second record with one own
    key is ``<key>#2`` with ``duplicate_key`` (as in a tar), so no id is stored twice."""
    own = _own_key(rec, cols)
    if own is None:
        return position, None
    n = seen.get(own, 0)
    seen[own] = n + 1
    return (own, None) if n == 0 else (f"{own}#{n + 1}", duplicate_key_error(own, source))


def _record_captions(rec: dict, cols: list[str], mapped: bool) -> list[dict[str, str]]:
    """Captions of the caption columns, read under their usual lower-case names; a mapped column
    is a plain caption (or a list of them)."""
    if mapped:
        v = rec.get(cols[0]) if cols else None
        return captions_from_json({"captions" if isinstance(v, list) else "caption": v}, "short")
    return captions_from_json({c.lower(): rec[c] for c in cols}, "short")


def _record_row(rec: Any, source: str, key: str, base: Path, opts: ReadOptions, stats: dict[str, int], seen: dict[str, int]) -> dict:
    """A record's row; a caption field of the wrong type is its error (the image still checked).
    Fields that are not image, url, caption or key go to ``meta``. ``seen`` counts the own keys
    met so far in the unit."""
    if not isinstance(rec, dict):
        return make_row(source, key, None, [], opts, error=f"bad_record: not an object but {_tname(rec)}", stats=stats)
    cols = record_columns(list(rec), opts)
    key, dup = _keyed(rec, cols["key"], source, key, seen)
    try:
        caps, cerr = _record_captions(rec, cols["caption"], opts.caption_column is not None), None
    except BadField as e:
        caps, cerr = [], f"bad_record: {e}"
    data, uri, err = _resolve_image(_image_cell(rec, cols), base, opts)
    if uri:
        stats["remote_uri"] = stats.get("remote_uri", 0) + 1
    used = {c for cs in cols.values() for c in cs}
    meta = {k: v for k, v in rec.items() if k not in used}
    return make_row(source, key, data, caps, opts, uri=uri, error=dup or err or cerr, stats=stats, meta=meta)


def _skip_line(f) -> None:
    """Read past the rest of the current line in bounded chunks."""
    while (chunk := f.readline(1 << 20)) and not chunk.endswith(b"\n"):
        pass


def _jsonl_row(line: bytes, src: str, key: str, base: Path, opts: ReadOptions, stats: dict[str, int], seen: dict[str, int]) -> dict:
    try:
        rec = parse_json(decode_caption(line))
    except DuplicateField as e:
        return make_row(src, key, None, [], opts, error=f"duplicate_key: {e}", stats=stats)
    except (CaptionDecodeError, ValueError, RecursionError) as e:  # JSON errors are ValueErrors
        return make_row(src, key, None, [], opts, error=f"bad_record: {str(e)[:200]}", stats=stats)
    return _record_row(rec, src, key, base, opts, stats, seen)


def _read_jsonl(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    """Lines starting in [start, end); a line longer than ``max_file_bytes`` is an error row."""
    src, start, end = unit["source"], unit["start"], unit["end"]
    base, seen = Path(src).parent, {}
    with open(src, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                _skip_line(f)  # the partial line belongs to the previous unit
        while f.tell() < end:
            pos = f.tell()
            line = f.readline(opts.max_file_bytes + 1)
            if not line:
                break
            if len(line) > opts.max_file_bytes:
                if not line.endswith(b"\n"):
                    _skip_line(f)
                yield make_row(
                    src, f"@{pos}", None, [], opts, error=f"bad_record: line longer than {opts.max_file_bytes} bytes", stats=stats
                )
            elif line.strip():
                yield _jsonl_row(line, src, f"@{pos}", base, opts, stats, seen)


def _duplicate_columns(names: list[str]) -> str | None:
    dups = sorted({n for n in names if names.count(n) > 1})
    return f"duplicate_key: column {dups[0]!r} appears more than once in the table" if dups else None


def _read_parquet(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    """Rows of the unit's row groups; a column named twice (Arrow keeps one, silently) makes every
    row an error, and a corrupt page a row with ``corrupt_table`` after the rows read before it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, base = unit["source"], Path(unit["source"]).parent
    offset, seen = 0, {}
    try:
        pf = pq.ParquetFile(src)
        dup = _duplicate_columns(pf.schema_arrow.names)
        offset = sum(pf.metadata.row_group(g).num_rows for g in range(unit["row_groups"][0]))
        for batch in pf.iter_batches(batch_size=opts.shard_size, row_groups=unit["row_groups"]):
            for rec in batch.to_pylist():
                key = f"#{offset}"
                yield (
                    make_row(src, key, None, [], opts, error=dup, stats=stats)
                    if dup
                    else _record_row(rec, src, key, base, opts, stats, seen)
                )
                offset += 1
    except (pa.ArrowException, OSError) as e:
        err = f"corrupt_table: {type(e).__name__}: {str(e)[:200]}"
        yield make_row(src, f"<parquet-error-at-row-{offset}>", None, [], opts, error=err, stats=stats)


# --- img2dataset output: shard tars joined with their Parquet metadata -----------------------


def _img2dataset_records(path: str, opts: ReadOptions) -> tuple[dict[str, dict], str | None]:
    """Records of a shard's metadata Parquet by ``key`` (one shard's worth: img2dataset writes
    10,000 rows per shard by default), or the reason it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if os.path.getsize(path) > opts.max_file_bytes:
            return {}, f"file_too_large: metadata {Path(path).name!r} > {opts.max_file_bytes} bytes"
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        return {}, f"corrupt_table: {Path(path).name}: {type(e).__name__}: {str(e)[:200]}"
    return {str(r.get("key")): r for r in rows if r.get("key") is not None}, None


def _img2dataset_leftover(src: str, key: str, rec: dict, opts: ReadOptions, stats: dict[str, int]) -> dict:
    """A metadata row without its sample in the tar: a failed download (once, with its reason,
    not a URL row to fetch again), or a success whose image is missing."""
    status = rec.get("status")
    if status == "success":
        err = "missing_image: listed as downloaded in the metadata but not in the tar"
    else:
        err = f"download_failed: {rec.get('error_message') or status or 'no status'}"
    try:
        caps = captions_from_json({"caption": rec.get("caption")}, "alt")
    except BadField:
        caps = []
    return make_row(src, key, None, caps, opts, error=err, stats=stats, meta=rec)


def _read_img2dataset(unit: dict, opts: ReadOptions, stats: dict[str, int]) -> Iterator[dict]:
    """The tar's samples with their metadata row as ``meta``, then the metadata rows that have no
    sample (failed downloads), keyed like the tar's, so each input is one row."""
    src = unit["source"]
    records, err = _img2dataset_records(unit["meta"], opts)
    yield from _read_tar({"source": src}, opts, stats, records)
    if err:
        yield make_row(src, "<metadata>", None, [], opts, error=err, stats=stats)
    for key, rec in records.items():
        yield _img2dataset_leftover(src, key, rec, opts, stats)
