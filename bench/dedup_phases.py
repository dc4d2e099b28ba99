"""A small dry-run dedup timed phase by phase, with the units on warm Ray tasks (``execute_units``
now) and on fresh actors a phase (session 25's way, still the GPU phases'), side by side in one
run on one Ray.

The data: 24 coco-mini photos and a crop, a mirror and a quarter turn of 8 of them (56 rows in
files of 12), descriptors computed beforehand (not timed). Each way runs the same
``find_duplicates(dry_run=True)`` ``--repeat`` times on a clean state; the phases are the calls of
``execute_units``, timed around the call.

    python bench/dedup_phases.py [--repeat 2] [--cpus 2] [--coco ../shared/data/coco-mini]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _store(coco: Path, folder: Path):
    import lance

    from curation.runner import run_stage
    from curation.store import Store
    from engines.vector.synth import make_variant
    from pipelines.descriptors import VisualStage
    from tests.helpers import coco_rows, sample_row, samples_table

    rows = coco_rows(coco, limit=24)
    for g, r in enumerate(list(rows[:8])):
        for kind in ("crop", "mirror", "rotate"):
            rows.append(sample_row(make_variant(r["image"], kind, g), "edits", f"{g}-{kind}"))
    store = Store(str(folder / "edited.lance"))
    lance.write_dataset(samples_table(rows), store.uri, max_rows_per_file=12)
    run_stage(store, VisualStage(), show_progress=False)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--coco", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini")
    a = ap.parse_args()

    import curation.runner as runner
    from curation.cluster import RayConfig, init_ray
    from pipelines.dedup import DedupConfig, find_duplicates

    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=a.cpus, object_store_memory_mb=256))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Ray started in {time.perf_counter() - t0:.1f} s ({a.cpus} CPUs)")
    store = _store(a.coco, Path(tempfile.mkdtemp(prefix="dedup-phases-")))
    real_units, warm = runner.execute_units, runner._on_tasks
    phases: list[tuple[str, float]] = []

    def timed(units, *args, description, **kw):
        t = time.perf_counter()
        real_units(units, *args, description=description, **kw)
        phases.append((description, time.perf_counter() - t))

    runner.execute_units = timed
    for way, on in (("fresh actors (session 25)", runner._on_actors), ("warm tasks (execute_units)", warm)):
        runner._on_tasks = on
        for i in range(a.repeat):
            phases.clear()
            shutil.rmtree(store.state_dir / "vector", ignore_errors=True)
            t = time.perf_counter()
            plan = find_duplicates(store, DedupConfig(rows_per_unit=12, dry_run=True), show_progress=False)["plan"]
            total = time.perf_counter() - t
            grouped = sum(g is not None for g in plan.column("dup_group").to_pylist())
            print(f"{way}, run {i + 1}: {total:.1f} s ({grouped} of {plan.num_rows} rows grouped)")
            for desc, s in phases:
                print(f"    {s:6.2f} s  {desc}")
    runner._on_tasks = warm


if __name__ == "__main__":
    main()
