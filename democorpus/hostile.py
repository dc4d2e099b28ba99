"""A corpus of hostile inputs, for tests and for checking a deployment end to end.

Every kind of file that has broken real ingestion jobs: each case records what a correct job must
do with it (``expect``: "ok" or the error reason it must carry). Built from real photographs when
given (``photo`` bytes), so the valid-but-odd cases are real images, not noise.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_hostile_corpus"]


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def _png_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG", **kw)
    return b.getvalue()


def _bomb_png(side: int = 30_000) -> bytes:
    """A tiny PNG file that declares side x side pixels: decoding it would need gigabytes."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (side // 8 + 1) * 64, 9)  # far too little data: never decoded anyway
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return _jpeg(img, exif=exif.tobytes())


def _poison_cases(folder: Path, base: Image.Image, put, cases: dict[str, dict]) -> None:
    """Single records that once failed the whole job (issue #21): each must be one error row."""
    img = lambda q: _jpeg(base, quality=q)  # noqa: E731 (distinct bytes per case: no exact copies)
    put("captions_int.jpg", img(81), "caption_invalid", b'{"captions": 5}', sidecar="json")
    put("lang_int.jpg", img(82), "caption_invalid", b'{"captions": [{"text": "a dog", "lang": 5}]}', sidecar="json")
    put("surrogate_caption.jpg", img(83), "caption_encoding", b'{"caption": "lone \\udc80 surrogate"}', sidecar="json")
    put("duplicate_field.jpg", img(84), "duplicate_key", b'{"caption": "first", "caption": "second"}', sidecar="json")
    put("utf16_nul_caption.jpg", img(85), "caption_encoding", "a\x00b".encode("utf-16"))
    # a symlink to a file outside the corpus: refused, the target's bytes never stored
    (folder / "escape_link.jpg").symlink_to("/etc/passwd")
    cases["escape_link.jpg"] = {"path": "folder/escape_link.jpg", "expect": "path_outside_source"}
    # a file name that is not UTF-8 (byte 0xFF): stored under an escaped key, with an error
    try:
        with open(os.fsencode(folder) + b"/latin1_\xff.jpg", "wb") as f:
            f.write(img(86))
        cases["latin1_\\xff.jpg"] = {"path": "folder/latin1_\\xff.jpg", "expect": "bad_name"}
    except OSError:  # a file system that only takes UTF-8 names: nothing to test there
        pass


def write_hostile_corpus(out: str | Path, photo: bytes | None = None) -> dict[str, dict]:
    """Write ``out/folder`` (images + sidecars, a symlink out, a non-UTF-8 name),
    ``out/tar/hostile.tar`` and ``out/jsonl/rows.jsonl``.

    Returns {case name: {"path": relative path, "expect": "ok" | error reason}}."""
    out = Path(out)
    folder, tar_dir, jl = out / "folder", out / "tar", out / "jsonl"
    for d in (folder, tar_dir, jl):
        d.mkdir(parents=True, exist_ok=True)
    base = (
        Image.open(io.BytesIO(photo)).convert("RGB")
        if photo
        else Image.fromarray((np.indices((96, 128)).sum(0) % 256).astype(np.uint8)).convert("RGB")
    )
    base = base.resize((128, 96))
    good = _jpeg(base, quality=90)
    cases: dict[str, dict] = {}

    def put(name: str, data: bytes, expect: str, caption: bytes | None = b"a photo", sidecar: str = "txt"):
        (folder / name).write_bytes(data)
        if caption is not None:
            stem = name.rsplit(".", 1)[0]
            (folder / f"{stem}.{sidecar}").write_bytes(caption)
        cases[name] = {"path": f"folder/{name}", "expect": expect}

    put("good.jpg", good, "ok", "a good photo 一张好照片".encode())
    put("zero_bytes.jpg", b"", "empty_file")
    put("truncated.jpg", good[: len(good) // 2], "truncated")
    put("text_named.jpg", b"this is not an image at all\n" * 20, "not_an_image")
    put("bomb.png", _bomb_png(), "decompression_bomb")
    put("cmyk.jpg", _jpeg(base.convert("CMYK")), "ok")
    arr16 = np.asarray(base.convert("L"), dtype=np.uint16) * 257
    put("sixteen_bit.png", _png_bytes(Image.fromarray(arr16)), "ok")
    pal = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    put("palette_transparent.png", _png_bytes(pal, transparency=0), "ok")
    gif = io.BytesIO()
    frames = [base.convert("P"), base.transpose(Image.FLIP_LEFT_RIGHT).convert("P")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", gif.getvalue(), "ok")
    put("exif_rotated.jpg", _exif_rotated(base), "ok")
    put("one_pixel.png", _png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))), "ok")
    put("extreme_aspect.png", _png_bytes(Image.new("L", (20000, 10), 128)), "ok")
    put("invalid_utf8_caption.jpg", good, "caption_encoding", b"caf\xe9 \xff\xfe broken")
    put("huge_caption.jpg", _jpeg(base, quality=70), "ok", ("word " * 220_000).encode())  # ~1.1 MB
    put(
        "html_caption.jpg",
        _jpeg(base, quality=60),
        "ok",
        b'<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2;alert("xss")</script> a cat',
    )
    put("path_caption.jpg", _jpeg(base, quality=50), "ok", b"../../etc/passwd; DROP TABLE samples;--")
    put(
        "url_path_caption.jpg",
        _jpeg(base, quality=45),
        "ok",
        b"file:///etc/shadow C:\\Windows\\win.ini /image/../../etc/passwd javascript:alert(1) %2e%2e%2f",
    )
    put("bad_json_sidecar.jpg", _jpeg(base, quality=40), "caption_json_invalid", b"{not json", sidecar="json")
    put("exact_copy.jpg", good, "ok", b"the same bytes as good.jpg")
    _poison_cases(folder, base, put, cases)

    # WebDataset tar with a duplicate key, a member without image, a symlink
    tar_path = tar_dir / "hostile.tar"
    with tarfile.open(tar_path, "w") as tf:

        def add(name: str, data: bytes):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        add("000001.jpg", good)
        add("000001.txt", b"first sample")
        add("000002.jpg", _jpeg(base, quality=30))
        add("000002.txt", "第二个样本".encode())
        add("000001.jpg", _jpeg(base, quality=20))  # the same key again, later in the tar
        add("000001.txt", b"duplicate key")
        add("000003.txt", b"caption without an image")
        link = tarfile.TarInfo("000004.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    cases["tar:000001"] = {"path": "tar/hostile.tar", "expect": "ok"}
    cases["tar:000002"] = {"path": "tar/hostile.tar", "expect": "ok"}
    cases["tar:000001#2"] = {"path": "tar/hostile.tar", "expect": "duplicate_key"}
    cases["tar:000003"] = {"path": "tar/hostile.tar", "expect": "missing_image"}
    cases["tar:000004"] = {"path": "tar/hostile.tar", "expect": "path_outside_source"}  # the symlink

    # JSONL with a path escaping its folder, a bad line, bytes that are fine
    (jl / "img.jpg").write_bytes(good)
    lines = [
        json.dumps({"image": "img.jpg", "caption": "relative path ok", "caption_zh": "相对路径"}),
        json.dumps({"image": "../../../../etc/hostname", "caption": "escape attempt"}),
        "{this is not json",
        json.dumps({"image": "https://example.invalid/x.jpg", "caption": "remote"}),
    ]
    (jl / "rows.jsonl").write_text("\n".join(lines) + "\n")
    cases["jsonl:ok"] = {"path": "jsonl/rows.jsonl", "expect": "ok"}
    cases["jsonl:escape"] = {"path": "jsonl/rows.jsonl", "expect": "path_outside_source"}
    cases["jsonl:bad"] = {"path": "jsonl/rows.jsonl", "expect": "bad_record"}
    cases["jsonl:remote"] = {"path": "jsonl/rows.jsonl", "expect": "ok"}
    (out / "expected.json").write_text(json.dumps(cases, indent=1))
    return cases
