"""The rate on progress lines is the average over this run's work: two units that finish together
after 6 s read 0.3 units/s, not rich's burst estimate (the audit saw 211.6 units/s)."""

from __future__ import annotations

from rich.progress import Progress

from curation.runner import _RateColumn


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def rate(progress: Progress, task) -> str:
    return str(_RateColumn("units").render(progress.tasks[task]))


def test_units_finishing_together_read_as_their_average_rate():
    clock = Clock()
    progress = Progress(get_time=clock, disable=True)
    task = progress.add_task("job", total=2)
    assert rate(progress, task) == "- units/s"  # nothing done yet
    clock.t = 6.0
    progress.advance(task)
    clock.t = 6.001
    progress.advance(task)
    assert rate(progress, task) == "0.3 units/s"


def test_a_resumed_run_counts_only_what_it_did():
    clock = Clock()
    progress = Progress(get_time=clock, disable=True)
    task = progress.add_task("job", total=100, completed=90, resumed=90)
    clock.t = 5.0
    progress.advance(task, 5)
    assert rate(progress, task) == "1.0 units/s"  # 5 in 5 s, not 95 in 5 s
