"""Generated poison through the real readers (``plan_units`` + ``read_unit``): JSON sidecars,
JSONL records, Parquet schemas and file names. Whatever comes in, no exception escapes, every row
is storable in the samples schema, and every input is accounted for: one row, or one counted skip.
(Issue #21; the rules are in docs/ingest.md.)"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from curation.schema import CAPTION_KINDS, SAMPLES_SCHEMA
from curation.sources import IMAGE_EXTS, ReadOptions, plan_units, read_unit

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTS = ReadOptions(shard_size=3, jsonl_chunk_bytes=64, max_file_bytes=4096)


def _jpeg(color: int = 0) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (8, 6), (color % 256, 20, 30)).save(b, "JPEG")
    return b.getvalue()


JPEG = _jpeg()


def _read(src: Path) -> tuple[list[dict], dict[str, int]]:
    stats: dict[str, int] = {}
    rows = [r for u in plan_units([str(src)], OPTS) for r in read_unit(u, OPTS, stats)]
    pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA)  # storable: what the worker writes
    for r in rows:
        assert r["error"] is None or (":" in r["error"] and " at 0x" not in r["error"]), r["error"]
    return rows, stats


# strings a hostile file carries: surrogates, NUL, bidi marks, CJK, very long
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from(["a", "\udc80", "\ud800", "\x00", "\u202e", "猫", " ", '"', "\\"]), max_size=12),
    st.just("x" * 5000),
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), TEXT)
FIELD = st.sampled_from(["caption", "captions", "text", "alt", "zh", "tags", "lang", "kind", "image", "id", "key", "long_caption", "x"])
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(FIELD, TEXT), inner, max_size=5)),
    max_leaves=12,
)
RECORD = st.dictionaries(FIELD, JSON, max_size=6)


def _dumps(obj, dup: bool) -> str:
    """JSON text (ASCII escapes, so lone surrogates survive), optionally naming a field twice."""
    text = json.dumps(obj)
    if dup and isinstance(obj, dict) and obj:
        k = next(iter(obj))
        text = text[:-1] + f", {json.dumps(k)}: {json.dumps(obj[k])}}}"
    return text


@FUZZ
@given(sidecars=st.lists(st.tuples(st.one_of(RECORD, JSON), st.booleans(), st.binary(max_size=40)), min_size=1, max_size=4))
def test_fuzzed_sidecars_one_row_per_image(sidecars):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for i, (obj, dup, raw) in enumerate(sidecars):
            (root / f"s{i}.jpg").write_bytes(_jpeg(i))
            (root / f"s{i}.json").write_text(_dumps(obj, dup))
            (root / f"s{i}.txt").write_bytes(raw)
        rows, _ = _read(root)
        assert sorted(r["source_key"] for r in rows) == sorted(f"s{i}.jpg" for i in range(len(sidecars)))


@FUZZ
@given(
    lines=st.lists(
        st.one_of(RECORD.map(lambda r: {"image": "x.jpg", **r}), JSON).map(json.dumps)
        | st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
        min_size=1,
        max_size=8,
    )
)
def test_fuzzed_jsonl_one_row_per_line(lines):
    lines = [ln.replace("\n", " ").replace("\r", " ") for ln in lines]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "x.jpg").write_bytes(JPEG)
        body = "\n".join(lines) + "\n"
        (root / "r.jsonl").write_bytes(body.encode("utf-8", "surrogatepass"))
        rows, _ = _read(root / "r.jsonl")
        expected = sum(1 for ln in body.encode("utf-8", "surrogatepass").split(b"\n") if ln.strip())
        assert len(rows) == expected


ARROW_COLUMNS = {
    "int": (pa.int64(), st.integers(-(2**62), 2**62)),
    "float": (pa.float64(), st.floats(allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), st.text(max_size=20)),
    "binary": (pa.binary(), st.sampled_from([b"", b"junk", JPEG])),
    "list_int": (pa.list_(pa.int64()), st.lists(st.integers(0, 9), max_size=3)),
    "list_string": (pa.list_(pa.string()), st.lists(st.text(max_size=8), max_size=3)),
    "captions_struct": (
        pa.list_(pa.struct([("text", pa.string()), ("kind", pa.string()), ("lang", pa.int64())])),
        st.lists(
            st.fixed_dictionaries({"text": st.text(max_size=8), "kind": st.sampled_from(CAPTION_KINDS), "lang": st.integers(0, 5)}),
            max_size=2,
        ),
    ),
    "image_struct": (
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        st.fixed_dictionaries({"bytes": st.sampled_from([None, JPEG]), "path": st.sampled_from([None, "x.jpg", "/etc/passwd", "../x"])}),
    ),
}


@st.composite
def tables(draw):
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(["image", "captions", "caption", "tags", "id", "text", "path", "other"]), min_size=1, max_size=4))
    arrays = []
    for _ in names:
        typ, values = ARROW_COLUMNS[draw(st.sampled_from(sorted(ARROW_COLUMNS)))]
        arrays.append(pa.array([draw(st.one_of(st.none(), values)) for _ in range(n)], type=typ))
    return pa.Table.from_arrays(arrays, names=names)


@FUZZ
@given(table=tables(), row_group=st.integers(1, 4))
def test_fuzzed_parquet_one_row_per_record(table, row_group):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "x.jpg").write_bytes(JPEG)
        pq.write_table(table, root / "t.parquet", row_group_size=row_group)
        rows, _ = _read(root / "t.parquet")
        assert len(rows) == table.num_rows
        assert not any(r["image"] and b"root:" in r["image"] for r in rows)  # /etc/passwd never read


NAME = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b)
SUFFIX = st.sampled_from([".jpg", ".PNG", ".txt", ".json", ".long.txt", ".md", "", ".tar.gz"])


def _claimed(name: str, image_stems: set[str]) -> bool:
    """A sidecar an image takes: <stem>.txt, <stem>.json, <stem>.<kind>.txt."""
    base = name[: -len(Path(name).suffix)]
    head, _, kind = base.rpartition(".")
    return base in image_stems or (kind in CAPTION_KINDS and head in image_stems)


@FUZZ
@given(files=st.lists(st.tuples(NAME, SUFFIX), min_size=1, max_size=8, unique_by=lambda t: t[0] + t[1].encode()))
def test_fuzzed_file_names_every_file_accounted_for(files):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for raw, suffix in files:
            name = b"f" + raw + suffix.encode()
            data = JPEG if suffix.lower() in IMAGE_EXTS else raw
            with open(os.fsencode(root) + b"/" + name, "wb") as f:
                f.write(data)
        rows, stats = _read(root)
        names = [os.fsdecode(b"f" + raw + sfx.encode()) for raw, sfx in files]
        images = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTS]
        stems = {n[: -len(Path(n).suffix)] for n in images}
        claimed = [n for n in names if n not in images and Path(n).suffix.lower() in (".txt", ".json") and _claimed(n, stems)]
        skipped = sum(v for k, v in stats.items() if k.startswith("skipped_"))
        assert len(rows) == len(images)
        assert len(rows) + skipped + len(claimed) == len(names)


def test_surrogate_in_an_unmapped_field_name_is_stored_escaped(tmp_path):
    """Found by the fuzz test: an extra field whose *name* is a lone surrogate went into ``meta``
    unescaped and made the whole batch unstorable."""
    (tmp_path / "r.jsonl").write_text(json.dumps({"image": "x.jpg", "\ud800": 1}) + "\n")
    rows, _ = _read(tmp_path / "r.jsonl")
    assert len(rows) == 1 and json.loads(rows[0]["meta"]) == {"\\ud800": 1}
