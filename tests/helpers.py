"""Test data builders: real images into samples-schema Arrow tables (no Ray, no ingest needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
from PIL import Image

from curation.schema import SAMPLES_SCHEMA, sample_id, sha256_hex
from curation.text import detect_lang


def sample_row(data: bytes, source: str, key: str, captions: list[str] | None = None, kind: str = "short") -> dict:
    """One row of the samples table for encoded image bytes (width/height/format read by PIL)."""
    with Image.open(io.BytesIO(data)) as im:
        w, h, fmt = im.size[0], im.size[1], im.format
    return {
        "id": sample_id(source, key),
        "image": data,
        "image_uri": None,
        "image_sha256": sha256_hex(data),
        "source": source,
        "source_key": key,
        "captions": [{"text": c, "kind": kind, "lang": detect_lang(c)} for c in (captions or [])],
        "width": w,
        "height": h,
        "format": fmt,
        "error": None,
    }


def samples_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def coco_rows(coco_dir: Path, limit: int | None = None) -> list[dict]:
    """COCO-mini photos with their five human captions each, in file-name order."""
    caps = json.loads((coco_dir / "captions_train2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for a in caps["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    files = {im["file_name"]: im["id"] for im in caps["images"]}
    rows = []
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:limit]:
        rows.append(sample_row(p.read_bytes(), str(coco_dir), p.name, by_image.get(files.get(p.name), []), kind="short"))
    return rows


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on a loopback address (servers of the tests listen on loopback only)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]

