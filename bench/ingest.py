"""Ingest throughput and peak memory next to a plain PIL decode loop over the same files.

    .venv/bin/python bench/ingest.py [--copies 10]

Builds a folder of real photos (COCO-mini, each copied N times under new names so ids differ),
times a bare `PIL.Image.open(...).load()` loop over every file, then `ingest()` into a fresh Lance
dataset on the embedded Ray, in the same run. Peak RSS is sampled across this process and all its
children (Ray workers included) every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COCO = ROOT / ".." / "shared" / "data" / "coco-mini" / "images"


class PeakRSS:
    """Samples the summed RSS of this process tree (driver + Ray processes it started)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def _total(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self.base = self._total()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10)
    args = ap.parse_args()
    from curation.cluster import RayConfig, init_ray
    from curation.store import Store
    from pipelines.ingest import IngestConfig, ingest

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    src = work / "src"
    src.mkdir()
    photos = sorted(COCO.glob("*.jpg"))
    for k in range(args.copies):
        for p in photos:
            shutil.copy(p, src / f"{k:03d}_{p.name}")
            (src / f"{k:03d}_{p.stem}.txt").write_text(f"photo {p.stem} copy {k}")
    files = sorted(src.glob("*.jpg"))
    mb = sum(f.stat().st_size for f in files) / 1e6

    with PeakRSS() as m0:
        t0 = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                im.load()
        t_decode = time.perf_counter() - t0
    init_ray(RayConfig())  # embedded default: all CPUs
    with PeakRSS() as m1:
        t0 = time.perf_counter()
        res = ingest(Store(work / "bench.lance"), IngestConfig(source=[str(src)], shard_size=64), show_progress=False)
        t_ingest = time.perf_counter() - t0
    rows = res[0].stats.rows
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}"
    )
    print(f"files: {len(files)} JPEGs, {mb:.1f} MB")
    print(f"PIL decode loop (1 process): {len(files) / t_decode:8.1f} images/s   peak RSS {m0.peak / 2**20:7.0f} MiB")
    print(
        f"curate ingest (Ray, {os.cpu_count()} CPUs, incl. exact-dup stage and commit): "
        f"{rows / t_ingest:8.1f} images/s   peak RSS {m1.peak / 2**20:7.0f} MiB (process tree)"
    )
    print(f"ratio ingest / decode: {(rows / t_ingest) / (len(files) / t_decode):.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
