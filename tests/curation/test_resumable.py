"""``execute_resumable``: the resumable unit runner every ingest, export, pair and download job
uses. A re-run runs only the units an interrupted run left undone; a unit that yields no result
stops the job before anything could be committed without its rows."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest
from ray import cloudpickle

from curation.runner import Checkpoints, execute_resumable

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers below run on Ray actors


class _Square:
    """A unit's result: its number squared; unit ``skip`` yields no row at all."""

    def __init__(self, skip: int = -1):
        self.skip = skip

    def __call__(self, batch: pa.Table) -> pa.Table:
        units = [u for u in batch.column("unit").to_pylist() if u != self.skip]
        return pa.table({"unit": pa.array(units, pa.int64()), "square": pa.array([u * u for u in units], pa.int64())})


def _run(units, ckpt, skip=-1, seen=None):
    return execute_resumable(
        units,
        ckpt,
        _Square,
        {"skip": skip},
        record=lambda row: {"unit": row["unit"], "square": row["square"]},
        job="squares",
        ray_options={"num_cpus": 1},
        description="squares (units)",
        show_progress=False,
        on_record=None if seen is None else lambda rec: seen.append(rec["unit"]),
    )


def test_a_rerun_runs_only_the_units_left_and_a_unit_without_a_result_stops_the_job(ray_session, tmp_path, capsys):
    units = [{"unit": i} for i in range(5)]
    ckpt = Checkpoints(tmp_path / "ckpt", "unit")
    with pytest.raises(RuntimeError, match=r"squares: units \[3\] produced no result"):
        _run(units, ckpt, skip=3)
    assert sorted(ckpt.load()) == [0, 1, 2, 4]  # the others were checkpointed as they arrived

    ckpt.save({"unit": 99, "square": -1})  # a record of a unit this run does not have: ignored
    seen: list[int] = []
    done, resumed = _run(units, ckpt, seen=seen)
    assert resumed == 4 and "squares: resuming, 4 of 5 units already done" in capsys.readouterr().err
    assert {k: v["square"] for k, v in done.items()} == {i: i * i for i in range(5)}
    assert sorted(seen[:4]) == [0, 1, 2, 4] and seen[4:] == [3]  # the resumed records first, then the new one
