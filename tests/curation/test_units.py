"""``execute_units``' two ways to run units: Ray tasks on warm worker processes (CPU phases) and
actors (GPU phases, whose processes must not outlive the phase): every unit once, the worker
built once per process and phase, a unit's error raised as the worker's own exception."""

from __future__ import annotations

import os
import uuid

import pyarrow as pa
import pytest

from curation.runner import _on_actors, _on_tasks, execute_units, process_cached


class UnitFailed(ValueError):
    pass


class _Square:
    """x -> x*x + offset, with the process and the worker instance that computed it."""

    def __init__(self, offset: int, fail_on: int | None = None):
        self.offset, self.fail_on, self.built = offset, fail_on, uuid.uuid4().hex

    def __call__(self, unit: pa.Table) -> pa.Table:
        x = unit.column("x")[0].as_py()
        if x == self.fail_on:
            raise UnitFailed(f"unit {x} failed")
        return pa.table({"x": [x], "y": [x * x + self.offset], "pid": [os.getpid()], "built": [self.built]})


@pytest.mark.parametrize("on", [_on_tasks, _on_actors], ids=["tasks", "actors"])
def test_every_unit_once_and_one_worker_per_process_and_phase(ray_session, on):
    units = [{"x": i} for i in range(12)]
    first = list(on(units, _Square, {"offset": 1}, {"num_cpus": 1}, 2))
    assert sorted((r["x"], r["y"]) for r in first) == [(i, i * i + 1) for i in range(12)]
    built = {(r["pid"], r["built"]) for r in first}
    assert len(built) == len({r["pid"] for r in first}) <= 2 + 1  # one worker a process (a retry may add one)
    second = list(on(units, _Square, {"offset": 2}, {"num_cpus": 1}, 2))  # the next phase builds its own worker
    assert sorted((r["x"], r["y"]) for r in second) == [(i, i * i + 2) for i in range(12)]
    assert not {r["built"] for r in second} & {r["built"] for r in first}


@pytest.mark.parametrize("on", [_on_tasks, _on_actors], ids=["tasks", "actors"])
def test_a_units_error_is_the_workers_exception_and_stops_the_phase(ray_session, on):
    got: list[dict] = []
    with pytest.raises(UnitFailed, match="unit 3 failed"):
        for row in on([{"x": i} for i in range(40)], _Square, {"offset": 0, "fail_on": 3}, {"num_cpus": 1}, 2):
            got.append(row)
    assert len(got) < 40 and 3 not in {r["x"] for r in got}


def test_execute_units_streams_each_units_rows_to_the_driver(ray_session):
    got: list[dict] = []
    execute_units(
        [{"x": i} for i in range(5)],
        _Square,
        {"offset": 0},
        ray_options={"num_cpus": 1},
        on_result=got.append,
        description="squares",
        show_progress=False,
    )
    assert sorted(r["y"] for r in got) == [0, 1, 4, 9, 16]


class _Shared:
    """Reports the process-kept value of ``key`` (a fresh token when it was built)."""

    def __init__(self, key: str):
        self.value = process_cached(key, lambda: uuid.uuid4().hex)

    def __call__(self, unit: pa.Table) -> pa.Table:
        return pa.table({"x": unit.column("x"), "pid": [os.getpid()], "value": [self.value]})


def test_a_process_cached_value_is_built_once_per_process_for_the_phases_after(ray_session):
    units = [{"x": i} for i in range(8)]
    first = list(_on_tasks(units, _Shared, {"key": "k1"}, {"num_cpus": 1}, 2))
    second = list(_on_tasks(units, _Shared, {"key": "k1"}, {"num_cpus": 1}, 2))
    by_pid = {r["pid"]: r["value"] for r in first}
    assert len(set(by_pid.values())) == len(by_pid)  # one value a process
    assert all(by_pid.get(r["pid"], r["value"]) == r["value"] for r in second)  # the next phase reuses it
    assert {r["pid"] for r in second} & set(by_pid)  # (on the same warm processes)
    other = list(_on_tasks(units, _Shared, {"key": "k2"}, {"num_cpus": 1}, 2))
    assert not {r["value"] for r in other} & set(by_pid.values())  # another key: built anew
    assert process_cached("k1", lambda: "a") == "a" and process_cached("k1", lambda: "b") == "b"  # the driver keeps nothing
