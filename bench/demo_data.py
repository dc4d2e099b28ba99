"""Benchmark `curate demo-data`: time to build and write the demo corpus, its size, peak RSS.

The target is "well under a minute on 2 cores"; the figure lives here, not in a timed test.
Run: .venv/bin/python bench/demo_data.py
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from democorpus.corpus import build_corpus, write_corpus  # noqa: E402


def main(repeats: int = 3) -> None:
    builds, writes = [], []
    for r in range(repeats):
        out = Path(tempfile.mkdtemp()) / "corpus"
        t0 = time.perf_counter()
        corpus = build_corpus(seed=r)
        t1 = time.perf_counter()
        summary = write_corpus(corpus, out)
        t2 = time.perf_counter()
        builds.append(t1 - t0)
        writes.append(t2 - t1)
        on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"seed {r}: {summary['images']} images, {on_disk / 1e6:.1f} MB on disk, build {t1 - t0:.2f} s, write {t2 - t1:.2f} s")
        shutil.rmtree(out.parent)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"median build {sorted(builds)[len(builds) // 2]:.2f} s, median write {sorted(writes)[len(writes) // 2]:.2f} s, "
        f"peak RSS {rss:.0f} MiB (one process, no Ray)"
    )


if __name__ == "__main__":
    main()
