"""Editing pairs per second: ``curate pairs render``, ``synth`` and ``mine`` as users run them.

Each job is the real command in a fresh process (``curate pairs ...``), so a figure holds its whole
cost: the interpreter, the embedded Ray cluster, reading the dataset, the workers, the Lance commit.
Each job runs at two sizes; the difference between them is the marginal rate, free of the fixed
start-up cost.

Data (all real photos, ``../shared/data/coco-mini``):
- render and synth: the 80 coco-mini photos ingested into a Lance dataset; synth takes its objects
  from the COCO instance masks that ship with them.
- mine: a scene corpus of ``--scenes`` photos, each stored with two edited variants (sign text
  added at two places by ``engines.pairs.render.render_pair``), saved as JPEG and ingested; then
  ``curate index build`` and ``curate knn`` over ``vec_desc`` (timed apart, not counted in mining),
  then ``curate pairs mine``. The second size doubles the scenes (the photos are reused with other
  text seeds).

    .venv/bin/python bench/pairs.py [--sizes 100 400] [--scenes 40] [--dir D]

Prints a table of pairs, seconds and pairs/s per job and size, the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COCO = ROOT.parent / "shared" / "data" / "coco-mini"
CURATE = [sys.executable, "-m", "cli"]


def _curate(*args: str) -> float:
    """Run one ``curate`` command; its wall seconds (a failure stops the benchmark with its output)."""
    t0 = time.perf_counter()
    p = subprocess.run([*CURATE, *args], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"curate {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def _rows(uri: str) -> int:
    import lance

    return lance.dataset(uri).count_rows()


def _scene_folder(out: Path, scenes: int) -> Path:
    """``scenes`` photos, each with two variants carrying sign text at other places (JPEG 95)."""
    from engines.pairs.render import render_pair

    photos = sorted((COCO / "images").glob("*.jpg"))
    out.mkdir(parents=True)
    for i in range(scenes):
        src = photos[i % len(photos)]
        rgb = np.asarray(Image.open(src).convert("RGB"))
        Image.fromarray(rgb).save(out / f"s{i:04d}_0.jpg", quality=95)
        for v in (1, 2):
            target = render_pair(rgb, "add", seed=i * 10 + v, lang="en").target
            Image.fromarray(target).save(out / f"s{i:04d}_{v}.jpg", quality=95)
    return out


def bench_make(work: Path, sizes: list[int]) -> list[tuple]:
    """render and synth at each size, on the ingested coco-mini photos."""
    ds = str(work / "coco.lance")
    ingest_s = _curate("ingest", str(COCO / "images"), "--dataset", ds)
    print(f"ingest of {_rows(ds)} coco-mini photos: {ingest_s:.1f} s (not counted below)", flush=True)
    out = []
    for n in sizes:
        for job, extra in (("render", []), ("synth", ["--annotations", str(COCO / "instances_train2017.json")])):
            table = str(work / f"{job}-{n}.lance")
            secs = _curate("pairs", job, "--dataset", ds, "--n", str(n), "--out", table, *extra)
            out.append((job, f"{_rows(ds)} photos", n, _rows(table), secs))
            print(f"{job} n={n}: {out[-1][3]} pairs in {secs:.1f} s", flush=True)
    return out


def bench_mine(work: Path, scenes: list[int]) -> list[tuple]:
    out = []
    for s in scenes:
        ds = str(work / f"scenes-{s}.lance")
        _curate("ingest", str(_scene_folder(work / f"scenes-{s}", s)), "--dataset", ds)
        prep = _curate("index", "build", "--dataset", ds, "--column", "vec_desc")
        prep += _curate("knn", "--dataset", ds, "--column", "vec_desc", "--k", "6")
        table = str(work / f"mined-{s}.lance")
        secs = _curate("pairs", "mine", "--dataset", ds, "--out", table)
        out.append(("mine", f"{_rows(ds)} rows ({s} scenes x 3)", _rows(ds), _rows(table), secs))
        print(f"mine over {_rows(ds)} rows: {out[-1][3]} pairs in {secs:.1f} s (descriptors+index+knn before: {prep:.1f} s)", flush=True)
    return out


def _table(results: list[tuple]) -> None:
    print("\n| job | data | asked / rows | pairs | wall s (whole command) | pairs/s | marginal pairs/s |")
    print("|---|---|---|---|---|---|---|")
    prev: dict[str, tuple] = {}
    for job, data, n, pairs, secs in results:
        marginal = ""
        if job in prev and pairs > prev[job][0] and secs > prev[job][1]:
            marginal = f"{(pairs - prev[job][0]) / (secs - prev[job][1]):.1f}"
        prev[job] = (pairs, secs)
        print(f"| {job} | {data} | {n} | {pairs} | {secs:.1f} | {pairs / secs:.2f} | {marginal} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[100, 400], help="pairs asked of render and synth")
    ap.add_argument("--scenes", type=int, default=40, help="scenes of the smaller mining corpus (the larger has twice as many)")
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-pairs-"))
    work.mkdir(parents=True, exist_ok=True)
    results = bench_make(work, args.sizes) + bench_mine(work, [args.scenes, 2 * args.scenes])
    _table(results)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, load average {load}; work dir {work}")


if __name__ == "__main__":
    main()
