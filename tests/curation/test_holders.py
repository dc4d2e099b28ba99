"""``Holders``: units loaded once on a few actors and kept there, methods called on all of them
from the driver with results in unit order (the resampling solve's 60 rounds read each fragment
once); a lost holder is a one-line error that says to re-run."""

from __future__ import annotations

import os
import signal

import numpy as np
import pyarrow as pa
import pytest

from curation.holders import HolderLost, Holders


class _Counter:
    """A loaded unit: a vector it adds to on each call, and where (process) it was loaded."""

    def __init__(self, x: int, scale: int):
        self.x, self.total, self.pid, self.calls = x, np.zeros(3), os.getpid(), 0

    def add(self, v: np.ndarray, own: float = 0.0) -> float:
        self.calls += 1
        self.total += v * self.x + own
        return float(self.total.sum())

    def where(self) -> tuple[int, int]:
        return self.pid, self.calls


class _Loader:
    def __init__(self, scale: int):
        self.scale, self.loaded = scale, 0

    def __call__(self, unit: pa.Table) -> _Counter:
        self.loaded += 1
        return _Counter(unit.column("x")[0].as_py() * self.scale, self.scale)


def test_units_are_loaded_once_kept_on_workers_and_answer_in_unit_order(ray_session):
    units = [{"x": i} for i in range(7)]
    with Holders(units, _Loader, {"scale": 10}, ray_options={"num_cpus": 1}, description="t", concurrency=2, show_progress=False) as h:
        v = np.ones(3)
        assert h.map("add", v) == [30.0 * i for i in range(7)]
        assert h.map("add", v, each=[float(i) for i in range(7)]) == [60.0 * i + 3 * i for i in range(7)]
        where = h.map("where")
        pids = {p for p, _ in where}
        assert len(pids) == 2 and os.getpid() not in pids  # two holders, neither the driver
        assert [c for _, c in where] == [2] * 7  # the same loaded object answered both calls
        assert [p for p, _ in where] == [where[k % 2][0] for k in range(7)]  # unit k on holder k % 2


def test_a_lost_holder_stops_the_job_with_a_one_line_error(ray_session):
    with Holders(
        [{"x": i} for i in range(4)], _Loader, {"scale": 1}, ray_options={"num_cpus": 1}, description="solve", show_progress=False
    ) as h:
        pid, _ = h.map("where")[0]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(HolderLost, match="solve: a worker keeping loaded rows stopped .*re-run the job"):
            h.map("add", np.ones(3))
