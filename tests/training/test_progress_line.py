"""The per-step console line of `curate train`: time taken and an ETA (audit #12)."""

from __future__ import annotations

from training.loop import duration, format_metrics, run_timing

RECORD = {
    "step": 20,
    "loss": 1.0176,
    "grad_norm": 0.243,
    "lr": 2.1e-05,
    "samples_per_s": 23.64,
    "tokens_per_s": 6304,
    "data_wait_fraction": 0.28,
}


def test_the_step_line_shows_elapsed_and_eta():
    # a run resumed at step 10 that took 50 s for its 10 steps: 5 s a step, 5 steps left of 25
    m = {**RECORD, **run_timing(50.0, steps_done=10, steps_left=5)}
    assert m["elapsed_s"] == 50.0 and m["eta_s"] == 25.0
    line = format_metrics(m, 25)
    assert line.startswith("step 20/25 loss 1.0176") and line.endswith(" elapsed 50s eta 25s")


def test_old_records_and_the_first_step_have_no_eta():
    assert format_metrics(RECORD, 25).endswith("wait 28%")  # a metrics.jsonl written before timings existed
    assert run_timing(3.0, steps_done=0, steps_left=5) == {"elapsed_s": 3.0, "eta_s": None}
    assert format_metrics({**RECORD, "elapsed_s": 3.0, "eta_s": None}, 25).endswith(" elapsed 3s")


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600, 7620)] == ["0s", "59s", "1m01s", "59m59s", "1h00m", "2h07m"]
