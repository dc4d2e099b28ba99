"""Benchmark: `curate resample` at growing sizes, time and memory of the driver and the workers.

    .venv/bin/python bench/resample_scale.py --rows 100000 300000 [1000000 ...] [--code DIR]

Each size is a Lance dataset of that many rows with tag columns shaped like graph_tag's (see
``tags``): Zipf-distributed concepts (a long tail over 20k leaf concepts) with their ancestors
(2k upper concepts), about 25 tags a row as on the demo corpus, BM25-like scores. Synthetic: no
caption is tagged here, so the figures are the resampling job's own, setup (building the
dataset) excluded and printed apart. The real job runs on it as users run it (`python -m cli
resample --dataset DS --target-size N`, the embedded local Ray), in a child process whose RSS
and its Ray workers' RSS are sampled every 0.25 s.

``--code DIR`` runs the CLI from another checkout (the same datasets): the before/after of a
change, side by side in one run. One JSON line per size and code, then the growth exponents
(time and driver memory from the smallest to the largest size as N^X).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
LEAVES, UPPER, CHAIN = 20_000, 2_000, 5


def tags(n: int, seed: int = 0) -> pa.Table:
    """``n`` rows of tag columns: 1 + Poisson(3) direct leaf concepts a row (Zipf 1.1 over the
    leaves), each with a fixed chain of ``CHAIN`` ancestors among the upper concepts (inherited
    tags, merged per row), scores lognormal (direct) and halved (inherited)."""
    rng = np.random.default_rng(seed)
    anc = rng.integers(0, UPPER, size=(LEAVES, CHAIN)) + LEAVES
    k = 1 + rng.poisson(3, n)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    leaf = np.minimum(rng.zipf(1.1, len(rows)) - 1, LEAVES - 1)
    all_rows = np.concatenate([rows, np.repeat(rows, CHAIN)])
    all_cid = np.concatenate([leaf, anc[leaf].ravel()])
    key = np.unique(all_rows * (LEAVES + UPPER) + all_cid)  # a concept once per row, rows in order
    r, cid = key // (LEAVES + UPPER), key % (LEAVES + UPPER)
    offsets = np.r_[0, np.cumsum(np.bincount(r, minlength=n))].astype(np.int32)
    direct = cid < LEAVES
    score = np.where(direct, rng.lognormal(1.0, 0.5, len(cid)), 0.5 * rng.lognormal(0.5, 0.5, len(cid)))
    names = pa.array([f"leaf{j}" for j in range(LEAVES)] + [f"upper{j}" for j in range(UPPER)])
    concepts = pa.DictionaryArray.from_arrays(pa.array(cid.astype(np.int32)), names).cast(pa.string())
    cap = pa.StructArray.from_arrays(
        [pa.array(["a photo"] * n), pa.array(["original"] * n), pa.array(["en"] * n)], ["text", "kind", "lang"]
    )
    return pa.table(
        {
            "id": pa.array([f"r{i:09d}" for i in range(n)]),
            "captions": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), cap),
            "tag_concepts": pa.ListArray.from_arrays(pa.array(offsets), concepts),
            "tag_scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(score.astype(np.float32))),
            "tag_direct": pa.ListArray.from_arrays(pa.array(offsets), pa.array(direct)),
        }
    )


def build(uri: str, n: int, rows_per_file: int = 50_000) -> dict:
    import lance

    t0 = time.perf_counter()
    t = tags(n)
    shutil.rmtree(uri, ignore_errors=True)
    lance.write_dataset(t, uri, max_rows_per_file=rows_per_file)
    return {
        "build_seconds": round(time.perf_counter() - t0, 1),
        "tags_per_row": round(len(t.column("tag_concepts").combine_chunks().values) / n, 1),
    }


def run_cli(args: list[str], code: Path, interval: float = 0.25) -> dict:
    """``python -m cli ARGS`` from the checkout ``code``: seconds, peak RSS of the command (the
    driver) and of its largest Ray worker (the job's own: its raylet is the driver's child), and
    what it printed. Exits with the output's end if the command fails."""
    import psutil

    t0 = time.perf_counter()
    log = tempfile.TemporaryFile("w+")
    cmd = [sys.executable, "-m", "cli", *args]
    proc = subprocess.Popen(cmd, cwd=code, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(code)})
    driver = psutil.Process(proc.pid)
    peak_driver = peak_worker = 0
    while proc.poll() is None:
        try:
            peak_driver = max(peak_driver, driver.memory_info().rss)
            for p in driver.children(recursive=True):
                try:
                    if " ".join(p.cmdline()).startswith("ray::"):
                        peak_worker = max(peak_worker, p.memory_info().rss)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        time.sleep(interval)
    log.seek(0)
    out = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{out[-4000:]}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": {"driver": peak_driver >> 20, "largest_worker": peak_worker >> 20},
        "output": out,
    }


def run_job(uri: str, n: int, code: Path) -> dict:
    """`curate resample` on ``uri`` (target size ``n``) from ``code``."""
    got = run_cli(["resample", "--dataset", uri, "--target-size", str(n)], code)
    return {k: v for k, v in got.items() if k != "output"}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, no GPU, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at start"


def growth(a: dict, b: dict, key) -> float:
    return round(math.log(key(b) / key(a)) / math.log(b["rows"] / a["rows"]), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--code", type=Path, action="append", help="checkout(s) to run the CLI from (default: this one)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-resample")
    args = ap.parse_args()
    codes = args.code or [ROOT]
    print(f"machine: {machine()}", flush=True)
    results: dict[str, list[dict]] = {str(c): [] for c in codes}
    for n in sorted(args.rows):
        base = args.work / f"base-{n}.lance"
        info = build(str(base), n)
        for code in codes:
            uri = args.work / f"run-{n}.lance"
            shutil.rmtree(uri, ignore_errors=True)
            shutil.copytree(base, uri)  # each code on the same rows, none on another's columns
            row = {"rows": n, "code": str(code), **info, **run_job(str(uri), n, code)}
            results[str(code)].append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(uri, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    for code, rows in results.items():
        if len(rows) > 1:
            a, b = rows[0], rows[-1]
            print(
                f"{code}: growth exponent {growth(a, b, lambda r: r['seconds'])} (time), {growth(a, b, lambda r: r['peak_rss_mib']['driver'])} (driver memory)"
            )


if __name__ == "__main__":
    main()
