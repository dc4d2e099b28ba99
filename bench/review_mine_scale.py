"""Benchmark: `curate review mine` at growing sizes: time, driver and worker memory, before/after.

    .venv/bin/python bench/review_mine_scale.py --rows 50000 150000 [300000 ...]

Each size is a Lance dataset of that many rows with the columns mining reads, synthetic: a
caption, the profile's signals (quality, aesthetics, image-text similarity, sharpness, NSFW,
OCR text on one row in five, its overlap with the caption), dedup's `dup_sim`, graph_tag's tag
columns (as in bench/resample_scale.py) and a 512-d image embedding (`prof_clip_image`). The real
command runs on it (`python -m cli review mine --dataset DS --n 1000`, a fresh SQLite queue), in a
child process whose RSS (and its Ray workers') is sampled every 0.25 s. Building the dataset is
not timed. ``--code DIR`` (repeatable) runs the CLI from other checkouts on the same rows: the
before/after of a change in one run. One JSON line per size and code, then the growth exponents
(time and driver memory, N^X from the smallest size to the largest).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]


def _resample_bench():
    spec = importlib.util.spec_from_file_location("resample_scale", ROOT / "bench" / "resample_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = _resample_bench().tags(n, seed)
    words = np.array(["dog", "street", "sign", "red", "car", "two", "people", "table", "food", "sky"])
    text = [" ".join(words[rng.integers(0, 10, 6)]) for _ in range(n)]
    cap = pa.StructArray.from_arrays([pa.array(text), pa.array(["original"] * n), pa.array(["en"] * n)], ["text", "kind", "lang"])
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ocr = np.where(rng.random(n) < 0.2, "OPEN 24 HOURS", "")
    cols = {
        "id": t.column("id"),
        "captions": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), cap),
        "error": pa.nulls(n, pa.string()),
        **{c: pa.array(rng.random(n).astype(np.float32)) for c in ("prof_quality", "prof_aesthetic", "prof_sharpness", "prof_nsfw")},
        "prof_clip_sim": pa.array((0.2 + 0.1 * rng.standard_normal(n)).astype(np.float32)),
        "prof_ocr_text": pa.array(ocr.tolist()),
        "prof_cap_ocr_overlap": pa.array(np.where(ocr == "", np.nan, rng.random(n)).astype(np.float32)),
        "dup_sim": pa.array(np.where(rng.random(n) < 0.1, 0.85 + 0.15 * rng.random(n), np.nan).astype(np.float32)),
        "tag_concepts": t.column("tag_concepts"),
        "tag_scores": t.column("tag_scores"),
        "tag_direct": t.column("tag_direct"),
        "prof_clip_image": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 512),
    }
    return pa.table(cols)


def run(uri: str, db: str, code: Path) -> dict:
    """`curate review mine` of 1,000 items on ``uri`` into a fresh queue ``db``, from ``code``."""
    got = _resample_bench().run_cli(["review", "mine", "--dataset", uri, "--db", db, "--n", "1000"], code)
    said = next((ln for ln in got.pop("output").splitlines() if ln.startswith("review mine:") and " hard, " in ln), "")[:120]
    return {**got, "said": said}


def _shared(first: Path, db: Path) -> str:
    """How many of the rows ``db`` queued the first code's queue also holds, and in the same
    serving order (the before/after of a change: the same items, or how many moved)."""
    import sqlite3

    def queue(p: Path) -> list[str]:
        with sqlite3.connect(p) as c:
            return [r[0] for r in c.execute("SELECT row_id FROM items ORDER BY priority DESC, id")]

    a, b = queue(first), queue(db)
    return f"{len(set(a) & set(b))} of {len(b)} ({sum(x == y for x, y in zip(a, b))} at the same rank)"


def main() -> None:
    import lance

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[50_000, 150_000])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-review-mine")
    ap.add_argument("--code", type=Path, action="append", help="checkout(s) to run the CLI from (default: this one)")
    args = ap.parse_args()
    codes = args.code or [ROOT]
    print(f"machine: {_resample_bench().machine()}", flush=True)
    rows: dict[str, list[dict]] = {str(c): [] for c in codes}
    for n in sorted(args.rows):
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        t0 = time.perf_counter()
        base = args.work / f"mine-{n}.lance"
        lance.write_dataset(table(n), str(base), max_rows_per_file=50_000)
        build = round(time.perf_counter() - t0, 1)
        for k, code in enumerate(codes):
            uri = args.work / f"run-{k}.lance"
            shutil.copytree(base, uri)  # the same rows, a fresh queue and state for each code
            db = args.work / f"review-{k}.db"
            row = {"rows": n, "code": str(code), "build_seconds": build, **run(str(uri), str(db), code)}
            row["same_items_as_first"] = _shared(args.work / "review-0.db", db)
            rows[str(code)].append(row)
            print(json.dumps(row), flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    for code, got in rows.items():
        if len(got) > 1:
            a, b = got[0], got[-1]
            g = [
                round(math.log(f(b) / f(a)) / math.log(b["rows"] / a["rows"]), 2)
                for f in (lambda r: r["seconds"], lambda r: r["peak_rss_mib"]["driver"])
            ]
            print(f"{code}: growth exponent {g[0]} (time), {g[1]} (driver memory)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
