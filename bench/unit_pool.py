"""What a phase of units costs beyond its work: ``execute_units`` (Ray tasks on Ray's warm worker
processes, each building the phase's worker once) against the two ways it ran before, side by side
in one run on one Ray: a pool of fresh actors a phase (still its way for GPU phases) and the Ray
Data actor pipeline before that.

Every job (ingest, each profiling stage, every dedup phase, index, knn, export) runs its units
through ``curation.runner.execute_units``; a dedup runs five or more phases. The units here do no
work (a worker that returns one row), so the figures are the fixed cost of a phase: starting the
actors or finding warm processes, handing out the units, collecting the rows, stopping the actors.

    python bench/unit_pool.py [--units 4 16 64] [--repeat 3] [--cpus 2]

Prints, per unit count, the median wall time of a phase each way (Ray started beforehand; its
start is printed apart).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402


class NoWork:
    """A unit worker that does nothing: the phase's cost is the machinery's."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"unit": batch.column("unit")})


def ray_data_phase(units: list[dict], n: int, on_result) -> None:
    """The previous ``execute_units``: one block a unit, an ActorPoolStrategy of ``n`` actors
    (quiet, as the jobs had it: no progress bars or per-dataset log lines)."""
    import logging

    import ray

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    ds = ray.data.from_items(units, override_num_blocks=len(units))
    out = ds.map_batches(
        NoWork, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n), max_task_retries=3, num_cpus=1
    )
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        for row in batch.to_pylist():
            on_result(row)


def actor_pool_phase(units: list[dict], n: int, on_result) -> None:
    """Session 25's ``execute_units``: ``n`` fresh actors a phase (GPU phases still run so)."""
    from curation.runner import _on_actors

    for row in _on_actors(units, NoWork, {}, {"num_cpus": 1}, n):
        on_result(row)


def tasks_phase(units: list[dict], n: int, on_result) -> None:
    from curation.runner import execute_units

    execute_units(
        units, NoWork, {}, ray_options={"num_cpus": 1}, on_result=on_result, description="bench", concurrency=n, show_progress=False
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    a = ap.parse_args()

    from curation.cluster import RayConfig, init_ray

    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=a.cpus, object_store_memory_mb=256))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Ray started in {time.perf_counter() - t0:.1f} s ({a.cpus} CPUs)")
    ways = {"Ray Data (s. 24)": ray_data_phase, "fresh actors (s. 25)": actor_pool_phase, "warm tasks (execute_units)": tasks_phase}
    for fn in ways.values():  # the first use of each way imports its modules
        fn([{"unit": 0}], 1, lambda r: None)
    print(f"{'units':>6} | " + " | ".join(f"{w:>28}" for w in ways))
    for n_units in a.units:
        units = [{"unit": i} for i in range(n_units)]
        cells = []
        for fn in ways.values():
            times = []
            for _ in range(a.repeat):
                got: list = []
                t = time.perf_counter()
                fn(units, min(a.cpus, n_units), got.append)
                times.append(time.perf_counter() - t)
                assert sorted(r["unit"] for r in got) == list(range(n_units)), "a unit was lost"
            cells.append(f"{statistics.median(times):>26.2f} s")
        print(f"{n_units:>6} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
